"""Checkpoint folders in the diffusers layout: configs, weight files, dtypes, hub ids.

Knows nothing of particular models or pipelines. Names load on first use, so
the parts that only read folders (``sfumato.checkpoint.folders``, ``config``,
``hub``) work without importing torch: the command line checks a checkpoint
with them before it loads anything.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "config": ("ConfigMixin", "FrozenDict", "read_json", "register_to_config", "write_text_atomic"),
    "dtypes": ("dtype_for", "parse_dtype"),
    "errors": ("CheckpointError",),
    "folders": ("atomic_folder", "connected_pipeline"),
    "hub": ("resolve_folder", "split_hub_kwargs"),
    "modeling": ("ModelMixin",),
    "registry": ("resolve_class",),
    "weights": ("find_weights", "read_state_dict", "with_variant", "write_state_dict"),
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = sorted(_MODULE_OF)


def __getattr__(name: str) -> Any:
    if name in _MODULE_OF:
        value = getattr(importlib.import_module(f"{__name__}.{_MODULE_OF[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
