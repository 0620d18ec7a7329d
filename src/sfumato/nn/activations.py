"""Activation functions named by the strings that checkpoint configs use (``"silu"``, ``"gelu"``, ...).

Also the gated feed-forward input layers of transformer blocks (``GELU``, ``GEGLU``,
``ApproximateGELU``): a linear projection fused with its activation, whose weight
lives at ``<name>.proj`` as in the reference checkpoints.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# config string -> activation module; "swish" is the older name of SiLU
_ACTIVATIONS: dict[str, type[nn.Module]] = {
    "swish": nn.SiLU,
    "silu": nn.SiLU,
    "mish": nn.Mish,
    "gelu": nn.GELU,
    "relu": nn.ReLU,
}


def get_activation(name: str) -> nn.Module:
    """Return a fresh activation module for a config string such as ``"silu"`` (case-insensitive)."""
    if not isinstance(name, str) or name.lower() not in _ACTIVATIONS:
        raise ValueError(f"activation {name!r} is not supported; use one of {sorted(_ACTIVATIONS)}")
    return _ACTIVATIONS[name.lower()]()


class GELU(nn.Module):
    """Linear projection followed by GELU (``approximate="tanh"`` for the tanh form)."""

    def __init__(self, dim_in: int, dim_out: int, approximate: str = "none", bias: bool = True):
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out, bias=bias)
        self.approximate = approximate

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.proj(hidden_states), approximate=self.approximate)


class GEGLU(nn.Module):
    """Gated GELU (arXiv 2002.05202): one projection to twice the width, half gates the other half."""

    def __init__(self, dim_in: int, dim_out: int, bias: bool = True):
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out * 2, bias=bias)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        hidden_states, gate = self.proj(hidden_states).chunk(2, dim=-1)
        return hidden_states * F.gelu(gate)


class ApproximateGELU(nn.Module):
    """Linear projection followed by the sigmoid approximation ``x * sigmoid(1.702 x)`` of GELU."""

    def __init__(self, dim_in: int, dim_out: int, bias: bool = True):
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out, bias=bias)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        hidden_states = self.proj(hidden_states)
        return hidden_states * torch.sigmoid(1.702 * hidden_states)
