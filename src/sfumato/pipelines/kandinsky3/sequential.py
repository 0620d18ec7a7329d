"""Sequential loading: a pipeline whose models stay on disk until they run, one in memory at a time.

Kandinsky 3 does not fit in the memory of many machines: its T5 encoder alone
is 17 GB in bf16, its UNet 6 GB. But its models run one after the other
(encode the prompt, denoise, decode), so none has to wait in memory for its
turn. With sequential loading every large model of the pipeline is a skeleton
(its modules, on the meta device: no memory) until something calls it; just
before it runs its weights are read from its folder, and the model that ran
before it is dropped. After the call the last one is dropped too.

Reading uses the component's own loader: safetensors files already in the
wanted dtype are memory-mapped (no copy, and the pages stay in the page cache
for the next call), others are converted tensor by tensor. The price is that
each call reads the weights again, from the page cache when memory allows.

This is the CPU counterpart of ``enable_model_cpu_offload`` (which keeps every
model in CPU memory and moves the running one to the accelerator); with
``device=`` set to an accelerator it loads from disk straight to it.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .quantize import load_int8, quantize_linears

logger = logging.getLogger("sfumato")

# methods that run a model's weights without going through forward()
_ENTRY_POINTS = ("encode", "decode")


@dataclasses.dataclass(frozen=True)
class WeightSource:
    """Where a component's weights are: its pipeline folder, ``model_index.json`` entry and load options."""

    folder: Path
    name: str
    entry: tuple[str, str]
    dtype: torch.dtype | None
    variant: str | None
    use_safetensors: bool | None
    int8: bool = False  # store the linear layers in int8 once read (see quantize.py)

    def load(self) -> nn.Module:
        from ..base import load_component

        if self.int8:  # quantized as read: the float model never exists
            return load_int8(self.skeleton(), self.files(), self.dtype or torch.float32)
        return load_component(self.folder, self.name, self.entry, self.dtype, self.variant, self.use_safetensors)

    def files(self) -> list[Path]:
        from ...checkpoint import ModelMixin, resolve_class
        from ...checkpoint.weights import find_weights

        klass = resolve_class(*self.entry, component=self.name)
        stem = "diffusion_pytorch_model" if issubclass(klass, ModelMixin) else "model"  # transformers' name
        return find_weights(self.folder / self.name, variant=self.variant, use_safetensors=self.use_safetensors,
                            stem=stem)

    def skeleton(self) -> nn.Module:
        """The component built from its config on the meta device: the right class, shapes and dtype, no memory."""
        from ...checkpoint import ModelMixin, read_json, resolve_class

        klass = resolve_class(*self.entry, component=self.name)
        sub = self.folder / self.name
        with torch.device("meta"):
            if issubclass(klass, ModelMixin):
                model = klass.from_config(read_json(sub / klass.config_name, what=f"{self.name} config"))
            else:  # transformers: the config class reads config.json
                model = klass(klass.config_class.from_pretrained(str(sub)))
        model = model.to(self.dtype or torch.float32).eval()
        return quantize_linears(model) if self.int8 else model


def weight_sources(folder: Path, index: dict, names: list[str], torch_dtype: Any, variant: str | None,
                   use_safetensors: bool | None) -> dict[str, WeightSource]:
    """The weight sources of the components in ``names`` that ``model_index.json`` lists as models."""
    from ...checkpoint import resolve_class
    from ...checkpoint.dtypes import dtype_for

    sources = {}
    for name in names:
        entry = index.get(name)
        if not (isinstance(entry, (list, tuple)) and len(entry) == 2 and entry[0] is not None):
            continue
        klass = resolve_class(*entry, component=name)
        if isinstance(klass, type) and issubclass(klass, nn.Module):
            component_variant = variant if variant and _has_variant(folder / name, variant) else None
            sources[name] = WeightSource(Path(folder), name, tuple(entry), dtype_for(name, torch_dtype),
                                         component_variant, use_safetensors)
    return sources


def _has_variant(folder: Path, variant: str) -> bool:
    return folder.is_dir() and any(f".{variant}." in p.name or f".{variant}-" in p.name for p in folder.iterdir())


class SequentialLoader:
    """Keeps at most one of a pipeline's large models in memory, loading each just before it runs."""

    def __init__(self, modules: dict[str, nn.Module], sources: dict[str, WeightSource],
                 device: torch.device):
        self.modules, self.sources, self.device = modules, sources, device
        self.resident: str | None = None
        self._undo: list[Any] = []
        for name, module in modules.items():
            handle = module.register_forward_pre_hook(lambda mod, args, name=name: self.bring(name))
            self._undo.append(handle.remove)
            for method_name in _ENTRY_POINTS:
                method = getattr(module, method_name, None)
                if callable(method) and not isinstance(method, nn.Module):
                    setattr(module, method_name, self._loading_first(name, method))
                    self._undo.append(functools.partial(module.__dict__.pop, method_name, None))

    def _loading_first(self, name: str, method):
        @functools.wraps(method)
        def wrapper(*args, **kwargs):
            self.bring(name)
            return method(*args, **kwargs)

        return wrapper

    def bring(self, name: str) -> None:
        """Make ``name``'s weights resident, dropping the model that was resident before."""
        if self.resident == name:
            return
        self.release()
        logger.info("sequential loading: reading %s", name)
        loaded = self.sources[name].load()
        if self.device.type != "cpu":
            loaded.to(self.device)
        adopt(self.modules[name], loaded)
        self.resident = name

    def release(self) -> None:
        """Drop the resident model's weights (its skeleton stays)."""
        if self.resident is not None:
            release(self.modules[self.resident])
            self.resident = None
            _return_freed_memory()

    def remove(self, load_all: bool) -> None:
        """Stop loading on demand; with ``load_all`` every model is loaded for good first."""
        if load_all:
            for name in self.modules:
                if name != self.resident:
                    adopt(self.modules[name], self.sources[name].load())
        for undo in self._undo:
            undo()
        self._undo = []


def adopt(skeleton: nn.Module, loaded: nn.Module) -> None:
    """Give ``skeleton`` the tensors of ``loaded`` (same class and config) without copying them."""
    skeleton.load_state_dict(loaded.state_dict(), assign=True, strict=True)
    # buffers that are not saved (computed at build time) are not in a state dict
    loaded_modules = dict(loaded.named_modules())
    for path, module in skeleton.named_modules():
        for name in module._non_persistent_buffers_set:
            module._buffers[name] = loaded_modules[path]._buffers[name]


def release(module: nn.Module) -> None:
    """Replace ``module``'s parameters and saved buffers by meta tensors: the weights' memory is freed."""
    with torch.no_grad():
        for submodule in module.modules():
            for name, param in submodule._parameters.items():
                if param is not None and not param.is_meta:
                    submodule._parameters[name] = nn.Parameter(torch.empty_like(param, device="meta"),
                                                               requires_grad=param.requires_grad)
            for name, buffer in submodule._buffers.items():
                if buffer is not None and not buffer.is_meta and name not in submodule._non_persistent_buffers_set:
                    submodule._buffers[name] = torch.empty_like(buffer, device="meta")


def _return_freed_memory() -> None:
    """Ask the C allocator to hand freed heap memory back to the system (glibc keeps it otherwise), so the
    next model finds it free, and the process's resident size says what it really holds."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass
