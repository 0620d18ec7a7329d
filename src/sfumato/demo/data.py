"""The procedural data set the built-in demo model is trained and judged on.

Each sample is one flat shape (circle, square or triangle) in one palette
colour on a background of another palette colour, captioned
``a <colour> <shape> on a <colour> background``. Everything is drawn from a
seed with a numpy ``Generator``, so a seed names a picture exactly: the
trainer, the evaluator and the quality benchmark all agree on what "sample 17"
is without storing any files.

Samples are identified by an integer *sample seed*. :func:`split_of` assigns
every sample seed to ``"train"`` or ``"eval"`` once and for all, so the
pictures (and the generation seeds) used to measure the model are never the
ones it was trained on. All 90 captions occur in both splits: with three
shapes and six colours there are too few captions to hold whole captions out
without asking a tiny model for compositional generalisation.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass
from typing import Iterator

import numpy as np
from PIL import Image

#: The exact RGB of every colour word. Saturated primaries and their mixes keep
#: every pair of colours at least 255 apart in RGB, so the nearest palette
#: colour survives blur, noise and compression.
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (255, 0, 0),
    "green": (0, 255, 0),
    "blue": (0, 0, 255),
    "yellow": (255, 255, 0),
    "white": (255, 255, 255),
    "black": (0, 0, 0),
}
COLOURS: tuple[str, ...] = tuple(PALETTE)
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
SPLITS: tuple[str, ...] = ("train", "eval")

#: Shape size (side of its bounding box) as a fraction of the image side. Below
#: ~0.3 a shape is under 3x3 latent cells after the 8x autoencoder and circles
#: and squares become indistinguishable; above ~0.55 too little background
#: remains for positions to vary.
MIN_SHAPE_FRACTION = 0.3
MAX_SHAPE_FRACTION = 0.55
#: Area of each shape as a fraction of its square bounding box (circle pi / 4,
#: square 1, upright triangle filling its box 1 / 2).
BOX_FILL: dict[str, float] = {"circle": float(np.pi / 4), "square": 1.0, "triangle": 0.5}
#: Empty band kept between the shape and the image edge, as a fraction of the
#: side, so the border pixels are pure background (the evaluator reads them).
MARGIN_FRACTION = 1 / 16
#: Every ``EVAL_EVERY``-th sample seed belongs to the evaluation split.
EVAL_EVERY = 10
#: Smallest image side for which shapes are still recognisable.
MIN_IMAGE_SIZE = 16

# Antialiasing: coverage is averaged over SUPERSAMPLE x SUPERSAMPLE points per
# pixel. Pixels fully inside or outside keep the exact palette colour.
_SUPERSAMPLE = 4


# eq=False: the mask is an array, so field-wise == would be ambiguous.
@dataclass(frozen=True, eq=False)
class Sample:
    """One picture of the data set with everything known about it.

    ``centre`` is ``(x, y)`` in pixels (x to the right, y down, the image
    spanning ``[0, width] x [0, height]``); ``size`` is the side of the
    shape's square bounding box in pixels (circle diameter, square side,
    triangle base and height). ``mask`` is the shape's binary silhouette
    (``bool``, ``H x W``); :attr:`hint` is the same as an RGB picture for a
    ControlNet. ``seed`` is the sample seed it was drawn from, or ``None``
    when it came from a caller's ``Generator``.
    """

    image: Image.Image
    caption: str
    shape: str
    colour: str
    background: str
    centre: tuple[float, float]
    size: float
    mask: np.ndarray
    seed: int | None = None

    @property
    def pixels(self) -> np.ndarray:
        """The image as an ``H x W x 3`` ``uint8`` array."""
        return np.asarray(self.image, dtype=np.uint8)

    @property
    def hint(self) -> Image.Image:
        """The silhouette as an RGB image: white shape on black, a ControlNet hint."""
        grey = self.mask.astype(np.uint8) * 255
        return Image.fromarray(np.repeat(grey[:, :, None], 3, axis=2), mode="RGB")


def make_caption(colour: str, shape: str, background: str) -> str:
    """The canonical caption, e.g. ``a red circle on a blue background``."""
    _check_choice("colour", colour, COLOURS)
    _check_choice("shape", shape, SHAPES)
    _check_choice("background", background, COLOURS)
    if colour == background:
        raise ValueError(
            f"colour and background are both {colour!r}; they must differ so the shape is visible"
        )
    return f"a {colour} {shape} on a {background} background"


def all_captions() -> list[str]:
    """Every caption of the data set (90), in a fixed order: colour, shape, background."""
    return [
        make_caption(colour, shape, background)
        for colour, shape, background in itertools.product(COLOURS, SHAPES, COLOURS)
        if colour != background
    ]


_WORD = r"[a-z]+"
_CAPTION = re.compile(
    rf"^an? (?P<colour>{_WORD}) (?P<shape>{_WORD}) on an? (?P<background>{_WORD}) background\.?$"
)


def parse_caption(text: str) -> tuple[str, str, str]:
    """``(colour, shape, background)`` named by a caption.

    Accepts the canonical form and small variations of it: any letter case,
    ``a`` or ``an``, extra or surrounding whitespace, a final full stop.
    Anything else, an unknown word, or the same colour twice raises a
    ``ValueError`` that says what the form must be.
    """
    if not isinstance(text, str):
        raise ValueError(f"text must be a caption string, got {type(text).__name__}")
    normalised = " ".join(text.lower().split())
    form = (
        "'a <colour> <shape> on a <colour> background' with colour one of "
        f"{', '.join(COLOURS)} and shape one of {', '.join(SHAPES)}"
    )
    match = _CAPTION.match(normalised)
    if match is None:
        raise ValueError(f"text must be a caption of the form {form}; got {text!r}")
    colour, shape, background = match.group("colour", "shape", "background")
    for part, word, choices in (("colour", colour, COLOURS), ("shape", shape, SHAPES), ("background", background, COLOURS)):
        if word not in choices:
            raise ValueError(f"text names the {part} {word!r}, which is not one of {', '.join(choices)}; got {text!r}")
    if colour == background:
        raise ValueError(f"text names {colour!r} for both the shape and the background; they must differ; got {text!r}")
    return colour, shape, background


def split_of(seed: int) -> str:
    """The split (``"train"`` or ``"eval"``) that a sample seed belongs to, forever."""
    seed = _check_seed("seed", seed)
    return "eval" if seed % EVAL_EVERY == 0 else "train"


def split_seeds(split: str, count: int, start: int = 0) -> list[int]:
    """The first ``count`` sample seeds ``>= start`` that belong to ``split``."""
    _check_choice("split", split, SPLITS)
    start = _check_seed("start", start)
    count = _check_count(count)
    seeds = []
    seed = start
    while len(seeds) < count:
        if split_of(seed) == split:
            seeds.append(seed)
        seed += 1
    return seeds


def make_sample(
    rng_or_seed: np.random.Generator | int,
    size: int = 64,
    shape: str | None = None,
    colour: str | None = None,
    background: str | None = None,
) -> Sample:
    """Draw one sample; ``shape``, ``colour`` and ``background`` fix those attributes.

    ``rng_or_seed`` is a sample seed (a non-negative int) or a numpy
    ``Generator``. The same random numbers are drawn whatever is fixed, so
    fixing the shape of a seed keeps its colours and geometry, and so on.
    A fixed ``colour`` without a ``background`` draws the background among
    the other colours (and the other way round).
    """
    seed = None
    if isinstance(rng_or_seed, np.random.Generator):
        rng = rng_or_seed
    else:
        seed = _check_seed("rng_or_seed", rng_or_seed, accept="a numpy Generator or ")
        rng = np.random.default_rng(seed)
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < MIN_IMAGE_SIZE:
        raise ValueError(f"size must be an int >= {MIN_IMAGE_SIZE} (the image side in pixels), got {size!r}")
    size = int(size)
    if shape is not None:
        _check_choice("shape", shape, SHAPES)
    if colour is not None:
        _check_choice("colour", colour, COLOURS)
    if background is not None:
        _check_choice("background", background, COLOURS)
    if colour is not None and colour == background:
        raise ValueError(f"colour and background are both {colour!r}; they must differ so the shape is visible")

    # Always draw every number in the same order, then override: fixing one
    # attribute must not reshuffle the others.
    drawn_shape = SHAPES[rng.integers(len(SHAPES))]
    drawn_colour = COLOURS[rng.integers(len(COLOURS))]
    other_index = int(rng.integers(len(COLOURS) - 1))
    fraction = rng.uniform(MIN_SHAPE_FRACTION, MAX_SHAPE_FRACTION)
    position = rng.uniform(0.0, 1.0, size=2)

    shape = shape or drawn_shape
    if colour is None and background is None:
        colour = drawn_colour
    if colour is None:
        colour = [name for name in COLOURS if name != background][other_index]
    if background is None:
        background = [name for name in COLOURS if name != colour][other_index]

    shape_size = float(fraction * size)
    margin = size * MARGIN_FRACTION
    free = size - 2 * margin - shape_size
    centre = (
        float(margin + shape_size / 2 + position[0] * free),
        float(margin + shape_size / 2 + position[1] * free),
    )
    coverage = shape_coverage(shape, centre, shape_size, (size, size))
    foreground = np.array(PALETTE[colour], dtype=np.float64)
    backdrop = np.array(PALETTE[background], dtype=np.float64)
    pixels = backdrop + coverage[:, :, None] * (foreground - backdrop)
    image = Image.fromarray(np.rint(pixels).astype(np.uint8), mode="RGB")
    return Sample(
        image=image,
        caption=make_caption(colour, shape, background),
        shape=shape,
        colour=colour,
        background=background,
        centre=centre,
        size=shape_size,
        mask=coverage >= 0.5,
        seed=seed,
    )


def iterate_samples(seed: int, count: int, size: int = 64, split: str = "train") -> Iterator[Sample]:
    """``count`` samples of ``split``, from the first sample seeds ``>= seed`` in it.

    Sample ``k`` is ``make_sample(s_k)`` for the k-th such sample seed, so
    any sample can be redrawn alone from its :attr:`Sample.seed`.
    """
    _check_choice("split", split, SPLITS)
    for sample_seed in split_seeds(split, count, start=seed):
        yield make_sample(sample_seed, size=size)


def shape_coverage(
    shape: str,
    centre: tuple[float, float],
    size: float,
    image_size: tuple[int, int],
    supersample: int = _SUPERSAMPLE,
) -> np.ndarray:
    """Fraction of each pixel covered by the shape, ``float`` ``H x W`` in [0, 1].

    ``image_size`` is ``(width, height)`` like PIL. The evaluator uses this
    too, to draw the ideal shapes it compares a picture with.
    """
    _check_choice("shape", shape, SHAPES)
    width, height = image_size
    # Sample points at the centres of a supersample x supersample grid per pixel.
    offsets = (np.arange(supersample) + 0.5) / supersample
    xs = (np.arange(width)[:, None] + offsets[None, :]).reshape(-1)
    ys = (np.arange(height)[:, None] + offsets[None, :]).reshape(-1)
    dx = xs[None, :] - centre[0]
    dy = ys[:, None] - centre[1]
    half = size / 2
    if shape == "circle":
        inside = dx**2 + dy**2 <= half**2
    elif shape == "square":
        inside = (np.abs(dx) <= half) & (np.abs(dy) <= half)
    else:
        # Upright isosceles triangle filling its bounding box: apex at the top
        # middle, base along the bottom; half-width grows from 0 to size / 2.
        from_top = dy + half
        inside = (from_top >= 0) & (from_top <= size) & (np.abs(dx) <= from_top / 2)
    inside = inside.reshape(height, supersample, width, supersample)
    return inside.mean(axis=(1, 3))


def area_range(shape: str | None = None) -> tuple[float, float]:
    """Smallest and largest area, as a fraction of the picture, that :func:`make_sample` draws.

    For one ``shape``, or for any shape with ``None`` (the triangle's
    smallest to the square's largest). Read from the size range above, so
    the evaluator's size check follows the data if the range changes.
    """
    shapes = SHAPES if shape is None else (shape,)
    for name in shapes:
        _check_choice("shape", name, SHAPES)
    low = min(BOX_FILL[name] for name in shapes) * MIN_SHAPE_FRACTION**2
    high = max(BOX_FILL[name] for name in shapes) * MAX_SHAPE_FRACTION**2
    return float(low), float(high)


def _check_choice(name: str, value: object, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(choices)}; got {value!r}")


def _check_seed(name: str, value: object, accept: str = "") -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise ValueError(f"{name} must be {accept}a non-negative int seed, got {value!r}")
    return int(value)


def _check_count(count: object) -> int:
    if isinstance(count, bool) or not isinstance(count, (int, np.integer)) or count < 0:
        raise ValueError(f"count must be a non-negative int, got {count!r}")
    return int(count)


__all__ = [
    "COLOURS",
    "PALETTE",
    "SHAPES",
    "SPLITS",
    "Sample",
    "all_captions",
    "area_range",
    "iterate_samples",
    "make_caption",
    "make_sample",
    "parse_caption",
    "shape_coverage",
    "split_of",
    "split_seeds",
]
