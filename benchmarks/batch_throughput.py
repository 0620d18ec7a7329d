"""Throughput of ``sfumato batch`` on the built-in model: one process, 2 worker processes, 2 Ray workers.

Usage:
    python benchmarks/batch_throughput.py                       # 200 pictures, the model's 25 + 25 steps
    python benchmarks/batch_throughput.py --pictures 40 --steps 10 --modes local1 ray2

Each mode runs ``sfumato batch`` as a fresh command on the same job file
(``--pictures`` text-to-image jobs, seeds 0, 1, ...) into its own folder, and
the table gives, per mode: the wall time of the whole command (start-up, model
loading and, for Ray, starting a local Ray instance included), pictures per
minute over that, pictures per minute after the command's start-up (its own
summary: for Ray once the actors are up, for local processes from their start,
their model loading included), the mean seconds a worker spent on one picture
(from the manifest), and the time around each picture (a worker's share of the wall
time per picture less that: transport, writing, waiting). The Ray overhead
per picture compares 2 Ray workers with 2 local worker processes, in wall
time per picture and in time around each picture. The pictures of every
mode are checked to be identical. On a machine shared with other work the
numbers say more about the neighbours than about sfumato.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

MODES = {"local1": ["--workers", "1"], "local2": ["--workers", "2"], "ray2": ["--ray", "auto", "--workers", "2"]}
COLOURS = ("red", "green", "blue", "yellow", "white", "black")
SHAPES = ("circle", "square", "triangle")


def _jobs(path: Path, count: int, steps: int | None) -> None:
    with open(path, "w", encoding="utf-8") as stream:
        for i in range(count):
            colour, shape = COLOURS[i % 6], SHAPES[(i // 6) % 3]
            background = COLOURS[(i + 3) % 6]
            job = {"prompt": f"a {colour} {shape} on a {background} background", "seed": i}
            if steps:
                job.update(steps=steps, prior_steps=steps)
            stream.write(json.dumps(job) + "\n")


def _run(mode: str, jobs: Path, out: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "SFUMATO_BUILTIN_MODEL"}
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "sfumato", "batch", str(jobs), "--out", str(out), *MODES[mode]],
                          env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{mode} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    summary = re.search(r"made (\d+) in ([\d.]+) s \(([\d.]+) per minute", done.stderr)
    rows = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    made = int(summary.group(1)) if summary else len(rows)
    return {"mode": mode, "pictures": made, "wall": wall, "per_minute": 60 * made / wall,
            "running": float(summary.group(2)) if summary else wall,
            "steady_per_minute": float(summary.group(3)) if summary else float("nan"),
            "picture_seconds": float(np.mean([row["seconds"] for row in rows])),
            "workers": len({row["worker"] for row in rows})}


def _same(folders: list[Path]) -> bool:
    names = sorted(p.name for p in folders[0].glob("*.png"))
    for folder in folders[1:]:
        if sorted(p.name for p in folder.glob("*.png")) != names:
            return False
        for name in names:
            if not np.array_equal(np.asarray(Image.open(folders[0] / name)), np.asarray(Image.open(folder / name))):
                return False
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pictures", type=int, default=200)
    parser.add_argument("--steps", type=int, help="decoder and prior steps (default: the model's, 25 each)")
    parser.add_argument("--modes", nargs="+", choices=list(MODES), default=list(MODES))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="sfumato-batch-bench-") as folder:
        root = Path(folder)
        _jobs(root / "jobs.jsonl", args.pictures, args.steps)
        results = []
        for mode in args.modes:
            results.append(_run(mode, root / "jobs.jsonl", root / mode))
            print(f"{mode}: {results[-1]['wall']:.1f} s", file=sys.stderr, flush=True)
        identical = _same([root / mode for mode in args.modes])
    print(f"\n{args.pictures} pictures of the built-in model (64x64, steps {args.steps or 'model default'}), "
          f"{os.cpu_count()} CPUs, 1 torch thread per worker\n")
    print("| mode | workers | wall s | pictures/min (wall) | pictures/min (workers up) | s/picture in a worker "
          "| s/picture around it |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in results:
        # a worker's share of the wall time per picture, less the time it spent making the picture:
        # sending the job, the picture's way back, writing it, waiting
        r["around"] = r["workers"] * 60 / r["steady_per_minute"] - r["picture_seconds"]
        print(f"| {r['mode']} | {r['workers']} | {r['wall']:.1f} | {r['per_minute']:.1f} | "
              f"{r['steady_per_minute']:.1f} | {r['picture_seconds']:.3f} | {r['around']:.3f} |")
    by_mode = {r["mode"]: r for r in results}
    if "ray2" in by_mode and "local2" in by_mode:
        ray, local = by_mode["ray2"], by_mode["local2"]
        total = (ray["wall"] - local["wall"]) / args.pictures
        print(f"\nRay overhead per picture vs 2 local processes: {total:+.3f} s of wall time per picture in all "
              f"(start-up included), {ray['around'] - local['around']:+.3f} s around each picture once running")
    print(f"pictures identical across modes: {identical}")


if __name__ == "__main__":
    main()
