"""Judge pictures of the demo data set without a learned model.

The built-in model's quality is measured by reading back, from each generated
picture, the three things its caption asked for, with rules simple enough to
trust:

- background colour: the palette colour most border pixels are nearest to;
- shape colour: the palette colour most of the remaining clearly-coloured
  pixels are nearest to;
- shape class: the shape's silhouette (how far each pixel lies from the
  background towards the shape colour, around the largest connected piece)
  is compared with an ideal circle, square and triangle of the same area and
  centre, each blurred as much as fits best; the best overlap (soft
  intersection over union) wins.

- shape present: a solid core (pixels at least half-way from the background
  to the shape colour) and a presence-weighted area of at least
  :data:`MIN_PRESENT_AREA` of the picture; a faint or tiny dot is "no shape",
  and then neither its colour nor its class counts as right;
- shape size: present, and its area (presence-weighted, so blur keeps it)
  within the range the data generator draws for the shape read
  (:func:`sfumato.demo.data.area_range`), give or take :data:`SIZE_TOLERANCE`.

Each rule looks at many pixels at once, so blur, noise and compression from a
small generative model do not change the answer. :func:`evaluate` scores a
batch against captions and :func:`format_table` prints the result;
:func:`format_pair_table` breaks it down per (shape colour, background) pair.

:func:`held_out_prompts` names prompts whose generation seeds the training
never used, :func:`evaluate_model` generates and scores them with a
text-to-image model (the built-in one by default), and
``python -m sfumato.demo.evaluate`` prints both tables from the command line.

:func:`inpainting_tasks` and :func:`evaluate_inpainting` measure inpainting
the same way: held-out pictures, masks of the two kinds people draw (the
shape's box, with a prompt for a new shape on the picture's background; a
random rectangle, with the picture's own caption), and how much of the kept
region the model changes with no pixel composite
(``python -m sfumato.demo.evaluate --inpaint``).
"""

from __future__ import annotations

import functools
import sys
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
from PIL import Image

from .data import (COLOURS, EVAL_EVERY, PALETTE, SHAPES, area_range, make_caption, parse_caption, shape_coverage,
                   split_of)

#: What is scored: the three things a caption names, then whether a shape is
#: there at all and whether it is there at a trained size.
ATTRIBUTES: tuple[str, ...] = ("background", "colour", "shape", "present", "size")
# Where each named attribute sits in a parsed caption (colour, shape, background).
_POSITION = {"colour": 0, "shape": 1, "background": 2}
_LABELS = {"background": "background colour", "colour": "shape colour", "shape": "shape class",
           "present": "shape present", "size": "shape size in range"}
_SHORT = {"background": "backgr", "colour": "colour", "shape": "class", "present": "present", "size": "size",
          "all": "all"}

_PALETTE_RGB = np.array([PALETTE[name] for name in COLOURS], dtype=np.float64)
# A pixel this close to a palette colour is taken as that colour when voting
# for the shape colour; farther pixels are blends along an edge, whose nearest
# colour can be a third one (grey between black and white is as near red).
_CONFIDENT_DISTANCE = 100.0
# Gaussian blur (in pixels of a 64-pixel image) tried on the ideal shapes: a
# small model draws soft edges, and a sharp template would favour the circle
# for any blurred shape.
_BLUR_LEVELS = (0.0, 1.0, 2.0, 3.0, 4.0)
# Fewer foreground pixels than this fraction of the image means "no shape".
_MIN_FOREGROUND_FRACTION = 0.002
#: A shape whose presence-weighted area is below this fraction of the picture
#: is "not there": a faint or tiny dot. The smallest shape the data draws
#: covers 0.045 (a triangle of side 0.3), so this is a quarter of that.
MIN_PRESENT_AREA = 0.01
#: Relative slack on the trained area range: a shape counts as the right size
#: when its area lies in ``[low * (1 - t), high * (1 + t)]``. Model pictures
#: have soft edges; 0.2 of the area is about 10% of the side.
SIZE_TOLERANCE = 0.2
#: First generation seed of the held-out prompts. Training draws its pictures
#: from the first sample seeds of the train split (under 14 000) and its noise
#: from generators seeded ``seed * 1_000_003 + stage * 10_007 + step`` (under
#: 60 000 for seed 0); seeds from here on, in steps of ``EVAL_EVERY``, are in
#: the eval split and in neither range.
HELD_OUT_SEED_START = 100_000


