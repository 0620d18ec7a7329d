"""``ModelMixin``: loading and saving an ``nn.Module`` in the diffusers component layout.

Loading builds the network on the meta device (no memory, no random init),
reads the weight files once and assigns the tensors, so a large model never
exists twice in memory.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .config import ConfigMixin, check_config_values, config_errors_name, read_json
from .derived import mark_source
from .dtypes import available_device, parse_dtype
from .errors import CheckpointError
from .folders import atomic_folder
from .hub import resolve_folder, split_hub_kwargs
from .weights import check_variant, find_weights, read_state_dict, shard_size_bytes, write_state_dict


class ModelMixin(nn.Module, ConfigMixin):
    """Base of every sfumato network: ``from_pretrained``, ``save_pretrained``, ``dtype``, ``device``."""

    config_name = "config.json"

    @property
    def device(self) -> torch.device:
        for tensor in self.parameters():
            return tensor.device
        for tensor in self.buffers():
            return tensor.device
        return torch.device("cpu")

    @property
    def dtype(self) -> torch.dtype:
        for tensor in self.parameters():
            if tensor.is_floating_point():
                return tensor.dtype
        return torch.float32

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | os.PathLike,
        subfolder: str | None = None,
        torch_dtype: Any = None,
        variant: str | None = None,
        use_safetensors: bool | None = None,
        **kwargs: Any,
    ):
        """Load a component folder (``config.json`` + weights) saved by sfumato or diffusers.

        As in diffusers, weights load in float32 unless ``torch_dtype`` says otherwise.
        """
        if "dtype" in kwargs:  # the reference's newer spelling of torch_dtype
            torch_dtype = kwargs.pop("dtype")
        dtype = parse_dtype(torch_dtype) or torch.float32
        check_variant(variant)
        hub_kwargs = split_hub_kwargs(kwargs)
        for ignored in ("low_cpu_mem_usage", "device_map", "output_loading_info"):
            kwargs.pop(ignored, None)
        patterns = None
        if not Path(str(pretrained_model_name_or_path)).expanduser().is_dir():
            prefix = f"{subfolder}/" if subfolder else ""
            patterns = [f"{prefix}*.json", f"{prefix}*.safetensors"] if use_safetensors is not False else None
        folder = resolve_folder(pretrained_model_name_or_path, subfolder, allow_patterns=patterns, **hub_kwargs)
        config_file = folder / cls.config_name
        config = read_json(config_file, what=f"{cls.__name__} config")
        config.update(kwargs)  # config fields given as keywords override the file
        check_config_values(config, str(config_file))
        files = find_weights(folder, variant=variant, use_safetensors=use_safetensors)
        with torch.device("meta"), config_errors_name(config_file):
            model = cls.from_config(config)
        # converted while read, file by file: the model never exists twice in memory
        state = read_state_dict(files, dtype=dtype)
        model.load_weights(state, source=str(folder), dtype=dtype)
        return mark_source(model.eval(), [config_file, *files], kwargs)

    def to(self, *args: Any, **kwargs: Any):
        """``nn.Module.to``, with a clear error for a device this machine does not have."""
        for value in (*args, kwargs.get("device")):
            if isinstance(value, (str, torch.device)):
                available_device(value)
        return super().to(*args, **kwargs)

    def load_weights(self, state: dict[str, torch.Tensor], source: str = "state dict",
                     dtype: torch.dtype | None = None) -> None:
        """Assign ``state`` to this model after checking every key and shape; names what is off."""
        expected = self.state_dict()
        missing = [k for k in expected if k not in state]
        unexpected = [k for k in state if k not in expected]
        if missing or unexpected:
            parts = []
            if missing:
                parts.append(f"{len(missing)} missing key(s), e.g. {missing[:5]}")
            if unexpected:
                parts.append(f"{len(unexpected)} unexpected key(s), e.g. {unexpected[:5]}")
            raise CheckpointError(
                f"weights in {source} do not match {type(self).__name__} built from its config: " + "; ".join(parts)
            )
        for key in expected:  # in the model's order, so the first mismatch named is the first layer's
            tensor = state[key]
            if tuple(tensor.shape) != tuple(expected[key].shape):
                raise CheckpointError(
                    f"weight {key!r} in {source} has shape {tuple(tensor.shape)}, "
                    f"but {type(self).__name__} expects {tuple(expected[key].shape)}"
                )
        if dtype is not None:
            state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
        self.load_state_dict(state, assign=True, strict=True)
        self._materialize_meta()

    def _materialize_meta(self) -> None:
        """Recompute any tensor that is not in the state dict (non-persistent buffers)."""
        left = [name for name, t in list(self.named_parameters()) + list(self.named_buffers()) if t.is_meta]
        if left:
            init = getattr(self, "init_non_persistent_buffers", None)
            if init is None:
                raise CheckpointError(f"{type(self).__name__} has tensors no checkpoint sets: {left[:5]}")
            init()

    def save_pretrained(
        self,
        save_directory: str | os.PathLike,
        safe_serialization: bool = True,
        variant: str | None = None,
        max_shard_size: int | str = "10GB",
        **kwargs: Any,
    ) -> None:
        """Write ``config.json`` and the weights; a failure leaves ``save_directory`` untouched."""
        shard_size_bytes(max_shard_size)
        check_variant(variant)
        with atomic_folder(save_directory) as staging:
            self.write_pretrained(staging, safe_serialization, variant, max_shard_size)

    def write_pretrained(self, folder: Path, safe_serialization: bool = True, variant: str | None = None,
                         max_shard_size: int | str = "10GB") -> None:
        """Write into an existing folder (used by pipelines that stage the whole checkpoint)."""
        self.save_config(folder)
        write_state_dict(self.state_dict(), Path(folder), variant, safe_serialization, max_shard_size)
