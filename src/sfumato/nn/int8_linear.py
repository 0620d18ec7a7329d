"""The fast CPU mode's int8 linear layers, for CPUs with fast int8 dot products (VNNI).

The same scheme as :mod:`sfumato.nn.int8_conv`: weights quantized once, one
symmetric scale per output feature, packed for oneDNN; the input quantized to
uint8 at every call over its own range, per picture (nothing calibrated), or left in its
own dtype when outliers would make the step coarse. On a 2-core Zen 4 it is
1.4-1.9x bf16's ``F.linear`` on a Kandinsky 2.2 UNet's attention shapes
((2048, 768) x (768, 768): 6.1 -> 3.8 ms), with ~1% rounding error on Gaussian inputs.
"""

from __future__ import annotations

import torch
from torch import nn

from . import int8_conv
from .int8_conv import quantize_input, quantize_weight
from .batching import per_picture
from .swap import qualifying_layers, restore_layers, swap_layers

# fewer multiply-adds than this (a time embedding's few rows): the plain layer
MIN_MULTIPLICATIONS = 10_000_000


def available() -> bool:
    """True when this PyTorch build has oneDNN's int8 linear layer."""
    try:
        return torch.backends.mkldnn.is_available() and hasattr(torch.ops.onednn, "qlinear_pointwise")
    except (AttributeError, RuntimeError):
        return False


def qualifies(linear: nn.Module) -> bool:
    return (type(linear) in (nn.Linear, Int8Linear)
            and min(linear.in_features, linear.out_features) >= int8_conv.MIN_CHANNELS)


class Int8Linear(nn.Linear):
    """An ``nn.Linear`` whose CPU inference quantizes its input to uint8 and runs oneDNN's int8 product with
    weights quantized per output feature; training, other devices and small work run the plain layer."""

    _int8: tuple | None = None

    def prepare(self, quantized: tuple[torch.Tensor, torch.Tensor] | None = None) -> None:
        """Quantize and pack the weights as they are now, or pack ``quantized``: what :func:`quantize_weight`
        makes of them (the fast mode reads them from its kept copy)."""
        quantized, scale = quantize_weight(self.weight) if quantized is None else quantized
        packed = torch.ops.onednn.qlinear_prepack(quantized, None)
        bias = None if self.bias is None else self.bias.detach().float()
        self._int8 = (packed, scale, torch.zeros(self.out_features, dtype=torch.int64), bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (self._int8 is None or x.dim() < 2 or x.device.type != "cpu"
                or x.dtype not in (torch.float32, torch.bfloat16)
                or torch.is_grad_enabled() and (x.requires_grad or self.weight.requires_grad)):
            return super().forward(x)
        return per_picture(x, self._forward_picture)

    def _forward_picture(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.numel() // self.in_features
        if rows * self.in_features * self.out_features < MIN_MULTIPLICATIONS:
            return super().forward(x)
        quantized = quantize_input(x.reshape(rows, self.in_features), int8_conv.MAX_INPUT_ERROR)
        if quantized is None:  # a few outliers set the range: too coarse for the rest
            return super().forward(x)
        quantized, scale, zero_point = quantized
        packed, weight_scale, weight_zero, bias = self._int8
        out = torch.ops.onednn.qlinear_pointwise(quantized, scale, zero_point, packed, weight_scale, weight_zero,
                                                 bias, 1.0, 0, x.dtype, "none", [], "")
        return out.reshape(*x.shape[:-1], self.out_features)


def to_convert(model: nn.Module) -> list[str]:
    """The names of the linear layers :func:`use_int8_linears` would turn into :class:`Int8Linear`."""
    return qualifying_layers(model, nn.Linear, qualifies) if available() else []


def use_int8_linears(model: nn.Module, quantized: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None) -> int:
    """Turn every qualifying ``nn.Linear`` of ``model`` into a prepared :class:`Int8Linear` (from
    ``quantized[name]``, :func:`quantize_weight`'s result, where given); returns how many."""
    return swap_layers(model, nn.Linear, Int8Linear, qualifies, quantized) if available() else 0


def stop_int8_linears(model: nn.Module) -> None:
    """Undo :func:`use_int8_linears`: plain linear layers again, the packed weights dropped."""
    restore_layers(model, Int8Linear, nn.Linear, drop=("_int8",))


__all__ = ["Int8Linear", "available", "qualifies", "stop_int8_linears", "to_convert", "use_int8_linears"]