@dataclass(frozen=True)
class Prediction:
    """What the evaluator read from one picture.

    ``colour`` and ``shape`` are ``None`` when no shape was found
    (``present`` false). ``shape_scores`` holds each shape's overlap (soft
    IoU, 0 to 1) with the silhouette; the gap between the best two says how
    sure the call is. ``area`` is the shape's presence-weighted area as a
    fraction of the picture (also for a shape too faint to count), ``fill``
    the fraction of its solid core's bounding box it fills (circle ~0.79,
    square ~1, triangle ~0.5).
    """

    background: str
    colour: str | None
    shape: str | None
    shape_scores: dict[str, float] = field(default_factory=dict)
    present: bool = False
    area: float = 0.0
    fill: float = 0.0

    @property
    def size_ok(self) -> bool:
        """Whether a shape is there at a size the data draws for its class (see :func:`in_trained_size_range`)."""
        return self.present and in_trained_size_range(self.area, self.shape)


def in_trained_size_range(area: float, shape: str | None = None) -> bool:
    """Whether ``area`` (fraction of the picture) is within the data's range for ``shape``, with tolerance."""
    low, high = area_range(shape)
    return low * (1 - SIZE_TOLERANCE) <= area <= high * (1 + SIZE_TOLERANCE)


@dataclass(frozen=True)
class EvaluationReport:
    """Scores of a batch: for each attribute, how many pictures got it right.

    ``expected`` holds the ``(colour, shape, background)`` of each caption,
    ``predictions`` what was read from each picture, in the same order.
    """

    expected: list[tuple[str, str, str]]
    predictions: list[Prediction]

    @property
    def total(self) -> int:
        return len(self.predictions)

    def matches(self, attribute: str) -> list[bool]:
        """Whether each picture got ``attribute`` (one of :data:`ATTRIBUTES`) right."""
        if attribute not in ATTRIBUTES:
            raise ValueError(f"attribute must be one of {', '.join(ATTRIBUTES)}; got {attribute!r}")
        if attribute == "present":
            return [prediction.present for prediction in self.predictions]
        if attribute == "size":
            return [prediction.size_ok for prediction in self.predictions]
        position = _POSITION[attribute]
        return [
            getattr(prediction, attribute) == wanted[position]
            for prediction, wanted in zip(self.predictions, self.expected)
        ]

    @property
    def correct(self) -> dict[str, int]:
        """Right answers per attribute, plus ``"all"`` for pictures right on all of them."""
        rows = {attribute: self.matches(attribute) for attribute in ATTRIBUTES}
        counts = {attribute: sum(hits) for attribute, hits in rows.items()}
        counts["all"] = sum(all(hits) for hits in zip(*rows.values()))
        return counts

    @property
    def accuracy(self) -> dict[str, float]:
        """Fraction right per attribute (and ``"all"``); 0.0 for an empty batch."""
        return {name: (count / self.total if self.total else 0.0) for name, count in self.correct.items()}

    def accuracy_by_value(self, attribute: str) -> dict[str, tuple[int, int]]:
        """``{asked value: (right, asked)}`` for one attribute, e.g. per shape.

        ``present`` and ``size`` are grouped by the asked shape colour.
        """
        hits = self.matches(attribute)
        position = _POSITION.get(attribute, 0)
        table: dict[str, tuple[int, int]] = {}
        for wanted, hit in zip(self.expected, hits):
            right, asked = table.get(wanted[position], (0, 0))
            table[wanted[position]] = (right + int(hit), asked + 1)
        order = SHAPES if attribute == "shape" else COLOURS
        return {value: table[value] for value in order if value in table}

    def accuracy_by_pair(self) -> dict[tuple[str, str], dict[str, tuple[int, int]]]:
        """``{(shape colour, background): {attribute or "all": (right, asked)}}`` over the asked pairs."""
        rows = {attribute: self.matches(attribute) for attribute in ATTRIBUTES}
        rows["all"] = [all(hits) for hits in zip(*rows.values())] if self.predictions else []
        table: dict[tuple[str, str], dict[str, tuple[int, int]]] = {}
        for index, (colour, _, background) in enumerate(self.expected):
            counts = table.setdefault((colour, background), {name: (0, 0) for name in rows})
            for name, hits in rows.items():
                right, asked = counts[name]
                counts[name] = (right + int(hits[index]), asked + 1)
        order = [(colour, background) for colour in COLOURS for background in COLOURS if colour != background]
        return {pair: table[pair] for pair in order if pair in table}


