"""Getting pictures in and laid out: ``load_image`` and ``make_image_grid``.

These are the two helpers the guides call from ``diffusers.utils``; they give
the same pictures. Only PIL is needed here (no torch), so a command line that
just loads or tiles images stays light.
"""

from __future__ import annotations

import io
import os
import urllib.error
import urllib.request
from typing import Callable, Sequence

import PIL.Image
import PIL.ImageOps

# Seconds to wait for a server before giving up; the reference waits 60 s too.
REQUEST_TIMEOUT = float(os.environ.get("SFUMATO_REQUEST_TIMEOUT", "60"))

_URL_SCHEMES = ("http://", "https://")


class ImageLoadError(ValueError, OSError):
    """An image could not be fetched or decoded.

    It is both a ``ValueError`` (the argument does not lead to an image) and an
    ``OSError`` (the usual type of I/O failures), so either ``except`` works.
    """


def load_image(
    image: str | os.PathLike | PIL.Image.Image,
    convert_method: Callable[[PIL.Image.Image], PIL.Image.Image] | None = None,
) -> PIL.Image.Image:
    """Open ``image`` (a local path, an http(s) URL or a PIL image) as a PIL image.

    The EXIF orientation tag is applied, so photos from phones come out upright.
    The result is converted to RGB, or passed through ``convert_method`` when one
    is given (for example ``lambda img: img.convert("L")``).
    """
    if convert_method is not None and not callable(convert_method):
        raise TypeError(
            f"convert_method must be a callable that takes and returns a PIL image or None, "
            f"got {type(convert_method).__name__}"
        )
    if isinstance(image, os.PathLike):
        image = os.fspath(image)
    if isinstance(image, str):
        picture = _open_url(image) if image.startswith(_URL_SCHEMES) else _open_file(image)
    elif isinstance(image, PIL.Image.Image):
        picture = image
    else:
        raise TypeError(
            f"image must be a local path, an http(s) URL or a PIL.Image.Image, got {type(image).__name__}"
        )
    picture = PIL.ImageOps.exif_transpose(picture)
    return convert_method(picture) if convert_method is not None else picture.convert("RGB")


def _open_file(path: str) -> PIL.Image.Image:
    if not os.path.isfile(path):
        raise ValueError(
            f"image must be an existing file or a URL starting with http:// or https://, got {path!r} "
            "(no such file)"
        )
    try:
        return PIL.Image.open(path)
    except PIL.UnidentifiedImageError as error:
        raise ImageLoadError(f"image {path!r} is not a picture PIL can read: {error}") from error


def _open_url(url: str) -> PIL.Image.Image:
    request = urllib.request.Request(url, headers={"User-Agent": "sfumato"})
    try:
        with urllib.request.urlopen(request, timeout=REQUEST_TIMEOUT) as response:
            payload = response.read()
    except urllib.error.HTTPError as error:
        raise ImageLoadError(f"could not download image from {url!r}: HTTP {error.code} {error.reason}") from error
    except (urllib.error.URLError, OSError) as error:  # no route, refused, DNS, timeout
        reason = getattr(error, "reason", error)
        raise ImageLoadError(f"could not download image from {url!r}: {reason}") from error
    try:
        return PIL.Image.open(io.BytesIO(payload))
    except PIL.UnidentifiedImageError as error:
        raise ImageLoadError(
            f"the file at {url!r} is not a picture PIL can read ({len(payload)} bytes downloaded)"
        ) from error


def make_image_grid(
    images: Sequence[PIL.Image.Image], rows: int, cols: int, resize: int | None = None
) -> PIL.Image.Image:
    """Tile ``images`` row by row into one RGB picture of ``rows`` x ``cols`` cells.

    Every cell has the size of the first image (or ``resize`` x ``resize`` when
    given, each image being resized first); there must be exactly
    ``rows * cols`` images.
    """
    for name, value in (("rows", rows), ("cols", cols)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if resize is not None and (isinstance(resize, bool) or not isinstance(resize, int) or resize < 1):
        raise ValueError(f"resize must be a positive integer (the side of each cell) or None, got {resize!r}")
    images = list(images)
    if len(images) != rows * cols:
        raise ValueError(
            f"make_image_grid needs rows * cols = {rows} * {cols} = {rows * cols} images, got {len(images)}"
        )
    for index, picture in enumerate(images):
        if not isinstance(picture, PIL.Image.Image):
            raise TypeError(f"images[{index}] must be a PIL.Image.Image, got {type(picture).__name__}")

    if resize is not None:
        images = [picture.resize((resize, resize)) for picture in images]
    cell_width, cell_height = images[0].size
    grid = PIL.Image.new("RGB", size=(cols * cell_width, rows * cell_height))
    for index, picture in enumerate(images):
        row, col = divmod(index, cols)
        grid.paste(picture, box=(col * cell_width, row * cell_height))
    return grid
