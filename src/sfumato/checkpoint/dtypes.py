"""Turning what users write for a dtype (``torch.float16``, ``"fp16"``, a dict per component) into a dtype."""

from __future__ import annotations

from typing import Any

import torch

from .errors import CheckpointError

_NAMES = {
    "float32": torch.float32, "fp32": torch.float32, "float": torch.float32,
    "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float64": torch.float64, "fp64": torch.float64, "double": torch.float64,
}


def parse_dtype(value: Any, argument: str = "torch_dtype") -> torch.dtype | None:
    """``None`` stays ``None``; a floating torch dtype or one of its names becomes that dtype."""
    if value is None or isinstance(value, torch.dtype) and value.is_floating_point:
        return value
    if isinstance(value, str):
        key = value.lower().removeprefix("torch.")
        if key in _NAMES:
            return _NAMES[key]
    raise CheckpointError(
        f"{argument} must be a floating torch dtype or one of {sorted(set(_NAMES))}, got {value!r}"
    )


def dtype_for(component: str, torch_dtype: Any) -> torch.dtype | None:
    """The dtype for one pipeline component, ``torch_dtype`` being one dtype or a dict per component."""
    if isinstance(torch_dtype, dict):
        value = torch_dtype.get(component, torch_dtype.get("default"))
        return parse_dtype(value, f"torch_dtype[{component!r}]")
    return parse_dtype(torch_dtype)


def available_device(device: str | torch.device) -> torch.device:
    """``device`` as a ``torch.device``, refused with a clear error when this machine has no such device."""
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise ValueError(f"{device!r} is not a device ({error}); use e.g. 'cpu' or 'cuda'") from None
    backend = getattr(torch, device.type, None) if device.type not in ("cpu", "meta") else None
    if backend is not None and hasattr(backend, "is_available") and not backend.is_available():
        raise ValueError(f"{str(device)!r}: this PyTorch build or machine has no {device.type} device; use 'cpu'")
    return device