def predict(image: Any) -> Prediction:
    """Read background colour, shape colour and shape class from one picture.

    ``image`` is a PIL image, an ``H x W x 3`` (or 4) array of ``uint8``
    values or of floats in [0, 1], or a ``3 x H x W`` tensor in [0, 1].
    """
    pixels = _to_pixels(image)
    height, width, _ = pixels.shape
    distances = np.linalg.norm(pixels[:, :, None, :] - _PALETTE_RGB[None, None], axis=-1)
    nearest = distances.argmin(axis=-1)

    band = max(1, round(min(height, width) / 32))
    border = np.ones((height, width), dtype=bool)
    border[band:-band, band:-band] = False
    background_index = int(np.bincount(nearest[border], minlength=len(COLOURS)).argmax())
    background = COLOURS[background_index]

    candidates = nearest != background_index
    if candidates.sum() < _MIN_FOREGROUND_FRACTION * height * width:
        return Prediction(background=background, colour=None, shape=None)
    confident = candidates & (distances.min(axis=-1) < _CONFIDENT_DISTANCE)
    voters = nearest[confident] if confident.any() else nearest[candidates]
    colour_index = int(np.bincount(voters, minlength=len(COLOURS)).argmax())
    colour = COLOURS[colour_index]

    # Presence: how far each pixel lies from the background colour towards
    # the shape colour, 0 to 1. Blur moves presence around but keeps its
    # total and its centre, so the shape's area and position read from it are
    # the same however blurred the picture is.
    backdrop, foreground = _PALETTE_RGB[background_index], _PALETTE_RGB[colour_index]
    direction = foreground - backdrop
    presence = np.clip(((pixels - backdrop) @ direction) / (direction @ direction), 0.0, 1.0)
    # Keep only the main shape and its blurred rim; specks and stray blobs
    # elsewhere would pull the area and centre off.
    core = _largest_component(presence >= 0.5)
    main = _dilate(core, max(2, round(min(height, width) / 16)))
    area = float((presence * main).sum()) / (height * width)
    fill = 0.0
    if core.any():
        rows, cols = np.nonzero(core)
        fill = float(core.sum() / ((rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)))
    if not core.any() or area < MIN_PRESENT_AREA:
        # a faint or tiny dot: no shape to read a colour or class from
        return Prediction(background=background, colour=None, shape=None, present=False, area=area, fill=fill)
    scores = _shape_scores(presence * main)
    shape = max(scores, key=scores.get) if scores else None
    return Prediction(background=background, colour=colour, shape=shape, shape_scores=scores, present=True,
                      area=area, fill=fill)


def psnr(a: Any, b: Any) -> float:
    """Peak signal-to-noise ratio of two 8-bit pictures (PIL images or uint8 arrays), in dB; inf if equal."""
    error = float(np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2))
    return float("inf") if error == 0 else 10 * float(np.log10(255.0 ** 2 / error))


def evaluate(images: Sequence[Any], captions: Sequence[str]) -> EvaluationReport:
    """Score pictures against the captions they were made from.

    ``images`` is a sequence of pictures (anything :func:`predict` takes) or
    one ``N x H x W x 3`` array; ``captions`` holds one caption per picture in
    the form ``a <colour> <shape> on a <colour> background``.
    """
    if isinstance(captions, str):
        raise ValueError("captions must be a list of caption strings, one per image, got a single string")
    if isinstance(images, np.ndarray) and images.ndim != 4:
        raise ValueError(f"images as one array must be N x H x W x 3, got shape {images.shape}")
    images, captions = list(images), list(captions)
    if len(images) != len(captions):
        raise ValueError(
            f"images and captions must have the same length, got {len(images)} images and {len(captions)} captions"
        )
    expected = [parse_caption(caption) for caption in captions]
    return EvaluationReport(expected=expected, predictions=[predict(image) for image in images])


