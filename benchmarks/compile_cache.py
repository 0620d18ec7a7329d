"""First-picture time of a fresh process in the fast mode with torch.compile: cold and warm compile cache.

Usage:
    python benchmarks/compile_cache.py [--model FOLDER] [--threads 2]

Runs three fresh Python processes one after the other, each loading the
text-to-image model (the built-in one by default), switching it to the fast
mode and making one picture with the folder's defaults:

1. ``sfumato.optimize(pipe, compile=False)``: no compilation (the baseline);
2. ``sfumato.optimize(pipe, compile=True)`` with an empty inductor cache
   (``TORCHINDUCTOR_CACHE_DIR`` set to a new temporary folder): cold;
3. the same again with the cache the second run left: warm.

and prints, for each, the seconds from process start to the first picture,
split into start-up (imports and loading) and the picture itself. The fast
mode compiles only where it pays (AMX), but the cache works the same on every
CPU, so this measures what a second process saves on any machine.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

CHILD = r"""
import json, sys, time
started = time.perf_counter()
import torch
import sfumato
from sfumato.demo import builtin_model, generation_defaults
folder, compile_, threads = sys.argv[1] or str(builtin_model("decoder")), sys.argv[2] == "1", int(sys.argv[3])
torch.set_num_threads(threads)
pipe = sfumato.AutoPipelineForText2Image.from_pretrained(folder)
pipe.set_progress_bar_config(disable=True)
sfumato.optimize(pipe, compile=compile_)
loaded = time.perf_counter()
pipe("a red circle on a blue background", generator=torch.Generator().manual_seed(1), **generation_defaults(folder))
done = time.perf_counter()
print(json.dumps({"startup": loaded - started, "picture": done - loaded, "total": done - started}))
"""


def run(model: str, compile_: bool, threads: int, cache: str) -> dict:
    env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=cache)
    result = subprocess.run([sys.executable, "-c", CHILD, model, "1" if compile_ else "0", str(threads)],
                            env=env, capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="", help="text-to-image folder (default: the built-in model)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    from sfumato import fast

    print(f"CPU: {fast.cpu_model()}, capability {fast.cpu_capability()}, {args.threads} threads; "
          f"model: {args.model or 'built-in'}")
    with tempfile.TemporaryDirectory() as cache:
        rows = [("fast mode, no compile", run(args.model, False, args.threads, cache)),
                ("fast mode + compile, cold cache", run(args.model, True, args.threads, cache)),
                ("fast mode + compile, warm cache", run(args.model, True, args.threads, cache))]
    print(f"{'process':36} {'start-up s':>10} {'picture s':>10} {'total s':>8}")
    for label, times in rows:
        print(f"{label:36} {times['startup']:10.2f} {times['picture']:10.2f} {times['total']:8.2f}")


if __name__ == "__main__":
    main()
