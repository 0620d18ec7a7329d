"""Generation parameters stored inside the PNG files sfumato writes.

Every picture the command line writes carries, in one PNG ``iTXt`` chunk
named ``sfumato``, a JSON object with everything needed to make it again:
task, model, prompts, seed, steps, guidance, size, scheduler, dtype, input
files and the sfumato version. ``sfumato info`` prints it and
``sfumato reproduce`` runs it again. The chunk is UTF-8 (``iTXt``, not the
Latin-1 ``tEXt``) so prompts in any script survive.

Writing is atomic: the PNG is written to a temporary file next to the target
and renamed over it, so a crash or a full disk never leaves a half-written
picture under the requested name.

Only PIL and the standard library are used here, so reading parameters does
not import torch.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import PIL.Image
import PIL.PngImagePlugin

#: Name of the PNG text chunk that holds the parameters.
PNG_KEY = "sfumato"


class MetadataError(ValueError):
    """A file has no readable sfumato parameters (not a PNG, not written by sfumato, or damaged)."""


def write_png(image: PIL.Image.Image, path: str | os.PathLike, parameters: dict[str, Any]) -> Path:
    """Write ``image`` to ``path`` as PNG with ``parameters`` (JSON-serialisable) in the ``sfumato`` chunk.

    The parent folder is created if needed. Returns the path written.
    """
    path = Path(path)
    text = json.dumps(parameters, ensure_ascii=False, sort_keys=True)
    info = PIL.PngImagePlugin.PngInfo()
    info.add_itxt(PNG_KEY, text)
    # a short, widely shown field so image viewers and file managers say where the picture came from
    info.add_text("Software", f"sfumato {parameters.get('sfumato', '')}".strip())
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".partial")
    try:
        with os.fdopen(handle, "wb") as stream:
            image.save(stream, format="PNG", pnginfo=info)
            stream.flush()
            os.fsync(stream.fileno())
        # mkstemp makes the file private (0600); give it the mode a plain open() would have
        os.chmod(temporary, 0o666 & ~_umask())
        os.replace(temporary, path)
    except BaseException:
        try:
            os.unlink(temporary)
        except FileNotFoundError:
            pass
        raise
    return path


def read_parameters(path: str | os.PathLike) -> dict[str, Any]:
    """The parameters stored in a PNG written by sfumato; :class:`MetadataError` if there are none."""
    path = Path(path)
    if not path.is_file():
        raise MetadataError(f"{str(path)!r} does not exist or is not a file")
    try:
        with PIL.Image.open(path) as picture:
            picture.load()  # text chunks after the image data are read only with the pixels
            chunks = dict(getattr(picture, "text", {}) or {})
            kind = picture.format
    except (PIL.UnidentifiedImageError, OSError) as error:
        raise MetadataError(f"{str(path)!r} is not a picture PIL can read: {error}") from None
    if PNG_KEY not in chunks:
        what = "PNG" if kind == "PNG" else f"{kind or 'unknown'} picture (sfumato writes PNG)"
        raise MetadataError(f"{str(path)!r} is a {what} without sfumato parameters; "
                            f"only pictures written by sfumato carry them")
    try:
        parameters = json.loads(chunks[PNG_KEY])
    except json.JSONDecodeError as error:
        raise MetadataError(f"the sfumato parameters in {str(path)!r} are not valid JSON: {error}") from None
    if not isinstance(parameters, dict):
        raise MetadataError(f"the sfumato parameters in {str(path)!r} are not a JSON object")
    return parameters


def _umask() -> int:
    # os.umask can only be read by setting it; set it straight back
    mask = os.umask(0)
    os.umask(mask)
    return mask


__all__ = ["PNG_KEY", "MetadataError", "write_png", "read_parameters"]