def format_table(report: EvaluationReport, by_value: bool = False) -> str:
    """A plain-text table of the report's accuracy per attribute.

    With ``by_value`` it also lists accuracy per asked value (each shape,
    each colour), which shows what a model gets wrong.
    """
    if not isinstance(report, EvaluationReport):
        raise ValueError(f"report must be an EvaluationReport from evaluate(), got {type(report).__name__}")
    rows = [(_LABELS.get(name, "all criteria"), report.correct[name], report.total) for name in (*ATTRIBUTES, "all")]
    if by_value:
        for attribute in ATTRIBUTES:
            for value, (right, asked) in report.accuracy_by_value(attribute).items():
                rows.append((f"{_LABELS[attribute]}: {value}", right, asked))
    name_width = max(len("attribute"), *(len(row[0]) for row in rows))
    lines = [f"{'attribute':<{name_width}}  {'right':>5}  {'total':>5}  {'accuracy':>8}"]
    lines.append("-" * len(lines[0]))
    for name, right, total in rows:
        accuracy = f"{100 * right / total:.1f}%" if total else "-"
        lines.append(f"{name:<{name_width}}  {right:>5}  {total:>5}  {accuracy:>8}")
    return "\n".join(lines)


def format_pair_table(report: EvaluationReport) -> str:
    """Accuracy per (shape colour, background) pair and criterion, with an overall line at the end.

    Each cell is a percentage of the pair's pictures; the last column is
    pictures right on every criterion. The ``worst pair`` line names the
    lowest pair on that column.
    """
    if not isinstance(report, EvaluationReport):
        raise ValueError(f"report must be an EvaluationReport from evaluate(), got {type(report).__name__}")
    columns = (*ATTRIBUTES, "all")
    header = f"{'colour on background':<20}  {'n':>4}  " + "  ".join(f"{_SHORT[name]:>7}" for name in columns)
    lines = [header, "-" * len(header)]

    def cells(counts: dict[str, tuple[int, int]]) -> str:
        return "  ".join(f"{100 * right / asked:>6.1f}%" if asked else f"{'-':>7}"
                         for right, asked in (counts[name] for name in columns))

    pairs = report.accuracy_by_pair()
    for (colour, background), counts in pairs.items():
        lines.append(f"{colour + ' on ' + background:<20}  {counts['all'][1]:>4}  {cells(counts)}")
    lines.append("-" * len(header))
    overall = {name: (report.correct[name], report.total) for name in columns}
    lines.append(f"{'overall':<20}  {report.total:>4}  {cells(overall)}")
    if pairs:
        worst = min(pairs, key=lambda pair: pairs[pair]["all"][0] / pairs[pair]["all"][1])
        right, asked = pairs[worst]["all"]
        lines.append(f"worst pair: {worst[0]} on {worst[1]} ({right}/{asked} right on all criteria)")
    return "\n".join(lines)


