"""Quality table of the built-in demo model, scored by the rule-based evaluator.

Usage:
    python benchmarks/demo_quality.py                  # the evaluator on the data itself
    python benchmarks/demo_quality.py --model          # the built-in model (sfumato.demo.builtin_model())
    python benchmarks/demo_quality.py --model FOLDER   # a trained text-to-image model

Without ``--model`` it scores the held-out procedural pictures themselves,
clean and degraded (noise, blur, JPEG, all three), which shows how far the
evaluator can be trusted. With ``--model`` it loads the folder with
``AutoPipelineForText2Image`` (prior and decoder), generates one picture for
each of the first ``--count`` held-out captions, with that sample's seed as
the generation seed and the folder's ``sfumato_defaults.json`` settings
(steps, guidance, 64 x 64) unless overridden, and prints the evaluator's
table: the numbers the built-in model's quality bar is about (background
colour >= 90%, shape colour >= 80%, shape class >= 60%).
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


def generate_held_out(pipe, count: int, settings: dict, batch: int = 8) -> tuple[list, list[str]]:
    """One picture per held-out caption (eval split, first ``count`` sample seeds), seeded by the sample seed.

    Pictures are made ``batch`` prompts at a time with one generator per
    prompt, so each picture depends only on its own seed.
    """
    import torch

    samples = list(iterate_samples(0, count, split="eval"))
    images = []
    for start in range(0, len(samples), batch):
        part = samples[start:start + batch]
        generators = [torch.Generator().manual_seed(sample.seed) for sample in part]
        images += pipe([sample.caption for sample in part], generator=generators, **settings).images
    return images, [sample.caption for sample in samples]


def score_a_model(model: str | None, count: int, overrides: dict, grid: str | None) -> None:
    """Generate a picture per held-out caption with the text-to-image pipeline and print the evaluator's table."""
    from sfumato import AutoPipelineForText2Image
    from sfumato.demo import builtin_model, generation_defaults

    folder = model or builtin_model("decoder")
    started = time.perf_counter()
    pipe = AutoPipelineForText2Image.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    loaded = time.perf_counter() - started
    settings = {**generation_defaults(folder), **{k: v for k, v in overrides.items() if v is not None}}
    started = time.perf_counter()
    images, captions = generate_held_out(pipe, count, settings)
    report = evaluate(images, captions)
    seconds = time.perf_counter() - started
    print(f"{folder}: {count} held-out prompts, loaded in {loaded:.1f} s, generated in {seconds:.1f} s "
          f"({seconds / count:.2f} s per picture)")
    print("settings: " + ", ".join(f"{k}={v}" for k, v in sorted(settings.items())))
    print(format_table(report, by_value=True))
    if grid:
        from sfumato.utils import make_image_grid

        shown = images[:64]
        columns = 8
        rows = (len(shown) + columns - 1) // columns
        shown += [Image.new("RGB", shown[0].size, "grey")] * (rows * columns - len(shown))
        make_image_grid(shown, rows=rows, cols=columns).save(grid)
        print(f"wrote the first {min(64, count)} pictures to {grid}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", nargs="?", const="builtin",
                        help="text-to-image checkpoint folder, or no value for the built-in model; "
                        "without --model, score the data itself")
    parser.add_argument("--count", type=int, default=None, help="held-out prompts (default 300 for the data, 200 for a model)")
    parser.add_argument("--steps", type=int, default=None, help="denoising steps (default: the model's)")
    parser.add_argument("--guidance", type=float, default=None, help="decoder guidance scale (default: the model's)")
    parser.add_argument("--prior-steps", type=int, default=None, help="prior steps (default: the model's)")
    parser.add_argument("--prior-guidance", type=float, default=None, help="prior guidance scale (default: the model's)")
    parser.add_argument("--size", type=int, default=None, help="picture side in pixels (default: the model's)")
    parser.add_argument("--grid", default=None, help="also save the first 64 pictures as one PNG grid here")
    args = parser.parse_args()
    if args.model is None:
        score_the_data(args.count or 300)
    else:
        overrides = {"num_inference_steps": args.steps, "guidance_scale": args.guidance,
                     "prior_num_inference_steps": args.prior_steps, "prior_guidance_scale": args.prior_guidance,
                     "height": args.size, "width": args.size}
        score_a_model(None if args.model == "builtin" else args.model, args.count or 200, overrides, args.grid)


if __name__ == "__main__":
    main()
