"""Pictures that clients send: decoded and checked for real, then kept under ``DATA/uploads``.

A picture arrives as base64 (a ``data:image/...;base64,`` URL or bare base64,
as AUTOMATIC1111 clients send it). It is refused, naming the field, when it is
too many bytes or too many pixels (checked from the header, before the pixels
are decoded), when it is not base64, or when PIL cannot decode it; the file
name a client gives never matters, and no client path is ever opened. What is
kept is the decoded picture re-encoded as PNG (RGB, upright), named by the
SHA-256 of its pixels (:func:`sfumato.cli.jobs.picture_sha256`, the digest
the PNG records store), so a record that names a picture by path elsewhere
finds the same pixels here by its digest, and the same upload is stored once.
"""

from __future__ import annotations

import base64
import binascii
import io
import os
import re
import tempfile
import warnings
from pathlib import Path

import PIL.Image
import PIL.ImageOps

from ..cli.jobs import picture_sha256
from .config import Limits
from .errors import ApiError

UPLOAD_PREFIX = "upload:"
RESULT_PREFIX = "result:"
_DATA_URL = re.compile(r"data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?P<params>(;[\w.+-]+=[\w.+-]+)*)(?P<b64>;base64)?,",
                       re.I)
_DIGEST = re.compile(r"[0-9a-f]{64}")


def is_inline(value: str) -> bool:
    return value[:5].lower() == "data:"


def decode(value: object, field: str, limits: Limits, bare_base64: bool = False) -> PIL.Image.Image:
    """A picture from a data URL (or, with ``bare_base64``, plain base64), upright and in RGB."""
    return open_picture(file_bytes(value, field, limits, bare_base64), field, limits)


def file_bytes(value: object, field: str, limits: Limits, bare_base64: bool = False) -> bytes:
    """The file a data URL (or plain base64) holds, refused when too large before it is decoded."""
    if not isinstance(value, str):
        raise ApiError(422, f"{field} must be a picture as a base64 data URL (data:image/png;base64,...), got "
                            f"{type(value).__name__}", field)
    payload = value
    match = _DATA_URL.match(value)
    if match:
        if match.group("mime") and not match.group("mime").lower().startswith("image/"):
            raise ApiError(415, f"{field} is a data URL of {match.group('mime')}, not of a picture", field)
        if not match.group("b64"):
            raise ApiError(422, f"{field} must be a base64 data URL (data:image/png;base64,...)", field)
        payload = value[match.end():]
    elif not bare_base64:
        raise ApiError(422, f"{field} must be a picture as a base64 data URL (data:image/png;base64,...), "
                            f"upload:ID or result:JOB/N; got {value[:60]!r}", field)
    payload = "".join(payload.split())
    size = len(payload) * 3 // 4
    if size > limits.max_upload:
        raise ApiError(413, f"{field} is a picture of about {size / 2**20:.1f} MiB, more than the limit of "
                            f"{limits.max_upload / 2**20:.1f} MiB per picture", field)
    try:
        return base64.b64decode(payload + "=" * (-len(payload) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(422, f"{field} is not valid base64", field) from None


def record_of(raw: bytes, field: str, folder: Path) -> dict:
    """The sfumato record in a PNG file's bytes, read by :func:`metadata.read_parameters`."""
    from ..metadata import MetadataError, read_parameters

    folder.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(dir=folder, prefix=".received-", suffix=".png")
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(raw)
        try:
            return read_parameters(name)
        except MetadataError as error:
            raise ApiError(422, f"{field}: " + str(error).replace(repr(name), "the picture"), field) from None
    finally:
        Path(name).unlink(missing_ok=True)


def open_picture(raw: bytes, field: str, limits: Limits) -> PIL.Image.Image:
    """Decode picture file bytes for real (not trusting any name or header), within the pixel limit."""
    if len(raw) > limits.max_upload:
        raise ApiError(413, f"{field} is a file of {len(raw) / 2**20:.1f} MiB, more than the limit of "
                            f"{limits.max_upload / 2**20:.1f} MiB per picture", field)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", PIL.Image.DecompressionBombWarning)
            picture = PIL.Image.open(io.BytesIO(raw))
            width, height = picture.size
            if width * height > limits.max_pixels:
                raise ApiError(413, f"{field} is a picture of {width}x{height} pixels, more than the limit of "
                                    f"{limits.max_pixels} pixels", field)
            picture.load()
            picture = PIL.ImageOps.exif_transpose(picture).convert("RGB")
    except ApiError:
        raise
    except PIL.UnidentifiedImageError:
        raise ApiError(415, f"{field} is not a picture: its bytes are no image format that PIL decodes (PNG, JPEG, "
                            f"WebP, ...)", field) from None
    except (PIL.Image.DecompressionBombError, PIL.Image.DecompressionBombWarning) as error:
        raise ApiError(413, f"{field}: {error}", field) from None
    except (OSError, ValueError, SyntaxError, EOFError) as error:
        raise ApiError(422, f"{field} is a damaged picture: {error}", field) from None
    return picture


class Uploads:
    """The pictures folder ``DATA/uploads``, indexed in the store by pixel digest."""

    def __init__(self, folder: Path, store):
        self.folder, self.store = folder, store
        folder.mkdir(parents=True, exist_ok=True)

    def keep(self, picture: PIL.Image.Image) -> str:
        """Store a decoded picture; returns its reference ``upload:DIGEST``."""
        digest = picture_sha256(picture)
        path = self.folder / f"{digest}.png"
        if not path.is_file():
            handle, temporary = tempfile.mkstemp(dir=self.folder, prefix=f".{digest}.", suffix=".partial")
            try:
                with os.fdopen(handle, "wb") as stream:
                    picture.save(stream, format="PNG")
                    stream.flush()
                    os.fsync(stream.fileno())
                os.replace(temporary, path)
            except BaseException:
                Path(temporary).unlink(missing_ok=True)
                raise
        # masks are read in grayscale: their records hold the digest of the grayscale pixels
        self.store.add_upload(digest, path.name, [digest, picture_sha256(picture.convert("L"))])
        return UPLOAD_PREFIX + digest

    def path(self, reference: str, field: str) -> Path:
        digest = reference[len(UPLOAD_PREFIX):]
        path = self.folder / f"{digest}.png"
        if not _DIGEST.fullmatch(digest) or not path.is_file():
            raise ApiError(422, f"{field}: {reference!r} names no picture uploaded to this server", field)
        return path

    def find(self, digest: str | None) -> str | None:
        """``upload:DIGEST`` of a stored picture whose pixels (RGB or grayscale) have ``digest``."""
        if not digest or not _DIGEST.fullmatch(str(digest)):
            return None
        name = self.store.find_upload(digest)
        return UPLOAD_PREFIX + name[:-4] if name and (self.folder / name).is_file() else None


def encode_png(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode("ascii")