def held_out_prompts(count: int = 270, start_seed: int = HELD_OUT_SEED_START) -> list[tuple[str, int]]:
    """``count`` ``(caption, generation seed)`` pairs the training never used, every colour pair evenly.

    Every 30 consecutive prompts name each (shape colour, background) pair
    once, and every 90 name each of the 90 captions once, so any count of 30
    or more covers every pair and 270 gives each caption three seeds. Seeds
    are ``start_seed + 10 * k``; ``start_seed`` must be an eval-split seed
    (a multiple of ``EVAL_EVERY``), by default past the training's ranges
    (:data:`HELD_OUT_SEED_START`).
    """
    if isinstance(count, bool) or not isinstance(count, (int, np.integer)) or count < 0:
        raise ValueError(f"count must be a non-negative int, got {count!r}")
    if isinstance(start_seed, bool) or not isinstance(start_seed, (int, np.integer)) or start_seed < 0 \
            or split_of(start_seed) != "eval":
        raise ValueError(f"start_seed must be a non-negative multiple of {EVAL_EVERY} (an eval-split seed), "
                         f"got {start_seed!r}")
    pairs = [(colour, background) for colour in COLOURS for background in COLOURS if colour != background]
    prompts = []
    for index in range(int(count)):
        within = index % (len(pairs) * len(SHAPES))
        pair = within % len(pairs)
        shape = SHAPES[(within // len(pairs) + pair) % len(SHAPES)]
        colour, background = pairs[pair]
        prompts.append((make_caption(colour, shape, background), int(start_seed) + EVAL_EVERY * index))
    return prompts


def generate(pipe: Any, prompts: Sequence[tuple[str, int]], settings: dict[str, Any] | None = None,
             batch: int = 10) -> list[Any]:
    """One picture per ``(caption, seed)`` with a text-to-image pipeline, each from its own generator.

    Pictures are made ``batch`` at a time; each depends only on its caption
    and seed (the same as ``sfumato generate CAPTION --seed SEED``).
    """
    import torch

    settings = dict(settings or {})
    images: list[Any] = []
    for start in range(0, len(prompts), batch):
        part = prompts[start:start + batch]
        generators = [torch.Generator().manual_seed(seed) for _, seed in part]
        images += pipe([caption for caption, _ in part], generator=generators, **settings).images
    return images


def evaluate_model(model: Any = None, count: int = 270, start_seed: int = HELD_OUT_SEED_START,
                   **overrides: Any) -> tuple[EvaluationReport, list[Any], dict[str, Any]]:
    """Generate and score :func:`held_out_prompts` with a text-to-image model.

    ``model`` is a folder (the built-in decoder by default) or a loaded
    pipeline. Settings are the folder's ``sfumato_defaults.json`` with
    ``overrides`` (e.g. ``prior_guidance_scale=8.0``; ``None`` values are
    ignored) on top. Returns the report, the pictures and the settings used.
    """
    prompts = held_out_prompts(count, start_seed)  # checked before any model loads
    pipe, settings = _pipeline_and_settings(model, "AutoPipelineForText2Image", "decoder", overrides)
    images = generate(pipe, prompts, settings)
    return evaluate(images, [caption for caption, _ in prompts]), images, settings


# --------------------------------------------------------------------------- inpainting


#: Margin, in pixels, of the "repaint the shape" masks around the shape's bounding box.
INPAINT_BOX_MARGIN = 4


@dataclass(frozen=True)
class InpaintTask:
    """One held-out inpainting: a picture, a mask (1 = repaint) and the prompt for the result."""

    prompt: str
    seed: int
    picture: Image.Image
    mask: np.ndarray  # float32 H x W, 1 = repaint
    kind: str  # "box": the picture's shape with a margin, a new shape asked; "rectangle": a random 16-32 px one


def inpainting_tasks(count: int = 24, start_seed: int = HELD_OUT_SEED_START) -> list[InpaintTask]:
    """``count`` inpaintings the training never saw, alternating the two kinds of mask people draw.

    The picture is the held-out sample of each :func:`held_out_prompts` seed.
    Even tasks replace its shape: the mask is the shape's bounding box with a
    :data:`INPAINT_BOX_MARGIN` margin, the prompt the held-out prompt's shape
    colour and class on the picture's own background (a prompt that names
    another background asks to change the kept region). Odd tasks repaint a
    random rectangle, which may cut through the shape or miss it, with the
    picture's own caption: a new shape there would make a picture of two
    shapes, which the data set never has.
    """
    from .data import make_sample

    tasks = []
    for index, (caption, seed) in enumerate(held_out_prompts(count, start_seed)):
        sample = make_sample(seed)
        height, width = sample.mask.shape
        mask = np.zeros((height, width), np.float32)
        if index % 2 == 0:
            rows, columns = np.nonzero(sample.mask)
            m = INPAINT_BOX_MARGIN
            mask[max(rows.min() - m, 0): rows.max() + 1 + m, max(columns.min() - m, 0): columns.max() + 1 + m] = 1
            colour, shape, _ = parse_caption(caption)
            if colour == sample.background:
                others = [c for c in COLOURS if c != sample.background]
                colour = others[index % len(others)]
            prompt, kind = make_caption(colour, shape, sample.background), "box"
        else:
            rng = np.random.default_rng(seed)
            h, w = (int(v) for v in rng.integers(16, 33, 2))
            top, left = int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1))
            mask[top: top + h, left: left + w] = 1
            prompt, kind = sample.caption, "rectangle"
        tasks.append(InpaintTask(prompt, seed, sample.image, mask, kind))
    return tasks


@dataclass
class InpaintReport:
    """How much inpainting changed what it was asked to keep: mean absolute change (0-255) of the kept pixels."""

    kinds: list[str]
    kept_change: list[float]  # per picture, over its kept pixels, averaged over the colour channels
    near_change: list[float]  # per picture, kept pixels within 8 pixels of the mask

    @property
    def mean(self) -> float:
        return float(np.mean(self.kept_change))

    def by_kind(self) -> dict[str, float]:
        return {kind: float(np.mean([c for k, c in zip(self.kinds, self.kept_change) if k == kind]))
                for kind in dict.fromkeys(self.kinds)}

    def format(self) -> str:
        parts = ", ".join(f"{kind} masks {value:.2f}" for kind, value in self.by_kind().items())
        return (f"kept region, mean change over {len(self.kinds)} inpaintings: {self.mean:.2f}/255 ({parts}; "
                f"within 8 px of the mask {np.mean(self.near_change):.2f}); worst picture {max(self.kept_change):.2f}")


