"""The fast CPU mode's fp32 linear layers on AMD CPUs: oneDNN's matrix product instead of MKL's.

PyTorch's ``F.linear`` in fp32 on a CPU is MKL's sgemm, which on AMD CPUs does
not run its AVX-512 kernels and repacks the weights at every call. oneDNN,
which PyTorch also ships, picks its kernels by the CPU's instruction sets, not
its vendor. Measured on a 2-core AMD EPYC (Zen 4, AVX-512), fp32, 20 calls
each: the full-size Kandinsky 2.2 prior's shapes (162 rows: two prompts of 81
tokens) (162 x 2048) @ (2048 x 8192) 107-124 GFLOP/s with ``F.linear``, 196 with
oneDNN; (162 x 8192) @ (8192 x 2048) 106-161 -> 167; its CLIP ViT-bigG image
encoder's (257 x 1664) @ (1664 x 8192) 117 -> 174; a UNet's (8192 x 320) @
(320 x 1280) 101-139 -> 145; few rows gain most ((2 x 2048) @ (2048 x 2048):
1.35 ms -> 0.22 ms). A full-size prior step: 2.42-2.44 -> 1.69-1.75 s.

oneDNN reads the layer's own weights at every call: nothing is copied or
packed ahead (a copy in oneDNN's blocked layout gained another ~5% per prior
step for as much memory again as the weights: 4 GB for the 2.2 prior), so
weights changed in place or replaced are simply used. Both products round as
fp32 products do (~1e-6 of the output's size against float64; the summation
order differs), so this is for the fast mode, not the parity mode.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .swap import restore_layers, swap_layers

# fewer multiply-adds than this (a time embedding's one row): the plain layer (oneDNN's call costs ~10 us more)
MIN_MULTIPLICATIONS = 1_000_000


def available() -> bool:
    """True when this PyTorch build has oneDNN's fp32 linear layer."""
    try:
        return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")
    except (AttributeError, RuntimeError):
        return False


def qualifies(linear: nn.Module) -> bool:
    return type(linear) in (nn.Linear, OnednnLinear) and linear.weight.dtype == torch.float32


class OnednnLinear(nn.Linear):
    """An ``nn.Linear`` whose fp32 CPU inference runs oneDNN's product; training, other devices and dtypes,
    and small work run the plain layer."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight, bias = self.weight, self.bias
        if (x.dtype != torch.float32 or weight.dtype != torch.float32 or x.device.type != "cpu"
                or weight.device.type != "cpu" or x.dim() < 2
                or torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad)
                or x.numel() * self.out_features < MIN_MULTIPLICATIONS):
            return F.linear(x, weight, bias)
        return torch.ops.mkldnn._linear_pointwise(x, weight.detach(), None if bias is None else bias.detach(),
                                                  "none", [], "")


def use_onednn_linears(model: nn.Module) -> int:
    """Turn every fp32 ``nn.Linear`` of ``model`` into an :class:`OnednnLinear`; returns how many."""
    return swap_layers(model, nn.Linear, OnednnLinear, qualifies) if available() else 0


def stop_onednn_linears(model: nn.Module) -> None:
    """Undo :func:`use_onednn_linears`: plain linear layers again."""
    restore_layers(model, OnednnLinear, nn.Linear)


__all__ = ["OnednnLinear", "available", "qualifies", "stop_onednn_linears", "use_onednn_linears"]
