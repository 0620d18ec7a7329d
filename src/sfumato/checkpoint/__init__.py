"""Checkpoint folders in the diffusers layout: configs, weight files, dtypes, hub ids.

Knows nothing of particular models or pipelines.
"""

from .config import ConfigMixin, FrozenDict, read_json, register_to_config, write_text_atomic
from .dtypes import dtype_for, parse_dtype
from .errors import CheckpointError
from .folders import atomic_folder
from .hub import resolve_folder, split_hub_kwargs
from .modeling import ModelMixin
from .registry import resolve_class
from .weights import find_weights, read_state_dict, with_variant, write_state_dict

__all__ = [
    "CheckpointError", "ConfigMixin", "FrozenDict", "ModelMixin", "atomic_folder", "dtype_for", "find_weights",
    "parse_dtype", "read_json", "read_state_dict", "register_to_config", "resolve_class", "resolve_folder",
    "split_hub_kwargs", "with_variant", "write_state_dict", "write_text_atomic",
]