def kept_region_change(result: Any, task: InpaintTask) -> tuple[float, float]:
    """Mean absolute change of ``task``'s kept pixels in ``result``, overall and within 8 px of the mask."""
    change = np.abs(_to_pixels(result) - _to_pixels(task.picture)).mean(axis=-1)
    kept = task.mask < 0.5
    near = kept & _dilate(task.mask >= 0.5, 8)
    return float(change[kept].mean()), float(change[near].mean()) if near.any() else 0.0


def evaluate_inpainting(model: Any = None, count: int = 24, start_seed: int = HELD_OUT_SEED_START,
                        **overrides: Any) -> tuple[InpaintReport, list[Any]]:
    """Inpaint :func:`inpainting_tasks` with an inpainting pipeline (the built-in one by default) and measure
    the kept region, with no pixel composite: what the model itself keeps. Settings are the folder's
    ``sfumato_defaults.json`` with ``overrides`` on top. Returns the report and the pictures."""
    import torch

    tasks = inpainting_tasks(count, start_seed)
    pipe, settings = _pipeline_and_settings(model, "AutoPipelineForInpainting", "inpaint", overrides)
    images, kept, near = [], [], []
    for task in tasks:
        image = pipe(task.prompt, image=task.picture, mask_image=task.mask,
                     generator=torch.Generator().manual_seed(task.seed), **settings).images[0]
        overall, close = kept_region_change(image, task)
        images.append(image)
        kept.append(overall)
        near.append(close)
    return InpaintReport([task.kind for task in tasks], kept, near), images


