"""The whole default 512 px Kandinsky 2.2 text-to-image, one fresh process each: sfumato's fast mode against the
reference's fp32 default, side by side in one run.

`fast_cpu.py` times the parts (UNet step, MoVQ decode, prior step) and estimates the whole picture from them;
this script runs the whole thing, start-up included, as users run it: a fresh Python process that loads the
full-size prior and decoder from their folders, encodes the prompt, runs 25 prior steps and 100 decoder steps (the
released pipelines' defaults; ``--preset fast``: 10 and 20), decodes and writes the PNG, timed from before the
process starts to after it exits. Weights are random (the configurations are the released ones), written once in
fp32 in the reference's folder layout, as the hub's default files are (about 19.5 GB):

    .venv/bin/python benchmarks/txt2img_cpu.py make /path/to/k22-random
    .venv/bin/python benchmarks/txt2img_cpu.py compare /path/to/k22-random [--runs sfumato-fast-preset,...]

Runs (``--runs``, in this order by default):

* ``sfumato-fast-preset``: ``sfumato generate --fast --preset fast`` (DPM-Solver++ 2M Karras, 20 decoder and
  10 prior steps);
* ``sfumato-fast``: ``sfumato generate --fast`` with the default sampler and steps;
* ``reference-fp32``: diffusers' KandinskyV22PriorPipeline and KandinskyV22Pipeline in fp32, as the guides load
  them, called with their defaults, the picture saved with PIL;
* ``sfumato-parity`` (not by default: it takes as long as the reference): ``sfumato generate`` without ``--fast``.

The targets compare each sfumato run with ``reference-fp32`` (fast mode at most 1/12 of it, the fast preset at
most 1/40). Every run is a subprocess with ``OMP_NUM_THREADS`` set to ``--threads``, killed past ``--limit`` GiB of
anonymous memory (weights that stay in fp32 are mapped from their files, which the kernel can drop; the peak
resident memory with them is reported too) and the kernel's first choice should memory run out. Loading
depends on what the page cache holds, so before each run (untimed) ``--cache warm`` (the default) reads every
checkpoint file, as on a machine where the model was just used (19.5 GB do not all fit next to a run's own
memory in 24 GB: what does not fit is read again), and ``--cache cold`` drops the page cache (root only), as
after a reboot. sfumato computes the prior's negative image embedding (the image encoder's embedding of an
all-zero picture) and the fast mode's converted weights once per machine and keeps them
(``sfumato.checkpoint.derived``; ``--cache warm`` reads them too, last); ``--kept empty`` gives each sfumato run an
empty folder for them, as for the first picture on a new machine.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from kandinsky3_memory import _random_tensor, _shapes, _write_safetensors, run_watched  # noqa: E402
from kandinsky22_speed import MOVQ_CONFIG, PRIOR_CONFIG, UNET_CONFIG  # noqa: E402

PROMPT = "a red circle on a blue background"
# kandinsky-community/kandinsky-2-2-prior's CLIP text and image encoders
TEXT_CONFIG = {"hidden_size": 1280, "intermediate_size": 5120, "num_attention_heads": 20, "num_hidden_layers": 32,
               "projection_dim": 1280, "vocab_size": 49408, "max_position_embeddings": 77, "hidden_act": "gelu",
               "layer_norm_eps": 1e-5, "bos_token_id": 0, "eos_token_id": 2, "pad_token_id": 1}
VISION_CONFIG = {"hidden_size": 1664, "intermediate_size": 8192, "num_attention_heads": 16, "num_hidden_layers": 48,
                 "patch_size": 14, "image_size": 224, "projection_dim": 1280, "hidden_act": "gelu",
                 "layer_norm_eps": 1e-5}
RUNS = ("sfumato-fast-preset", "sfumato-fast", "reference-fp32", "sfumato-parity")
DEFAULT_RUNS = RUNS[:3]

REFERENCE = r"""
import sys
import torch
from diffusers import KandinskyV22Pipeline, KandinskyV22PriorPipeline
from diffusers.utils import logging
logging.disable_progress_bar()
prior_folder, decoder_folder, prompt, out = sys.argv[1:5]
prior = KandinskyV22PriorPipeline.from_pretrained(prior_folder, torch_dtype=torch.float32)
decoder = KandinskyV22Pipeline.from_pretrained(decoder_folder, torch_dtype=torch.float32)
generator = torch.Generator().manual_seed(1)
embeds = prior(prompt, generator=generator)
image = decoder(image_embeds=embeds.image_embeds, negative_image_embeds=embeds.negative_image_embeds,
                generator=generator).images[0]
image.save(out)
"""


# --------------------------------------------------------------------------- the checkpoint


def _write_model(folder: Path, model, filename: str, make) -> float:
    folder.mkdir(parents=True, exist_ok=True)
    return _write_safetensors(folder / filename, _shapes(model), make, "F32") / 1e9


def make_checkpoint(folder: Path) -> None:
    """prior/ and decoder/ with random fp32 weights, laid out as the reference saves them. The small files
    (schedulers, tokenizer, image processor, model indexes) come from the built-in model's folders, with the
    released sizes where they matter (77 tokens, 224 px CLIP pictures)."""
    import diffusers
    import torch
    from transformers import (CLIPTextConfig, CLIPTextModelWithProjection, CLIPTokenizer, CLIPVisionConfig,
                              CLIPVisionModelWithProjection)

    from sfumato.demo import builtin_model

    make = _random_tensor(torch.Generator().manual_seed(0))
    for stage in ("prior", "decoder"):
        source, target = builtin_model(stage), folder / stage
        target.mkdir(parents=True, exist_ok=True)
        shutil.copy(source / "model_index.json", target / "model_index.json")
        shutil.copytree(source / "scheduler", target / "scheduler", dirs_exist_ok=True)
    prior = folder / "prior"
    tokenizer = CLIPTokenizer.from_pretrained(builtin_model("prior") / "tokenizer")
    tokenizer.model_max_length = 77  # the prior's positional table holds 77 text tokens
    tokenizer.save_pretrained(prior / "tokenizer")
    processor = json.loads((builtin_model("prior") / "image_processor" / "preprocessor_config.json").read_text())
    processor.update(crop_size={"height": 224, "width": 224}, size={"shortest_edge": 224})
    (prior / "image_processor").mkdir(exist_ok=True)
    (prior / "image_processor" / "preprocessor_config.json").write_text(json.dumps(processor, indent=2) + "\n")

    with torch.device("meta"):
        models = {
            "prior/prior": diffusers.PriorTransformer(**PRIOR_CONFIG),
            "decoder/unet": diffusers.UNet2DConditionModel(**UNET_CONFIG),
            "decoder/movq": diffusers.VQModel(**MOVQ_CONFIG),
        }
    for name, model in models.items():
        model.save_config(folder / name)
        size = _write_model(folder / name, model, "diffusion_pytorch_model.safetensors", make)
        print(f"{name}: {size:.2f} GB", flush=True)
    for name, config_class, model_class, config in (
            ("text_encoder", CLIPTextConfig, CLIPTextModelWithProjection, TEXT_CONFIG),
            ("image_encoder", CLIPVisionConfig, CLIPVisionModelWithProjection, VISION_CONFIG)):
        model_config = config_class(**config)
        model_config.architectures = [model_class.__name__]
        with torch.device("meta"):
            model = model_class(model_config)
        model_config.save_pretrained(prior / name)
        size = _write_model(prior / name, model, "model.safetensors", make)
        print(f"prior/{name}: {size:.2f} GB", flush=True)


# --------------------------------------------------------------------------- the runs


def command(run: str, folder: Path, out: Path) -> list[str]:
    prior, decoder = str(folder / "prior"), str(folder / "decoder")
    if run == "reference-fp32":
        return [sys.executable, "-c", REFERENCE, prior, decoder, PROMPT, str(out)]
    sfumato = str(Path(sys.executable).with_name("sfumato"))
    flags = {"sfumato-fast-preset": ["--fast", "--preset", "fast"], "sfumato-fast": ["--fast"],
             "sfumato-parity": []}[run]
    return [sfumato, "generate", PROMPT, "--model", decoder, "--prior", prior, "--seed", "1", "--quiet",
            "-o", str(out), *flags]


def timed_run(argv: list[str], env: dict, limit: float, timeout: float) -> dict:
    started = time.perf_counter()
    returncode, output, samples = run_watched(argv, env, limit, timeout, key="RssAnon")
    row = {"seconds": round(time.perf_counter() - started, 1), "peak_rss_gib": round(samples.get("peak_rss", 0.0), 2),
           "peak_anon_gib": round(samples.get("peak_anon", 0.0), 2), "returncode": returncode}
    if "killed" in samples:
        row["killed"] = samples["killed"]
    elif returncode != 0:
        row["error"] = output.strip().splitlines()[-1][:300] if output.strip() else "failed"
    return row


def prepare_cache(folder: Path, cache: str) -> str:
    """Put the page cache in the same state before every run: ``warm`` reads every file of the checkpoint (as
    on a machine where the model was just used: as much of it as fits stays cached), ``cold`` drops the cache
    (root only), as after a reboot."""
    started = time.perf_counter()
    if cache == "cold":
        os.sync()
        try:
            Path("/proc/sys/vm/drop_caches").write_text("3\n")
        except OSError as error:
            raise SystemExit(f"--cache cold: cannot drop the page cache ({error}); run as root or use --cache warm")
        return "page cache dropped"
    from sfumato.checkpoint.derived import cache_folder

    size = 0
    kept = cache_folder()  # what sfumato keeps per machine (the fast mode's converted weights), read last
    for path in [*sorted(folder.rglob("*")), *(sorted(kept.rglob("*")) if kept is not None and kept.is_dir() else [])]:
        if path.is_file():
            with open(path, "rb") as handle:
                while chunk := handle.read(1 << 26):
                    size += len(chunk)
    return (f"read {size / 1e9:.1f} GB of checkpoint files and kept values in {time.perf_counter() - started:.0f} s "
            f"(untimed)")


def compare(folder: Path, runs: list[str], threads: int, limit: float, timeout: float, out: Path,
            cache: str, kept: str = "as-is") -> None:
    import torch

    from sfumato import fast

    capability, flags = fast.cpu_capability(), fast.cpu_flags()
    print(f"CPU: {fast.cpu_model()} | PyTorch capability {capability} | {threads} threads | torch "
          f"{torch.__version__} | fast plan: {fast.plan_for_this_cpu().describe()}", flush=True)
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    out.mkdir(parents=True, exist_ok=True)
    rows = {}
    for run in runs:
        print(f"{run}: {prepare_cache(folder, cache)}", flush=True)
        run_env = env
        with tempfile.TemporaryDirectory(prefix="sfumato-kept-") as empty:
            if kept == "empty" and run.startswith("sfumato"):
                run_env = dict(env, SFUMATO_CACHE_DIR=empty)  # the first picture on a machine: nothing kept yet
            rows[run] = timed_run(command(run, folder, out / f"{run}.png"), run_env, limit, timeout)
        print(json.dumps({"run": run, "kept": kept if run.startswith("sfumato") else "-", **rows[run]}), flush=True)
    reference = rows.get("reference-fp32")
    print()
    print("| run | whole process | peak RSS (anonymous) | / reference fp32 default |")
    print("| --- | --- | --- | --- |")
    for run, row in rows.items():
        failed = row.get("killed") or row.get("error")
        ratio = (f"{row['seconds'] / reference['seconds']:.3f}" if reference and not failed
                 and not (reference.get("killed") or reference.get("error")) else "-")
        state = f" ({failed})" if failed else ""
        print(f"| {run} | {row['seconds']:.1f} s{state} | {row['peak_rss_gib']:.2f} GiB "
              f"({row['peak_anon_gib']:.2f} GiB) | {ratio} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="action", required=True)
    make = sub.add_parser("make", help="write the full-size random-weight prior/ and decoder/ (~19.5 GB)")
    make.add_argument("folder", type=Path)
    run = sub.add_parser("compare", help="time the whole text-to-image, each run a fresh process")
    run.add_argument("folder", type=Path)
    run.add_argument("--runs", default=",".join(DEFAULT_RUNS), help=f"comma-separated, of {', '.join(RUNS)}")
    run.add_argument("--threads", type=int, default=2)
    run.add_argument("--limit", type=float, default=20.0, help="GiB of anonymous memory past which a run is killed")
    run.add_argument("--timeout", type=float, default=3600.0, help="seconds per run")
    run.add_argument("--out", type=Path, default=Path("/tmp/txt2img_cpu"), help="folder for the pictures")
    run.add_argument("--cache", choices=("warm", "cold"), default="warm",
                     help="before each run, read the checkpoint's files (warm) or drop the page cache (cold, root)")
    run.add_argument("--kept", choices=("as-is", "empty"), default="as-is",
                     help="values sfumato keeps per machine (sfumato.checkpoint.derived: the prior's zero-picture "
                          "embedding): as they are (a machine where sfumato ran before) or an empty folder for each "
                          "sfumato run (the first picture on a new machine)")
    args = parser.parse_args()
    if args.action == "make":
        make_checkpoint(args.folder)
        return
    runs = args.runs.split(",")
    unknown = sorted(set(runs) - set(RUNS))
    if unknown:
        parser.error(f"--runs: unknown {', '.join(unknown)}; choose from {', '.join(RUNS)}")
    compare(args.folder, runs, args.threads, args.limit, args.timeout, args.out, args.cache, args.kept)


if __name__ == "__main__":
    main()
