"""Bounds on what one request may ask for, checked before any model runs.

A typo (``height=16384``, ``num_images_per_prompt=100000``) must get a clear
refusal, not a machine that swaps itself to death. The library, the command
line and the server use the same bounds; each can be raised by an environment
variable for machines that can take more:

``SFUMATO_MAX_SIDE``     longest side of a picture in pixels (default 8192)
``SFUMATO_MAX_IMAGES``   pictures made by one call (default 256)
``SFUMATO_MAX_MEMORY``   bytes a request may need, e.g. ``64GB`` (default: the memory available now)

The memory estimate is deliberately rough: the widest full-resolution layer of
a VAE / MoVQ decoder (128 channels) kept a few times over, per picture, plus
the latent-resolution work, which is smaller. Requests that pass it may still
be large; requests it refuses could not have finished on this machine.
"""

from __future__ import annotations

import os

DEFAULT_MAX_SIDE = 8192
DEFAULT_MAX_IMAGES = 256
# decoder activations per output pixel: 128 channels x 3 live tensors, in units of the dtype's size
ACTIVATION_VALUES_PER_PIXEL = 128 * 3


class RequestTooLarge(ValueError):
    """A request refused up front because it would need more than the machine (or a set limit) allows."""


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None:
        return default
    try:
        return max(1, int(parse_bytes(value)))
    except ValueError:
        raise ValueError(f"environment variable {name}={value!r} must be a positive number") from None


def parse_bytes(text: str | int) -> int:
    """``"64GB"``, ``"512MiB"``, ``"1000"`` -> bytes."""
    if isinstance(text, int):
        return text
    units = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12, "KIB": 2**10, "MIB": 2**20,
             "GIB": 2**30, "TIB": 2**40}
    stripped = str(text).strip().upper()
    number = stripped.rstrip("KMGTIB")
    unit = stripped[len(number):].strip()
    if unit not in units or not number.strip():
        raise ValueError(f"not a size: {text!r}")
    return int(float(number) * units[unit])


def max_side() -> int:
    return _env_int("SFUMATO_MAX_SIDE", DEFAULT_MAX_SIDE)


def max_images() -> int:
    return _env_int("SFUMATO_MAX_IMAGES", DEFAULT_MAX_IMAGES)


def available_memory() -> int:
    """Bytes a request may use: ``SFUMATO_MAX_MEMORY``, else what the system reports available now."""
    if os.environ.get("SFUMATO_MAX_MEMORY"):
        return _env_int("SFUMATO_MAX_MEMORY", 0)
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 1 << 62  # unknown: do not refuse on memory


def estimated_bytes(pictures: int, height: int, width: int, dtype_size: int = 4) -> int:
    """A rough peak of decoding ``pictures`` pictures of ``height`` x ``width`` at once."""
    return pictures * height * width * ACTIVATION_VALUES_PER_PIXEL * dtype_size


def check_count(pictures: int, what: str = "this call") -> None:
    """Refuse more pictures (or image embeddings) per call than ``SFUMATO_MAX_IMAGES``."""
    count = max_images()
    if pictures > count:
        raise RequestTooLarge(f"{what} would make {pictures} pictures, more than the limit of {count} per call "
                              f"(set SFUMATO_MAX_IMAGES to raise it, or make them in several calls)")


def check_request(*, pictures: int, height: int, width: int, dtype_size: int = 4, what: str = "this call") -> None:
    """Refuse sizes, counts and memory beyond the bounds above, naming what was asked and the bound."""
    side = max_side()
    for name, value in (("height", height), ("width", width)):
        if value > side:
            raise RequestTooLarge(f"{name}={value} is larger than the limit of {side} pixels per side "
                                  f"(set SFUMATO_MAX_SIDE to raise it)")
    check_count(pictures, what)
    needed, available = estimated_bytes(pictures, height, width, dtype_size), available_memory()
    if needed > available:
        raise RequestTooLarge(f"{what} ({pictures} x {width}x{height}) needs about {needed / 2**30:.1f} GiB, but "
                              f"{available / 2**30:.1f} GiB is available; make fewer or smaller pictures "
                              f"(or set SFUMATO_MAX_MEMORY)")
