"""Quality table of the built-in demo model, scored by the rule-based evaluator.

Usage:
    python benchmarks/demo_quality.py                  # the evaluator on the data itself
    python benchmarks/demo_quality.py --model FOLDER   # a trained text-to-image model

Without ``--model`` it scores the held-out procedural pictures themselves,
clean and degraded (noise, blur, JPEG, all three), which shows how far the
evaluator can be trusted. With ``--model`` it generates one picture for each
held-out caption, with that sample's seed as the generation seed, and prints
the evaluator's table: the numbers the issue's quality bar is about.
"""

from __future__ import annotations

import argparse
import io
import time

import numpy as np
from PIL import Image, ImageFilter

from sfumato.demo.data import iterate_samples
from sfumato.demo.evaluate import evaluate, format_table


def _noisy(image: Image.Image, sigma: float, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    pixels = np.asarray(image, dtype=np.float64) + rng.normal(0.0, sigma, (image.height, image.width, 3))
    return Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8))


def _jpeg(image: Image.Image, quality: int) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    buffer.seek(0)
    return Image.open(buffer).convert("RGB")


DEGRADATIONS = {
    "clean": lambda image, seed: image,
    "noise (sigma 12)": lambda image, seed: _noisy(image, 12.0, seed),
    "blur (sigma 1)": lambda image, seed: image.filter(ImageFilter.GaussianBlur(1.0)),
    "JPEG (quality 50)": lambda image, seed: _jpeg(image, 50),
    "blur 1.5 + noise 15 + JPEG 40": lambda image, seed: _jpeg(
        _noisy(image.filter(ImageFilter.GaussianBlur(1.5)), 15.0, seed), 40
    ),
    "heavy blur (sigma 4)": lambda image, seed: image.filter(ImageFilter.GaussianBlur(4.0)),
}


def score_the_data(count: int) -> None:
    """Print the evaluator's table on the held-out pictures under each degradation."""
    samples = list(iterate_samples(0, count, split="eval"))
    captions = [sample.caption for sample in samples]
    for name, degrade in DEGRADATIONS.items():
        started = time.perf_counter()
        report = evaluate([degrade(sample.image, sample.seed) for sample in samples], captions)
        print(f"\n{name} ({count} held-out samples, {time.perf_counter() - started:.1f} s)")
        print(format_table(report))


def score_a_model(model: str, count: int, steps: int | None, size: int) -> None:
    """Generate a picture per held-out caption and print the evaluator's table."""
    import torch

    from sfumato import AutoPipelineForText2Image

    pipe = AutoPipelineForText2Image.from_pretrained(model)
    pipe.set_progress_bar_config(disable=True)
    samples = list(iterate_samples(0, count, split="eval"))
    options = {} if steps is None else {"num_inference_steps": steps}
    images = []
    started = time.perf_counter()
    for sample in samples:
        generator = torch.Generator().manual_seed(sample.seed)
        images.append(pipe(sample.caption, height=size, width=size, generator=generator, **options).images[0])
    report = evaluate(images, [sample.caption for sample in samples])
    print(f"{model}: {count} held-out prompts, {time.perf_counter() - started:.1f} s")
    print(format_table(report, by_value=True))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="text-to-image checkpoint folder; without it, score the data itself")
    parser.add_argument("--count", type=int, default=300, help="held-out prompts (default 300)")
    parser.add_argument("--steps", type=int, default=None, help="denoising steps (default: the model's)")
    parser.add_argument("--size", type=int, default=64, help="picture side in pixels (default 64)")
    args = parser.parse_args()
    if args.model is None:
        score_the_data(args.count)
    else:
        score_a_model(args.model, args.count, args.steps, args.size)


if __name__ == "__main__":
    main()
