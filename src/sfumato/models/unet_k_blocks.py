"""The k-diffusion stages of the latent upscaler's UNet (``stabilityai/sd-x2-latent-upscaler``).

Katherine Crowson's upscaler UNet differs from the Stable Diffusion stages in four ways,
and each stage here is named as in the reference's configs (``KDownBlock2D``,
``KCrossAttnDownBlock2D``, ``KCrossAttnUpBlock2D``, ``KUpBlock2D``):

* every norm is an ``AdaGroupNorm`` driven by the time vector (resnets with
  ``time_embedding_norm="ada_group"``, one group per 32 channels, bias-free shortcuts);
* attention (``KAttentionBlock``) is a norm + attention pair without a feed-forward:
  optional self-attention, then cross-attention to layer-normed text tokens;
* resampling is a fixed, parameter-free [1, 3, 3, 1] / 8 blur with stride 2
  (``KDownsample2D`` / ``KUpsample2D``);
* a down stage hands its output after *every* layer to the skip list, but an up stage
  concatenates only the last skip it receives, once, before its first layer. The lowest
  stage (no downsampler) hands ``None`` skips, so the first up stage concatenates nothing.

Stages register ``resnets`` before ``attentions`` (the reverse of the Stable Diffusion
stages), as the reference does, so state dicts come in the same order.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..nn.attention import Attention
from ..nn.norms import AdaGroupNorm
from ..nn.resnet import ResnetBlockCondNorm2D

# ---------------------------------------------------------------------------
# resampling


def _blur_kernel(channels: int, scale: float, like: torch.Tensor) -> torch.Tensor:
    """The separable [1, 3, 3, 1] / 8 kernel (times ``scale``), one copy per channel for a depthwise conv."""
    taps = torch.tensor([1 / 8, 3 / 8, 3 / 8, 1 / 8], dtype=like.dtype, device=like.device) * scale
    return torch.outer(taps, taps).expand(channels, 1, 4, 4)


class KDownsample2D(nn.Module):
    """Halve the size with a reflect-padded [1, 3, 3, 1] / 8 blur, stride 2; no weights."""

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        channels = hidden_states.shape[1]
        hidden_states = F.pad(hidden_states, (1, 1, 1, 1), mode="reflect")
        # per-channel (depthwise) conv: the reference's dense diagonal weight gives the same sums
        return F.conv2d(hidden_states, _blur_kernel(channels, 1.0, hidden_states), stride=2, groups=channels)


class KUpsample2D(nn.Module):
    """Double the size with a transposed [1, 3, 3, 1] / 4 blur, stride 2, on a reflect-padded input; no weights."""

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        channels = hidden_states.shape[1]
        hidden_states = F.pad(hidden_states, (1, 1, 1, 1), mode="reflect")
        return F.conv_transpose2d(hidden_states, _blur_kernel(channels, 2.0, hidden_states), stride=2, padding=3,
                                  groups=channels)


# ---------------------------------------------------------------------------
# attention


class KAttentionBlock(nn.Module):
    """Optional self-attention, then cross-attention, each after an ``AdaGroupNorm``; no feed-forward.

    Weights: ``norm1`` / ``attn1`` (self-attention, only with ``add_self_attention``) and
    ``norm2`` / ``attn2`` (cross-attention to ``encoder_hidden_states``).
    """

    def __init__(self, dim: int, num_attention_heads: int, attention_head_dim: int, dropout: float = 0.0,
                 cross_attention_dim: int | None = None, attention_bias: bool = False,
                 upcast_attention: bool = False, temb_channels: int = 768, add_self_attention: bool = False,
                 cross_attention_norm: str | None = None, group_size: int = 32):
        super().__init__()
        self.add_self_attention = add_self_attention
        groups = max(1, dim // group_size)
        if add_self_attention:
            self.norm1 = AdaGroupNorm(temb_channels, dim, groups)
            self.attn1 = Attention(query_dim=dim, heads=num_attention_heads, dim_head=attention_head_dim,
                                   dropout=dropout, bias=attention_bias)
        self.norm2 = AdaGroupNorm(temb_channels, dim, groups)
        self.attn2 = Attention(query_dim=dim, cross_attention_dim=cross_attention_dim, heads=num_attention_heads,
                               dim_head=attention_head_dim, dropout=dropout, bias=attention_bias,
                               upcast_attention=upcast_attention, cross_attention_norm=cross_attention_norm)

    @staticmethod
    def _attend(norm: AdaGroupNorm, attention: Attention, hidden_states: torch.Tensor, emb: torch.Tensor,
                encoder_hidden_states: torch.Tensor | None, mask: torch.Tensor | None,
                cross_attention_kwargs: dict[str, Any]) -> torch.Tensor:
        """``hidden_states + attention(norm(hidden_states))`` over the feature map's pixels as tokens."""
        batch, _, height, width = hidden_states.shape
        tokens = norm(hidden_states, emb).permute(0, 2, 3, 1).reshape(batch, height * width, -1)
        attended = attention(tokens, encoder_hidden_states=encoder_hidden_states, attention_mask=mask,
                             **cross_attention_kwargs)
        return attended.permute(0, 2, 1).reshape(batch, -1, height, width) + hidden_states

    def forward(self, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                emb: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                cross_attention_kwargs: dict[str, Any] | None = None,
                encoder_attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        cross_attention_kwargs = cross_attention_kwargs or {}
        if self.add_self_attention:
            hidden_states = self._attend(self.norm1, self.attn1, hidden_states, emb, None, attention_mask,
                                         cross_attention_kwargs)
        # without condition tokens attn2 attends to the image itself, under the image's mask
        mask = attention_mask if encoder_hidden_states is None else encoder_attention_mask
        return self._attend(self.norm2, self.attn2, hidden_states, emb, encoder_hidden_states, mask,
                            cross_attention_kwargs)


# ---------------------------------------------------------------------------
# stages


def _k_resnet(in_channels: int, out_channels: int, temb_channels: int, eps: float, act_fn: str, dropout: float,
              group_size: int, conv_2d_out_channels: int | None = None) -> ResnetBlockCondNorm2D:
    return ResnetBlockCondNorm2D(
        in_channels=in_channels, out_channels=out_channels, conv_2d_out_channels=conv_2d_out_channels,
        temb_channels=temb_channels, groups=in_channels // group_size, groups_out=out_channels // group_size,
        eps=eps, non_linearity=act_fn, dropout=dropout, time_embedding_norm="ada_group", conv_shortcut_bias=False,
    )


def _k_attention(channels: int, attention_head_dim: int, cross_attention_dim: int, temb_channels: int,
                 add_self_attention: bool, group_size: int = 32, upcast_attention: bool = False) -> KAttentionBlock:
    return KAttentionBlock(channels, channels // attention_head_dim, attention_head_dim,
                           cross_attention_dim=cross_attention_dim, temb_channels=temb_channels, attention_bias=True,
                           add_self_attention=add_self_attention, cross_attention_norm="layer_norm",
                           group_size=group_size, upcast_attention=upcast_attention)


class _KStage(nn.Module):
    """resnet (-> ``KAttentionBlock``) per layer; ``_layers`` runs them."""

    has_cross_attention = False
    # K upsamplers always double the size: they cannot follow odd skip sizes
    follows_skip_sizes = False
    factory_keys: frozenset[str] = frozenset()

    def _layers(self, hidden_states: torch.Tensor, temb: torch.Tensor | None, attention: dict[str, Any],
                skips: list | None = None) -> torch.Tensor:
        attentions = getattr(self, "attentions", None)
        for index, resnet in enumerate(self.resnets):
            hidden_states = resnet(hidden_states, temb)
            if attentions is not None:
                hidden_states = attentions[index](hidden_states, emb=temb, **attention)
            if skips is not None:
                skips.append(hidden_states)
        return hidden_states


class _KDownStage(_KStage):
    """Layers (each output a skip), then the optional downsampler, whose output is not a skip."""

    # the lowest cross-attention stage hands None skips: the first up stage concatenates nothing
    skips_at_lowest_are_none = False

    def forward(self, hidden_states: torch.Tensor, temb: torch.Tensor | None = None,
                encoder_hidden_states: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                cross_attention_kwargs: dict[str, Any] | None = None,
                encoder_attention_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, tuple]:
        attention = dict(encoder_hidden_states=encoder_hidden_states, attention_mask=attention_mask,
                         cross_attention_kwargs=cross_attention_kwargs, encoder_attention_mask=encoder_attention_mask)
        skips: list = []
        hidden_states = self._layers(hidden_states, temb, attention, skips)
        if self.downsamplers is not None:
            hidden_states = self.downsamplers[0](hidden_states)
        elif self.skips_at_lowest_are_none:
            skips = [None] * len(skips)
        return hidden_states, tuple(skips)


class KDownBlock2D(_KDownStage):
    """Ada-group-norm resnets, then an optional blur downsampler (the upscaler's first stage)."""

    factory_keys = frozenset({"num_layers", "in_channels", "out_channels", "temb_channels", "dropout",
                              "add_downsample", "resnet_eps", "resnet_act_fn"})

    def __init__(self, in_channels: int, out_channels: int, temb_channels: int, dropout: float = 0.0,
                 num_layers: int = 4, resnet_eps: float = 1e-5, resnet_act_fn: str = "gelu",
                 resnet_group_size: int = 32, add_downsample: bool = False):
        super().__init__()
        self.resnets = nn.ModuleList([
            _k_resnet(in_channels if i == 0 else out_channels, out_channels, temb_channels, resnet_eps,
                      resnet_act_fn, dropout, resnet_group_size)
            for i in range(num_layers)
        ])
        self.downsamplers = nn.ModuleList([KDownsample2D()]) if add_downsample else None


class KCrossAttnDownBlock2D(_KDownStage):
    """Ada-group-norm resnets each followed by a ``KAttentionBlock``, then an optional blur downsampler.

    The UNet gives the lowest stage (no downsampler) self-attention too; its skips are ``None``.
    """

    has_cross_attention = True
    skips_at_lowest_are_none = True
    factory_keys = frozenset({"num_layers", "in_channels", "out_channels", "temb_channels", "dropout",
                              "add_downsample", "resnet_eps", "resnet_act_fn", "cross_attention_dim",
                              "attention_head_dim", "add_self_attention"})

    def __init__(self, in_channels: int, out_channels: int, temb_channels: int, cross_attention_dim: int,
                 dropout: float = 0.0, num_layers: int = 4, resnet_group_size: int = 32, add_downsample: bool = True,
                 attention_head_dim: int = 64, add_self_attention: bool = False, resnet_eps: float = 1e-5,
                 resnet_act_fn: str = "gelu"):
        super().__init__()
        self.resnets = nn.ModuleList([
            _k_resnet(in_channels if i == 0 else out_channels, out_channels, temb_channels, resnet_eps,
                      resnet_act_fn, dropout, resnet_group_size)
            for i in range(num_layers)
        ])
        self.attentions = nn.ModuleList([
            _k_attention(out_channels, attention_head_dim, cross_attention_dim, temb_channels, add_self_attention,
                         group_size=resnet_group_size)
            for _ in range(num_layers)
        ])
        self.downsamplers = nn.ModuleList([KDownsample2D()]) if add_downsample else None


class _KUpStage(_KStage):
    """The last skip concatenated once, layers, then the optional upsampler (``upsample_size`` is ignored)."""

    def forward(self, hidden_states: torch.Tensor, res_hidden_states_tuple: tuple, temb: torch.Tensor | None = None,
                encoder_hidden_states: torch.Tensor | None = None, upsample_size: Any = None,
                attention_mask: torch.Tensor | None = None, cross_attention_kwargs: dict[str, Any] | None = None,
                encoder_attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        skip = res_hidden_states_tuple[-1]  # only the last of this stage's skips is used
        if skip is not None:
            hidden_states = torch.cat([hidden_states, skip], dim=1)
        attention = dict(encoder_hidden_states=encoder_hidden_states, attention_mask=attention_mask,
                         cross_attention_kwargs=cross_attention_kwargs, encoder_attention_mask=encoder_attention_mask)
        hidden_states = self._layers(hidden_states, temb, attention)
        if self.upsamplers is not None:
            hidden_states = self.upsamplers[0](hidden_states)
        return hidden_states


class KUpBlock2D(_KUpStage):
    """The last skip concatenated, ada-group-norm resnets narrowing to ``in_channels``, optional blur upsampler.

    ``num_layers`` counts one more than the resnets built, as the UNet passes
    ``layers_per_block + 1`` to every up stage.
    """

    factory_keys = frozenset({"num_layers", "in_channels", "out_channels", "temb_channels", "resolution_idx",
                              "dropout", "add_upsample", "resnet_eps", "resnet_act_fn"})

    def __init__(self, in_channels: int, out_channels: int, temb_channels: int, resolution_idx: int,
                 dropout: float = 0.0, num_layers: int = 5, resnet_eps: float = 1e-5, resnet_act_fn: str = "gelu",
                 resnet_group_size: int | None = 32, add_upsample: bool = True):
        super().__init__()
        self.resolution_idx = resolution_idx
        count = num_layers - 1
        self.resnets = nn.ModuleList([
            _k_resnet(2 * out_channels if i == 0 else out_channels, in_channels if i == count - 1 else out_channels,
                      temb_channels, resnet_eps, resnet_act_fn, dropout, resnet_group_size)
            for i in range(count)
        ])
        self.upsamplers = nn.ModuleList([KUpsample2D()]) if add_upsample else None


class KCrossAttnUpBlock2D(_KUpStage):
    """The last skip concatenated, then ada-group-norm resnets each followed by a ``KAttentionBlock``.

    Which of the upscaler's stages this is follows from its widths, as in the reference:
    the *first* stage (``in_channels == out_channels == temb_channels``) takes no skip and
    adds self-attention; a *middle* stage (``in_channels != out_channels``) narrows to
    ``in_channels`` in its last resnet's second conv (and attention).
    """

    has_cross_attention = True
    factory_keys = frozenset({"num_layers", "in_channels", "out_channels", "temb_channels", "resolution_idx",
                              "dropout", "add_upsample", "resnet_eps", "resnet_act_fn", "cross_attention_dim",
                              "attention_head_dim"})

    def __init__(self, in_channels: int, out_channels: int, temb_channels: int, resolution_idx: int,
                 dropout: float = 0.0, num_layers: int = 4, resnet_eps: float = 1e-5, resnet_act_fn: str = "gelu",
                 resnet_group_size: int = 32, attention_head_dim: int = 1, cross_attention_dim: int = 768,
                 add_upsample: bool = True, upcast_attention: bool = False):
        super().__init__()
        self.resolution_idx = resolution_idx
        self.attention_head_dim = attention_head_dim
        is_first = in_channels == out_channels == temb_channels
        narrows = in_channels != out_channels
        count = num_layers - 1
        resnets, attentions = [], []
        for i in range(count):
            last = i == count - 1
            width_in = (out_channels if is_first else 2 * out_channels) if i == 0 else out_channels
            resnets.append(_k_resnet(width_in, out_channels, temb_channels, resnet_eps, resnet_act_fn, dropout,
                                     resnet_group_size,
                                     conv_2d_out_channels=in_channels if narrows and last else None))
            attentions.append(_k_attention(in_channels if last else out_channels, attention_head_dim,
                                           cross_attention_dim, temb_channels, add_self_attention=is_first,
                                           upcast_attention=upcast_attention))
        self.resnets = nn.ModuleList(resnets)
        self.attentions = nn.ModuleList(attentions)
        self.upsamplers = nn.ModuleList([KUpsample2D()]) if add_upsample else None
