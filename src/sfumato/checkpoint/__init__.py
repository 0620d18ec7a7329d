"""Checkpoint folders in the diffusers layout: configs, weight files, dtypes, hub ids.

Knows nothing of particular models or pipelines. Names load on first use, so
the parts that only read folders (``sfumato.checkpoint.folders``, ``config``,
``hub``) work without importing torch: the command line checks a checkpoint
with them before it loads anything.
"""

from __future__ import annotations

from .._lazy import lazy_exports

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
__all__, __getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
