"""Whole-process time of one built-in-model picture: `sfumato generate` against the reference, side by side.

Usage:
    python benchmarks/startup.py [--runs 5] [--threads 2]

Each run is a fresh Python process, timed from before it starts to after it
exits, that makes the README's first picture (the built-in model's defaults:
25 prior steps, 25 decoder steps, 64x64, seed 1) and writes it as a PNG:

- ``sfumato generate``: the command line as a user runs it (it loads with
  ``fast_start=True``: CLIP parts by sfumato.models.clip, transformers never
  imported);
- the same command with fast_start's CLIP parts switched off (transformers'
  CLIP classes, as before fast_start existed): what fast_start saves;
- the reference: diffusers' KandinskyV22PriorPipeline and KandinskyV22Pipeline
  loaded from the same folders, called with the same settings, the picture
  saved with PIL;
- ``python -c "import torch"``: what any of them pays before its own work.

The four runs of one round go one after the other, rounds repeat ``--runs``
times; the median of each is printed with its ratio to the reference, and
whether sfumato's two pictures are equal. Imports dominate here (the models
are tiny), so the figures say how fast the CPU and disk start Python, torch
and transformers; compare them only within one run.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROMPT = "a red circle on a blue background"

WITHOUT_FAST_START = r"""
import sys
import sfumato.pipelines.base as base
base._fast_start_component = lambda *args, **kwargs: None  # transformers' classes, as before fast_start
from sfumato.cli import main
sys.exit(main(sys.argv[1:]))
"""

REFERENCE = r"""
import sys, json
import torch
from diffusers import KandinskyV22Pipeline, KandinskyV22PriorPipeline
from diffusers.utils import logging
logging.disable_progress_bar()
prior_folder, decoder_folder, prompt, out = sys.argv[1:5]
defaults = json.load(open(f"{decoder_folder}/sfumato_defaults.json"))
prior = KandinskyV22PriorPipeline.from_pretrained(prior_folder, torch_dtype=torch.float32)
decoder = KandinskyV22Pipeline.from_pretrained(decoder_folder, torch_dtype=torch.float32)
for pipe in (prior, decoder):
    pipe.set_progress_bar_config(disable=True)
generator = torch.Generator().manual_seed(1)
embeds = prior(prompt, num_inference_steps=defaults["prior_num_inference_steps"],
               guidance_scale=defaults["prior_guidance_scale"], generator=generator)
image = decoder(image_embeds=embeds.image_embeds, negative_image_embeds=embeds.negative_image_embeds,
                num_inference_steps=defaults["num_inference_steps"], guidance_scale=defaults["guidance_scale"],
                height=defaults["height"], width=defaults["width"], generator=generator).images[0]
image.save(out)
"""


def timed(command: list[str], env: dict) -> float:
    started = time.perf_counter()
    subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    from sfumato.demo import builtin_model

    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    sfumato = str(Path(sys.executable).with_name("sfumato"))
    out = Path(tempfile.mkdtemp())
    generate = ["generate", PROMPT, "--seed", "1", "--quiet"]
    commands = {
        "sfumato generate": [sfumato, *generate, "-o", str(out / "fast.png")],
        "sfumato generate, transformers' CLIP": [sys.executable, "-c", WITHOUT_FAST_START, *generate,
                                                 "-o", str(out / "usual.png")],
        "reference (diffusers)": [sys.executable, "-c", REFERENCE, str(builtin_model("prior")),
                                  str(builtin_model("decoder")), PROMPT, str(out / "reference.png")],
        "python -c 'import torch' (the floor)": [sys.executable, "-c", "import torch"],
    }
    timed(commands["sfumato generate"], env)  # one untimed run: the files are in the page cache for all three
    times: dict[str, list[float]] = {name: [] for name in commands}
    for _ in range(args.runs):
        for name, command in commands.items():
            times[name].append(timed(command, env))

    import numpy as np
    from PIL import Image

    def pixels(name: str) -> np.ndarray:
        return np.asarray(Image.open(out / name), dtype=np.int16)

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else "?"
    print(f"CPU: {cpu}, {os.cpu_count()} logical CPUs; Python {platform.python_version()}; "
          f"{args.runs} runs each, {args.threads} threads")
    reference = statistics.median(times["reference (diffusers)"])
    for name, values in times.items():
        median = statistics.median(values)
        print(f"{name:40s} median {median:5.2f} s  (min {min(values):5.2f}, max {max(values):5.2f})  "
              f"x{median / reference:.2f} of the reference")
    same = np.array_equal(pixels("fast.png"), pixels("usual.png"))
    print(f"sfumato's two pictures equal: {same}; largest difference from the reference's: "
          f"{int(np.abs(pixels('fast.png') - pixels('reference.png')).max())}/255")


if __name__ == "__main__":
    main()
