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
from .layout import memory_format_of

# ``SpatialNorm`` always uses 32 groups, whatever the model's ``norm_num_groups``
SPATIAL_NORM_GROUPS = 32


def _can_overwrite(tensor: torch.Tensor) -> bool:
    """True when an in-place op on ``tensor`` cannot break autograd (inference, or nothing to track)."""
    return not (torch.is_grad_enabled() and tensor.requires_grad)


class SpatialNorm(nn.Module):
    """MoVQ's normalisation (arXiv 2209.09002): ``GroupNorm(f) * conv_y(zq) + conv_b(zq)``.

    ``zq`` (the quantised latents) is resized to the size of ``f`` by nearest
    neighbour. Because the convs are 1x1, ``conv(resize(zq)) == resize(conv(zq))``:
    we convolve at latent resolution and, when ``f`` is a power-of-two multiple
    of ``zq`` (always, inside the decoder), broadcast each latent pixel's scale and
    shift over its block of ``f`` rather than building full-size maps. The group
    norm's own affine parameters are folded into that scale and shift, so the
    full-size tensor is written twice (normalise, modulate) instead of five times.
    """

    def __init__(self, f_channels: int, zq_channels: int):
        super().__init__()
        self.norm_layer = nn.GroupNorm(num_channels=f_channels, num_groups=SPATIAL_NORM_GROUPS, eps=1e-6,
                                       affine=True)
        self.conv_y = nn.Conv2d(zq_channels, f_channels, kernel_size=1)
        self.conv_b = nn.Conv2d(zq_channels, f_channels, kernel_size=1)

    def forward(self, f: torch.Tensor, zq: torch.Tensor) -> torch.Tensor:
        norm = self.norm_layer
        normalised = F.group_norm(f, norm.num_groups, eps=norm.eps)
        # Broadcast elementwise ops are several times slower when operands differ in memory
        # layout: compute scale and shift in the layout of the normalised features.
        zq = zq.contiguous(memory_format=memory_format_of(normalised))
        # (normalised * g + b) * y + c  ==  normalised * (g * y) + (b * y + c)
        scale = self.conv_y(zq)
        shift = torch.addcmul(self.conv_b(zq), scale, norm.bias[:, None, None])
        scale = scale * norm.weight[:, None, None]
        return _modulate(normalised, scale, shift)


def _modulate(features: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """``features * up(scale) + up(shift)``, ``up`` being nearest resizing to the size of ``features``.

    ``features`` is overwritten when autograd allows. ``scale`` and ``shift`` have
    the memory layout of ``features``.
    """
    batch, channels, height, width = features.shape
    low_height, low_width = scale.shape[-2:]
    ratio_h, ratio_w = height // low_height, width // low_width
    whole_blocks = (
        ratio_h * low_height == height and ratio_w * low_width == width
        # nearest resizing copies each source pixel to a whole block only when 1/ratio is exact in float
        and ratio_h & (ratio_h - 1) == 0 and ratio_w & (ratio_w - 1) == 0
    )
    if not whole_blocks:
        scale = F.interpolate(scale, size=(height, width), mode="nearest")
        shift = F.interpolate(shift, size=(height, width), mode="nearest")
        blocks = per_block = (batch, channels, height, width)
    elif memory_format_of(features) == torch.channels_last:
        # channels are innermost: a (ratio_h x ratio_w) block of pixels shares one scale vector
        blocks = (batch, channels, low_height, ratio_h, low_width, ratio_w)
        per_block = (batch, channels, low_height, 1, low_width, 1)
    else:
        # width is innermost: widen scale and shift along it (a small copy, 1/ratio_h of the
        # features) so the inner loops stay long, and share each row among ratio_h rows
        if ratio_w > 1:
            scale = scale.repeat_interleave(ratio_w, dim=-1)
            shift = shift.repeat_interleave(ratio_w, dim=-1)
        blocks = (batch, channels, low_height, ratio_h, width)
        per_block = (batch, channels, low_height, 1, width)
    scale, shift = scale.reshape(per_block), shift.reshape(per_block)
    if _can_overwrite(features):
        features.view(blocks).mul_(scale).add_(shift)
        return features
    return torch.addcmul(shift, features.view(blocks), scale).reshape(batch, channels, height, width)


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
