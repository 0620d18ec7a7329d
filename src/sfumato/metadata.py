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


#: The largest ``sfumato`` chunk read back (a real record is a few KB; a chain of many steps, tens of KB).
MAX_RECORD_BYTES = 8 * 2 ** 20
#: How deeply a record's lists and objects may nest (a chain's picture nests its earlier steps' records).
MAX_NESTING = 256
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_TEXT_CHUNKS = (b"tEXt", b"zTXt", b"iTXt")


def read_parameters(path: str | os.PathLike) -> dict[str, Any]:
    """The parameters stored in a PNG written by sfumato; :class:`MetadataError` if there are none.

    Only the PNG's chunk headers and its ``sfumato`` chunk are read (the pixels are not decoded), and a
    chunk larger than :data:`MAX_RECORD_BYTES` or a record nested deeper than :data:`MAX_NESTING` is
    refused, so a crafted file cannot make reading its parameters slow or large.
    """
    path = Path(path)
    try:
        if not path.is_file():
            raise MetadataError(f"{str(path)!r} does not exist or is not a file")
        with open(path, "rb") as stream:
            is_png = stream.read(len(_PNG_SIGNATURE)) == _PNG_SIGNATURE
            text = _png_text(stream, path) if is_png else None
    except (OSError, ValueError) as error:  # ValueError: a NUL in the name
        if isinstance(error, MetadataError):
            raise
        raise MetadataError(f"{str(path)!r} cannot be read: {getattr(error, 'strerror', None) or error}") from None
    if text is None:
        what = "PNG" if is_png else f"{_format(path)} (sfumato writes PNG)"
        raise MetadataError(f"{str(path)!r} is a {what} without sfumato parameters; "
                            f"only pictures written by sfumato carry them")
    try:
        parameters = json.loads(text)
    except json.JSONDecodeError as error:
        raise MetadataError(f"the sfumato parameters in {str(path)!r} are not valid JSON: {error}") from None
    except RecursionError:
        parameters = None  # nested past what the JSON reader can take: refused just below
    if parameters is None or nesting_depth(parameters) > MAX_NESTING:
        raise MetadataError(f"the sfumato parameters in {str(path)!r} are nested more than {MAX_NESTING} levels "
                            f"deep; a picture sfumato made has far fewer (each earlier step adds one to three)")
    if not isinstance(parameters, dict):
        raise MetadataError(f"the sfumato parameters in {str(path)!r} are not a JSON object")
    return parameters


def _png_text(stream, path: Path) -> str | None:
    """The text of the PNG's ``sfumato`` chunk (``None``: there is none), read chunk header by chunk header."""
    import struct
    import zlib

    while True:
        header = stream.read(8)
        if len(header) < 8:
            return None  # truncated: no IEND; whatever came before was searched
        length, kind = struct.unpack(">I4s", header)
        if kind == b"IEND":
            return None
        if kind not in _TEXT_CHUNKS:
            stream.seek(length + 4, os.SEEK_CUR)  # the data and its CRC
            continue
        start = stream.tell()
        keyword = stream.read(min(length, 80)).split(b"\0", 1)[0]
        if keyword != PNG_KEY.encode():
            stream.seek(start + length + 4)
            continue
        if length > MAX_RECORD_BYTES:
            raise MetadataError(f"the sfumato parameters in {str(path)!r} are {length} bytes, more than the "
                                f"{MAX_RECORD_BYTES} a record may have; this is not a picture sfumato wrote")
        stream.seek(start)
        data = stream.read(length)
        rest = data[len(keyword) + 1:]
        try:
            if kind == b"tEXt":
                return rest.decode("latin-1")
            if kind == b"zTXt":
                return _inflate(rest[1:], path).decode("latin-1")
            compressed, rest = rest[:1] == b"\1", rest[2:]
            rest = rest.split(b"\0", 2)[-1]  # after the language tag and the translated keyword
            return (_inflate(rest, path) if compressed else rest).decode("utf-8")
        except (UnicodeDecodeError, zlib.error) as error:
            raise MetadataError(f"the sfumato parameters in {str(path)!r} cannot be decoded: {error}") from None


def _inflate(data: bytes, path: Path) -> bytes:
    import zlib

    inflater = zlib.decompressobj()
    text = inflater.decompress(data, MAX_RECORD_BYTES + 1)
    if len(text) > MAX_RECORD_BYTES:
        raise MetadataError(f"the sfumato parameters in {str(path)!r} expand to more than the {MAX_RECORD_BYTES} "
                            f"bytes a record may have; this is not a picture sfumato wrote")
    return text


def _format(path: Path) -> str:
    """What kind of picture a file that is not a PNG is, in words."""
    try:
        with PIL.Image.open(path) as picture:
            return f"{picture.format or 'unknown'} picture"
    except Exception as error:  # noqa: BLE001 - any failure of PIL's format sniffing means "not a picture"
        raise MetadataError(f"{str(path)!r} is not a picture PIL can read: {error}") from None


def nesting_depth(value: Any) -> int:
    """How deeply lists and dicts nest in ``value`` (a scalar: 0), counted without recursion."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children = list(item.values())
        elif isinstance(item, (list, tuple)):
            children = item
        else:
            continue
        deepest = max(deepest, depth)
        if depth > MAX_NESTING:
            return depth  # deep enough to refuse; no need to walk the rest
        stack.extend((child, depth + 1) for child in children)
    return deepest


def _umask() -> int:
    # os.umask can only be read by setting it; set it straight back
    mask = os.umask(0)
    os.umask(mask)
    return mask


__all__ = ["PNG_KEY", "MAX_RECORD_BYTES", "MAX_NESTING", "MetadataError", "write_png", "read_parameters",
           "nesting_depth"]
