"""The helpers the guides import from ``diffusers.utils``: ``load_image``, ``make_image_grid`` and friends.

``from sfumato.utils import load_image, make_image_grid`` works like the
diffusers import; each name loads on first use (``load_image`` needs only PIL).
"""

from __future__ import annotations

import importlib
from typing import Any

_MODULE_OF = {
    "load_image": "sfumato.image.loading",
    "make_image_grid": "sfumato.image.loading",
    "numpy_to_pil": "sfumato.image.convert",
    "pil_to_numpy": "sfumato.image.convert",
    "pt_to_pil": "sfumato.image.convert",
    "randn_tensor": "sfumato.random",
}

__all__ = sorted(_MODULE_OF)


def __getattr__(name: str) -> Any:
    if name in _MODULE_OF:
        value = getattr(importlib.import_module(_MODULE_OF[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
