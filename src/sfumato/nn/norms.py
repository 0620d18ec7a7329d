"""Conditional normalisations: group norms whose scale and shift come from a condition.

* ``SpatialNorm`` (MoVQ, arXiv 2209.09002): the condition is the quantised latent ``zq``,
  resized to the feature map; 1x1 convs turn it into a per-pixel scale and shift.
  Used by the Kandinsky MoVQ decoder through ``ResnetBlock2D(time_embedding_norm="spatial")``
  and ``Attention(spatial_norm_dim=...)``.
* ``AdaGroupNorm``: the condition is a vector (e.g. a time embedding); a linear layer
  gives one scale and shift per channel.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .activations import get_activation


class SpatialNorm(nn.Module):
    """``GroupNorm(f) * conv_y(zq) + conv_b(zq)`` with ``zq`` resized (nearest) to the size of ``f``."""

    def __init__(self, f_channels: int, zq_channels: int):
        super().__init__()
        self.norm_layer = nn.GroupNorm(num_channels=f_channels, num_groups=32, eps=1e-6, affine=True)
        self.conv_y = nn.Conv2d(zq_channels, f_channels, kernel_size=1)
        self.conv_b = nn.Conv2d(zq_channels, f_channels, kernel_size=1)

    def forward(self, f: torch.Tensor, zq: torch.Tensor) -> torch.Tensor:
        zq = F.interpolate(zq, size=f.shape[-2:], mode="nearest")
        return self.norm_layer(f) * self.conv_y(zq) + self.conv_b(zq)


class AdaGroupNorm(nn.Module):
    """Affine-free group norm followed by ``x * (1 + scale) + shift``, scale and shift from an embedding."""

    def __init__(self, embedding_dim: int, out_dim: int, num_groups: int, act_fn: str | None = None,
                 eps: float = 1e-5):
        super().__init__()
        self.num_groups = num_groups
        self.eps = eps
        self.act = get_activation(act_fn) if act_fn is not None else None
        self.linear = nn.Linear(embedding_dim, out_dim * 2)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        if self.act is not None:
            emb = self.act(emb)
        scale, shift = self.linear(emb)[:, :, None, None].chunk(2, dim=1)
        return F.group_norm(x, self.num_groups, eps=self.eps) * (1 + scale) + shift
