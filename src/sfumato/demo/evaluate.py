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

Each rule looks at many pixels at once, so blur, noise and compression from a
small generative model do not change the answer. :func:`evaluate` scores a
batch against captions and :func:`format_table` prints the result.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
from PIL import Image

from .data import COLOURS, PALETTE, SHAPES, parse_caption, shape_coverage

ATTRIBUTES: tuple[str, ...] = ("background", "colour", "shape")
# Where each attribute sits in a parsed caption (colour, shape, background).
_POSITION = {"colour": 0, "shape": 1, "background": 2}
_LABELS = {"background": "background colour", "colour": "shape colour", "shape": "shape class"}

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


@dataclass(frozen=True)
class Prediction:
    """What the evaluator read from one picture.

    ``colour`` and ``shape`` are ``None`` when no shape was found.
    ``shape_scores`` holds each shape's overlap (soft IoU, 0 to 1) with the
    silhouette; the gap between the best two says how sure the call is.
    """

    background: str
    colour: str | None
    shape: str | None
    shape_scores: dict[str, float] = field(default_factory=dict)


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
        position = _POSITION[attribute]
        return [
            getattr(prediction, attribute) == wanted[position]
            for prediction, wanted in zip(self.predictions, self.expected)
        ]

    @property
    def correct(self) -> dict[str, int]:
        """Right answers per attribute, plus ``"all"`` for pictures right on all three."""
        rows = {attribute: self.matches(attribute) for attribute in ATTRIBUTES}
        counts = {attribute: sum(hits) for attribute, hits in rows.items()}
        counts["all"] = sum(all(hits) for hits in zip(*rows.values()))
        return counts

    @property
    def accuracy(self) -> dict[str, float]:
        """Fraction right per attribute (and ``"all"``); 0.0 for an empty batch."""
        return {name: (count / self.total if self.total else 0.0) for name, count in self.correct.items()}

    def accuracy_by_value(self, attribute: str) -> dict[str, tuple[int, int]]:
        """``{asked value: (right, asked)}`` for one attribute, e.g. per shape."""
        hits = self.matches(attribute)
        position = _POSITION[attribute]
        table: dict[str, tuple[int, int]] = {}
        for wanted, hit in zip(self.expected, hits):
            right, asked = table.get(wanted[position], (0, 0))
            table[wanted[position]] = (right + int(hit), asked + 1)
        order = SHAPES if attribute == "shape" else COLOURS
        return {value: table[value] for value in order if value in table}


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
    main = _dilate(_largest_component(presence >= 0.5), max(2, round(min(height, width) / 16)))
    scores = _shape_scores(presence * main)
    shape = max(scores, key=scores.get) if scores else None
    return Prediction(background=background, colour=colour, shape=shape, shape_scores=scores)


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
    rows = [(_LABELS.get(name, "all three"), report.correct[name], report.total) for name in (*ATTRIBUTES, "all")]
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


__all__ = ["ATTRIBUTES", "EvaluationReport", "Prediction", "evaluate", "format_table", "predict"]