def _pipeline_and_settings(model: Any, auto_class: str, builtin: str, overrides: dict[str, Any]):
    """``model`` loaded with ``auto_class`` when it is a folder (the built-in ``builtin`` folder when None), with
    the folder's ``sfumato_defaults.json`` under ``overrides`` (``None`` values ignored); a loaded pipeline as is."""
    from . import builtin_model, generation_defaults

    if model is None or isinstance(model, (str, bytes)) or hasattr(model, "__fspath__"):
        from .. import auto

        folder = model if model is not None else builtin_model(builtin)
        pipe = getattr(auto, auto_class).from_pretrained(folder)
        pipe.set_progress_bar_config(disable=True)
        settings = generation_defaults(folder)
    else:
        pipe, settings = model, {}
    return pipe, {**settings, **{key: value for key, value in overrides.items() if value is not None}}


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m sfumato.demo.evaluate``: score a text-to-image model (or the data) on held-out prompts."""
    import argparse
    import time

    parser = argparse.ArgumentParser(
        prog="python -m sfumato.demo.evaluate",
        description="Score the built-in model (or --model FOLDER) on held-out prompts with the rule-based "
                    "evaluator; print accuracy per criterion and per (shape colour, background) pair.")
    parser.add_argument("--model", default=None, help="text-to-image folder (default: the built-in model)")
    parser.add_argument("--data", action="store_true",
                        help="score the data generator's own held-out pictures instead of a model (a sanity check)")
    parser.add_argument("--count", type=int, default=None, help="held-out prompts (default 270: 3 per caption; "
                        "24 with --inpaint)")
    parser.add_argument("--start-seed", type=int, default=HELD_OUT_SEED_START,
                        help=f"first generation seed, a multiple of {EVAL_EVERY} (default {HELD_OUT_SEED_START})")
    parser.add_argument("--steps", type=int, default=None, help="decoder steps (default: the model's)")
    parser.add_argument("--guidance", type=float, default=None, help="decoder guidance scale (default: the model's)")
    parser.add_argument("--prior-steps", type=int, default=None, help="prior steps (default: the model's)")
    parser.add_argument("--prior-guidance", type=float, default=None, help="prior guidance scale (default: the model's)")
    parser.add_argument("--inpaint", action="store_true",
                        help="measure inpainting instead: how much the inpainting folder (--model, default the "
                             "built-in one) changes the kept region of --count held-out inpaintings (default 24)")
    parser.add_argument("--grid", default=None, help="also save the first 90 pictures (one per caption) as a PNG grid")
    parser.add_argument("--json", default=None, help="also write the scores and each picture's reading as JSON")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for torch")
    args = parser.parse_args(argv)
    if args.count is None:
        args.count = 24 if args.inpaint else 270
    if args.count < 1:
        parser.error(f"--count must be at least 1, got {args.count}")
    started = time.perf_counter()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if args.inpaint:
        try:
            inpainted, images = evaluate_inpainting(args.model, args.count, args.start_seed,
                                                   num_inference_steps=args.steps, guidance_scale=args.guidance,
                                                   prior_num_inference_steps=args.prior_steps,
                                                   prior_guidance_scale=args.prior_guidance)
        except ValueError as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
        print(f"{args.model or 'the built-in inpainting model'}, no pixel composite, "
              f"{time.perf_counter() - started:.1f} s")
        print(inpainted.format())
        if args.grid:
            _save_grid(images[:90], args.grid)
            print(f"wrote the first {min(90, len(images))} pictures to {args.grid}")
        return 0
    try:
        if args.data:
            from .data import make_sample

            prompts = held_out_prompts(args.count, args.start_seed)
            images = []
            for caption, seed in prompts:
                colour, shape, background = parse_caption(caption)
                images.append(make_sample(seed, shape=shape, colour=colour, background=background).image)
            report, settings, source = evaluate(images, [c for c, _ in prompts]), {}, "the data generator"
        else:
            report, images, settings = evaluate_model(
                args.model, args.count, args.start_seed, num_inference_steps=args.steps, guidance_scale=args.guidance,
                prior_num_inference_steps=args.prior_steps, prior_guidance_scale=args.prior_guidance)
            source = args.model or "the built-in model"
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    seconds = time.perf_counter() - started
    print(f"{source}: {report.total} held-out prompts (seeds {args.start_seed}, {args.start_seed + EVAL_EVERY}, ...), "
          f"{seconds:.1f} s")
    if settings:
        print("settings: " + ", ".join(f"{key}={value}" for key, value in sorted(settings.items())))
    low, high = area_range()
    print(f"trained shape area: {low:.3f} to {high:.3f} of the picture (size check allows {SIZE_TOLERANCE:.0%} "
          f"either side of each shape's own range); under {MIN_PRESENT_AREA} counts as no shape")
    print()
    print(format_table(report, by_value=True))
    print()
    print(format_pair_table(report))
    if args.grid:
        _save_grid(images[:90], args.grid)
        print(f"wrote the first {min(90, len(images))} pictures to {args.grid}")
    if args.json:
        import json

        entries = [
            {"caption": caption, "seed": seed, "background": p.background, "colour": p.colour, "shape": p.shape,
             "present": p.present, "area": round(p.area, 4), "fill": round(p.fill, 3), "size_ok": p.size_ok}
            for (caption, seed), p in zip(held_out_prompts(args.count, args.start_seed), report.predictions)
        ]
        summary = {"settings": settings, "accuracy": report.accuracy,
                   "pairs": {f"{c} on {b}": {k: v[0] / v[1] for k, v in counts.items()}
                             for (c, b), counts in report.accuracy_by_pair().items()},
                   "pictures": entries}
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(summary, handle, indent=1)
    return 0


def _save_grid(images: Sequence[Any], path: str, columns: int = 10) -> None:
    pictures = [Image.fromarray(_to_pixels(image).astype(np.uint8)) for image in images]
    side = pictures[0].size
    rows = (len(pictures) + columns - 1) // columns
    grid = Image.new("RGB", (columns * side[0], rows * side[1]), "grey")
    for index, picture in enumerate(pictures):
        grid.paste(picture, ((index % columns) * side[0], (index // columns) * side[1]))
    grid.save(path)


def _to_pixels(image: Any) -> np.ndarray:
    """Any accepted picture as a float ``H x W x 3`` array on the 0..255 scale."""
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"), dtype=np.float64)
    if hasattr(image, "detach") and hasattr(image, "cpu"):  # a torch tensor, without importing torch
        array = image.detach().cpu().float().numpy()
        if array.ndim == 3 and array.shape[0] in (3, 4) and array.shape[-1] not in (3, 4):
            array = array.transpose(1, 2, 0)
    elif isinstance(image, np.ndarray):
        array = image
    else:
        raise ValueError(
            f"image must be a PIL image, an H x W x 3 array or a 3 x H x W tensor, got {type(image).__name__}"
        )
    if array.ndim != 3 or array.shape[-1] not in (3, 4) or min(array.shape[:2]) < 8:
        raise ValueError(f"image must be H x W x 3 (or 4) with H, W >= 8, got shape {tuple(array.shape)}")
    array = array[:, :, :3]
    if array.dtype == np.uint8:
        return array.astype(np.float64)
    if not np.issubdtype(array.dtype, np.floating):
        raise ValueError(f"image must hold uint8 values or floats in [0, 1], got dtype {array.dtype}")
    if not np.isfinite(array).all():
        raise ValueError("image as floats must lie in [0, 1], got NaN or infinite values")
    if array.min() < -0.01 or array.max() > 1.01:  # small overshoot is rounding, not a scale mistake
        raise ValueError(f"image as floats must lie in [0, 1], got values from {array.min():.3g} to {array.max():.3g}")
    return np.clip(array.astype(np.float64), 0.0, 1.0) * 255.0


def _largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 4-connected piece of ``mask``: drops specks and stray blobs."""
    if not mask.any():
        return mask
    height, width = mask.shape
    # Label propagation: every pixel takes the largest label among itself and
    # its neighbours until nothing changes; each piece ends with one label.
    labels = np.where(mask, np.arange(1, height * width + 1).reshape(height, width), 0)
    while True:
        spread = labels.copy()
        np.maximum(spread[1:], labels[:-1], out=spread[1:])
        np.maximum(spread[:-1], labels[1:], out=spread[:-1])
        np.maximum(spread[:, 1:], labels[:, :-1], out=spread[:, 1:])
        np.maximum(spread[:, :-1], labels[:, 1:], out=spread[:, :-1])
        spread *= mask
        if np.array_equal(spread, labels):
            break
        labels = spread
    counts = np.bincount(labels.ravel())
    counts[0] = 0
    return labels == counts.argmax()


def _dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    """``mask`` grown by ``radius`` pixels (4-connected steps)."""
    for _ in range(radius):
        padded = np.pad(mask, 1)
        mask = mask | padded[:-2, 1:-1] | padded[2:, 1:-1] | padded[1:-1, :-2] | padded[1:-1, 2:]
    return mask


def _shape_scores(presence: np.ndarray) -> dict[str, float]:
    """How well an ideal shape of each class, of the same area and centre, fits.

    The score is the soft intersection over union ``sum(min) / sum(max)``
    between ``presence`` and the ideal shape blurred by the amount (from
    :data:`_BLUR_LEVELS`) that fits best, so a blurred square is compared
    with a blurred square rather than with a sharp circle.
    """
    area = float(presence.sum())
    if area <= 0:
        return {}
    height, width = presence.shape
    centre_x = float(presence.sum(axis=0) @ (np.arange(width) + 0.5)) / area
    centre_y = float(presence.sum(axis=1) @ (np.arange(height) + 0.5)) / area
    sizes = {
        "circle": 2 * np.sqrt(area / np.pi),
        "square": np.sqrt(area),
        "triangle": np.sqrt(2 * area),
    }
    scale = min(height, width) / 64
    scores = {}
    for shape, size in sizes.items():
        # An upright triangle's centroid lies size / 6 below its box centre.
        box_centre_y = centre_y - size / 6 if shape == "triangle" else centre_y
        ideal = shape_coverage(shape, (centre_x, box_centre_y), size, (width, height), supersample=2)
        best = 0.0
        for sigma in _BLUR_LEVELS:
            blurred = _blur_matrix(height, sigma * scale) @ ideal @ _blur_matrix(width, sigma * scale).T
            best = max(best, float(np.minimum(presence, blurred).sum() / np.maximum(presence, blurred).sum()))
        scores[shape] = best
    return scores


@functools.lru_cache(maxsize=64)
def _blur_matrix(length: int, sigma: float) -> np.ndarray:
    """``length x length`` matrix that Gaussian-blurs a vector (zero outside)."""
    if sigma <= 0:
        return np.eye(length)
    offsets = np.arange(length)[:, None] - np.arange(length)[None, :]
    kernel = np.exp(-0.5 * (offsets / sigma) ** 2)
    return kernel / (sigma * np.sqrt(2 * np.pi))


__all__ = ["ATTRIBUTES", "HELD_OUT_SEED_START", "MIN_PRESENT_AREA", "SIZE_TOLERANCE", "EvaluationReport", "Prediction",
           "evaluate", "evaluate_model", "format_pair_table", "format_table", "generate", "held_out_prompts",
           "in_trained_size_range", "main", "predict"]


if __name__ == "__main__":
    sys.exit(main())
