"""Model CPU offload: keep only the model that is running on the accelerator.

Every model of the pipeline stays in CPU memory; just before one runs (its
``forward`` or an entry point such as ``encode`` / ``decode``), it moves to the
execution device and the model that ran before it goes back to the CPU. With
no accelerator present this is a no-op and everything runs on the CPU.
"""

from __future__ import annotations

import functools
import logging
from typing import Any

import torch
from torch import nn

logger = logging.getLogger("sfumato")

# methods that run a model's weights without going through forward()
_ENTRY_POINTS = ("encode", "decode", "get_text_features", "get_image_features")


def _accelerator(gpu_id: int | None, device: str | torch.device | None) -> torch.device | None:
    if device is None:
        if torch.cuda.is_available():
            device = "cuda"
        elif hasattr(torch, "xpu") and torch.xpu.is_available():
            device = "xpu"
        elif torch.backends.mps.is_available():
            device = "mps"
        else:
            return None
    device = torch.device(device)
    if device.type == "cpu":
        return None
    if gpu_id is not None:
        device = torch.device(device.type, gpu_id)
    elif device.index is None and device.type == "cuda":
        device = torch.device("cuda", 0)
    return device


class _OffloadState:
    def __init__(self, device: torch.device):
        self.device = device
        self.resident: nn.Module | None = None
        self.undo: list[Any] = []

    def bring(self, module: nn.Module) -> None:
        if self.resident is module:
            return
        if self.resident is not None:
            self.resident.to("cpu")
        module.to(self.device)
        self.resident = module


def enable(pipeline: Any, gpu_id: int | None = None, device: str | torch.device | None = None) -> None:
    disable(pipeline)
    target = _accelerator(gpu_id, device)
    if target is None:
        logger.info("enable_model_cpu_offload: no accelerator found, models stay on the CPU")
        return
    state = _OffloadState(target)
    for name, module in pipeline._modules():
        if name in getattr(pipeline, "_exclude_from_cpu_offload", ()):
            module.to(target)
            continue
        module.to("cpu")
        handle = module.register_forward_pre_hook(lambda mod, args, state=state: state.bring(mod))
        state.undo.append(handle.remove)
        for method_name in _ENTRY_POINTS:
            original = getattr(module, method_name, None)
            if callable(original) and not isinstance(original, nn.Module):
                setattr(module, method_name, _onloading(original, module, state))
                state.undo.append(functools.partial(_restore, module, method_name))
    object.__setattr__(pipeline, "_offload_state", state)


def _onloading(method, module: nn.Module, state: _OffloadState):
    @functools.wraps(method)
    def wrapper(*args, **kwargs):
        state.bring(module)
        return method(*args, **kwargs)

    return wrapper


def _restore(module: nn.Module, method_name: str) -> None:
    module.__dict__.pop(method_name, None)


def disable(pipeline: Any) -> None:
    state = pipeline.__dict__.get("_offload_state")
    if state is None:
        return
    for undo in state.undo:
        undo()
    object.__setattr__(pipeline, "_offload_state", None)


def release_all(pipeline: Any) -> None:
    """After a call: send the last model back to the CPU."""
    state = pipeline.__dict__.get("_offload_state")
    if state is not None and state.resident is not None:
        state.resident.to("cpu")
        state.resident = None


def execution_device(pipeline: Any) -> torch.device | None:
    state = pipeline.__dict__.get("_offload_state")
    return state.device if state is not None else None
