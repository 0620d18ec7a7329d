"""The stages of a 2D UNet, chosen by name from a checkpoint's config.

A down stage is ``num_layers`` resnet blocks, each optionally followed by an attention
layer, then an optional 2x downsampler; it returns its output and every intermediate
state (the skip connections). An up stage consumes those skips in reverse, concatenating
one to its input before each resnet block, then optionally upsamples 2x. A mid stage is
a resnet block followed by (attention, resnet) pairs at the lowest resolution.

The named stages differ only in which attention and which resampler they use:

====================================  ===========================  ===============================
stage                                 attention                    resampler
====================================  ===========================  ===============================
``DownBlock2D`` / ``UpBlock2D``       none                         conv / nearest + conv
``ResnetDownsampleBlock2D`` /         none                         resnet block with down / up
``ResnetUpsampleBlock2D``
``SimpleCrossAttnDownBlock2D`` /      ``Attention`` with added     resnet block with down / up
``SimpleCrossAttnUpBlock2D``          key/value projections
``CrossAttnDownBlock2D`` /            ``Transformer2DModel``       conv / nearest + conv
``CrossAttnUpBlock2D``
``K*Block2D`` (``unet_k_blocks``)     ``KAttentionBlock``          fixed blur, stride 2
====================================  ===========================  ===============================

Kandinsky 2.x uses the resnet-resampling and simple-cross-attention stages with
``UNetMidBlock2DSimpleCrossAttn``; Stable Diffusion uses the plain and transformer
stages with ``UNetMidBlock2DCrossAttn``; the latent upscaler uses the k-diffusion
stages and no mid stage. ``get_down_block`` / ``get_mid_block`` /
``get_up_block`` build a stage from the UNet-level settings, passing each stage exactly
the settings the reference passes it (so configs mean the same thing here).

Stages register ``attentions`` before ``resnets`` (the k-diffusion stages the other way
round), as the reference does, so parameters (and hence state dicts and shard files) come
in the same order.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..nn.attention import Attention, AttnAddedKVProcessor2_0
from ..nn.resnet import ResnetBlock2D
from ..nn.sampling import Downsample2D, Upsample2D
from ..nn.transformer import Transformer2DModel
from .unet_k_blocks import KCrossAttnDownBlock2D, KCrossAttnUpBlock2D, KDownBlock2D, KUpBlock2D


# ---------------------------------------------------------------------------
# shared pieces


class _Resnets:
    """The resnet settings shared by every block of a stage; ``make`` builds one block."""

    def __init__(self, temb_channels: int | None, resnet_eps: float, resnet_act_fn: str, resnet_groups: int,
                 resnet_time_scale_shift: str, dropout: float, output_scale_factor: float = 1.0,
                 skip_time_act: bool = False):
        self.settings = dict(
            temb_channels=temb_channels, eps=resnet_eps, non_linearity=resnet_act_fn, groups=resnet_groups,
            time_embedding_norm=resnet_time_scale_shift, dropout=dropout, output_scale_factor=output_scale_factor,
            skip_time_act=skip_time_act,
        )

    def make(self, in_channels: int, out_channels: int, **extra: Any) -> ResnetBlock2D:
        return ResnetBlock2D(in_channels=in_channels, out_channels=out_channels, **self.settings, **extra)


def _simple_cross_attention(channels: int, attention_head_dim: int, cross_attention_dim: int, resnet_groups: int,
                            only_cross_attention: bool, cross_attention_norm: str | None) -> Attention:
    """The Kandinsky attention layer: image tokens attend to projected condition tokens and to themselves."""
    return Attention(
        query_dim=channels,
        cross_attention_dim=channels,
        heads=channels // attention_head_dim,
        dim_head=attention_head_dim,
        added_kv_proj_dim=cross_attention_dim,
        norm_num_groups=resnet_groups,
        bias=True,
        upcast_softmax=True,
        only_cross_attention=only_cross_attention,
        cross_attention_norm=cross_attention_norm,
        processor=AttnAddedKVProcessor2_0(),
    )


def _simple_attention_mask(attention_mask, encoder_hidden_states, encoder_attention_mask):
    """Mask for a simple cross-attention layer: ``attention_mask`` wins (unCLIP passes its condition mask there)."""
    if attention_mask is not None:
        return attention_mask
    return encoder_attention_mask if encoder_hidden_states is not None else None


class _Stage(nn.Module):
    """Common forward pieces: run one layer's attention, run a resampler."""

    has_cross_attention = False
    # the upsampler can take the skip's size (``upsample_size``), so odd sample sizes work
    follows_skip_sizes = True
    # UNet-level settings (``get_*_block`` keywords, after renaming) this stage accepts
    factory_keys: frozenset[str] = frozenset()

    def _attend(self, layer: nn.Module, hidden_states: torch.Tensor, encoder_hidden_states, attention_mask,
                encoder_attention_mask, cross_attention_kwargs) -> torch.Tensor:
        raise NotImplementedError

    @staticmethod
    def _resample(layer: nn.Module, hidden_states: torch.Tensor, temb, upsample_size=None) -> torch.Tensor:
        if isinstance(layer, ResnetBlock2D):
            return layer(hidden_states, temb)
        if isinstance(layer, Upsample2D):
            return layer(hidden_states, upsample_size)
        return layer(hidden_states)


class _SimpleCrossAttention:
    """Mixin: attention layers are added-key/value ``Attention`` (Kandinsky)."""

    has_cross_attention = True

    def _attend(self, layer, hidden_states, encoder_hidden_states, attention_mask, encoder_attention_mask,
                cross_attention_kwargs):
        mask = _simple_attention_mask(attention_mask, encoder_hidden_states, encoder_attention_mask)
        return layer(hidden_states, encoder_hidden_states=encoder_hidden_states, attention_mask=mask,
                     **(cross_attention_kwargs or {}))


class _TransformerCrossAttention:
    """Mixin: attention layers are ``Transformer2DModel`` (Stable Diffusion)."""

    has_cross_attention = True

    def _attend(self, layer, hidden_states, encoder_hidden_states, attention_mask, encoder_attention_mask,
                cross_attention_kwargs):
        return layer(hidden_states, encoder_hidden_states=encoder_hidden_states,
                     cross_attention_kwargs=cross_attention_kwargs, attention_mask=attention_mask,
                     encoder_attention_mask=encoder_attention_mask, return_dict=False)[0]


def _transformers(channels: int, num_layers: int, transformer_layers_per_block, num_attention_heads: int,
                  cross_attention_dim: int, norm_num_groups: int, use_linear_projection: bool,
                  only_cross_attention: bool, upcast_attention: bool, attention_type: str,
                  dual_cross_attention: bool) -> nn.ModuleList:
    """One spatial transformer per stage layer; ``transformer_layers_per_block`` may differ per layer."""
    if dual_cross_attention:
        raise NotImplementedError("dual_cross_attention=True (DualTransformer2DModel) is not supported")
    if isinstance(transformer_layers_per_block, int):
        transformer_layers_per_block = [transformer_layers_per_block] * num_layers
    return nn.ModuleList([
        Transformer2DModel(
            num_attention_heads, channels // num_attention_heads, in_channels=channels,
            num_layers=transformer_layers_per_block[i], cross_attention_dim=cross_attention_dim,
            norm_num_groups=norm_num_groups, use_linear_projection=use_linear_projection,
            only_cross_attention=only_cross_attention, upcast_attention=upcast_attention,
            attention_type=attention_type,
        )
        for i in range(num_layers)
    ])


# ---------------------------------------------------------------------------
# down stages


class _DownStage(_Stage):
    """resnet (-> attention) x num_layers, then an optional downsampler; returns (output, skip states)."""

    def forward(self, hidden_states: torch.Tensor, temb: torch.Tensor | None = None,
                encoder_hidden_states: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                cross_attention_kwargs: dict[str, Any] | None = None,
                encoder_attention_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        skips: tuple[torch.Tensor, ...] = ()
        attentions = getattr(self, "attentions", None)
        for index, resnet in enumerate(self.resnets):
            hidden_states = resnet(hidden_states, temb)
            if attentions is not None:
                hidden_states = self._attend(attentions[index], hidden_states, encoder_hidden_states,
                                             attention_mask, encoder_attention_mask, cross_attention_kwargs)
            skips += (hidden_states,)
        if self.downsamplers is not None:
            for downsampler in self.downsamplers:
                hidden_states = self._resample(downsampler, hidden_states, temb)
            skips += (hidden_states,)
        return hidden_states, skips


class DownBlock2D(_DownStage):
    """Resnet blocks, then a stride-2 conv (Stable Diffusion's lowest-resolution down stage)."""

    factory_keys = frozenset({"num_layers", "in_channels", "out_channels", "temb_channels", "dropout",
                              "add_downsample", "resnet_eps", "resnet_act_fn", "resnet_groups",
                              "downsample_padding", "resnet_time_scale_shift"})

    def __init__(self, in_channels: int, out_channels: int, temb_channels: int, dropout: float = 0.0,
                 num_layers: int = 1, resnet_eps: float = 1e-6, resnet_time_scale_shift: str = "default",
                 resnet_act_fn: str = "swish", resnet_groups: int = 32, resnet_pre_norm: bool = True,
                 output_scale_factor: float = 1.0, add_downsample: bool = True, downsample_padding: int = 1):
        super().__init__()
        resnets = _Resnets(temb_channels, resnet_eps, resnet_act_fn, resnet_groups, resnet_time_scale_shift,
                           dropout, output_scale_factor)
        self.resnets = nn.ModuleList(
            [resnets.make(in_channels if i == 0 else out_channels, out_channels) for i in range(num_layers)]
        )
        self.downsamplers = nn.ModuleList(
            [Downsample2D(out_channels, use_conv=True, out_channels=out_channels, padding=downsample_padding,
                          name="op")]
        ) if add_downsample else None


class ResnetDownsampleBlock2D(_DownStage):
    """Resnet blocks, then a resnet block that downsamples (Kandinsky's first down stage)."""

    factory_keys = frozenset({"num_layers", "in_channels", "out_channels", "temb_channels", "dropout",
                              "add_downsample", "resnet_eps", "resnet_act_fn", "resnet_groups",
                              "resnet_time_scale_shift", "skip_time_act", "output_scale_factor"})

    def __init__(self, in_channels: int, out_channels: int, temb_channels: int, dropout: float = 0.0,
                 num_layers: int = 1, resnet_eps: float = 1e-6, resnet_time_scale_shift: str = "default",
                 resnet_act_fn: str = "swish", resnet_groups: int = 32, resnet_pre_norm: bool = True,
                 output_scale_factor: float = 1.0, add_downsample: bool = True, skip_time_act: bool = False):
        super().__init__()
        resnets = _Resnets(temb_channels, resnet_eps, resnet_act_fn, resnet_groups, resnet_time_scale_shift,
                           dropout, output_scale_factor, skip_time_act)
        self.resnets = nn.ModuleList(
            [resnets.make(in_channels if i == 0 else out_channels, out_channels) for i in range(num_layers)]
        )
        self.downsamplers = nn.ModuleList([resnets.make(out_channels, out_channels, down=True)]) \
            if add_downsample else None


class SimpleCrossAttnDownBlock2D(_SimpleCrossAttention, _DownStage):
    """Resnet blocks each followed by added-key/value attention, then a downsampling resnet (Kandinsky)."""

    factory_keys = frozenset({"num_layers", "in_channels", "out_channels", "temb_channels", "dropout",
                              "add_downsample", "resnet_eps", "resnet_act_fn", "resnet_groups",
                              "cross_attention_dim", "attention_head_dim", "resnet_time_scale_shift",
                              "skip_time_act", "output_scale_factor", "only_cross_attention",
                              "cross_attention_norm"})

    def __init__(self, in_channels: int, out_channels: int, temb_channels: int, dropout: float = 0.0,
                 num_layers: int = 1, resnet_eps: float = 1e-6, resnet_time_scale_shift: str = "default",
                 resnet_act_fn: str = "swish", resnet_groups: int = 32, resnet_pre_norm: bool = True,
                 attention_head_dim: int = 1, cross_attention_dim: int = 1280, output_scale_factor: float = 1.0,
                 add_downsample: bool = True, skip_time_act: bool = False, only_cross_attention: bool = False,
                 cross_attention_norm: str | None = None):
        super().__init__()
        self.attention_head_dim = attention_head_dim
        self.num_heads = out_channels // attention_head_dim
        resnets = _Resnets(temb_channels, resnet_eps, resnet_act_fn, resnet_groups, resnet_time_scale_shift,
                           dropout, output_scale_factor, skip_time_act)
        self.attentions = nn.ModuleList(
            [_simple_cross_attention(out_channels, attention_head_dim, cross_attention_dim, resnet_groups,
                                     only_cross_attention, cross_attention_norm) for _ in range(num_layers)]
        )
        self.resnets = nn.ModuleList(
            [resnets.make(in_channels if i == 0 else out_channels, out_channels) for i in range(num_layers)]
        )
        self.downsamplers = nn.ModuleList([resnets.make(out_channels, out_channels, down=True)]) \
            if add_downsample else None


class CrossAttnDownBlock2D(_TransformerCrossAttention, _DownStage):
    """Resnet blocks each followed by a spatial transformer, then a stride-2 conv (Stable Diffusion)."""

    factory_keys = frozenset({"num_layers", "transformer_layers_per_block", "in_channels", "out_channels",
                              "temb_channels", "dropout", "add_downsample", "resnet_eps", "resnet_act_fn",
                              "resnet_groups", "downsample_padding", "cross_attention_dim", "num_attention_heads",
                              "dual_cross_attention", "use_linear_projection", "only_cross_attention",
                              "upcast_attention", "resnet_time_scale_shift", "attention_type"})

    def __init__(self, in_channels: int, out_channels: int, temb_channels: int, dropout: float = 0.0,
                 num_layers: int = 1, transformer_layers_per_block: int | tuple[int, ...] = 1,
                 resnet_eps: float = 1e-6, resnet_time_scale_shift: str = "default", resnet_act_fn: str = "swish",
                 resnet_groups: int = 32, resnet_pre_norm: bool = True, num_attention_heads: int = 1,
                 cross_attention_dim: int = 1280, output_scale_factor: float = 1.0, downsample_padding: int = 1,
                 add_downsample: bool = True, dual_cross_attention: bool = False,
                 use_linear_projection: bool = False, only_cross_attention: bool = False,
                 upcast_attention: bool = False, attention_type: str = "default"):
        super().__init__()
        self.num_attention_heads = num_attention_heads
        resnets = _Resnets(temb_channels, resnet_eps, resnet_act_fn, resnet_groups, resnet_time_scale_shift,
                           dropout, output_scale_factor)
        self.attentions = _transformers(out_channels, num_layers, transformer_layers_per_block, num_attention_heads,
                                        cross_attention_dim, resnet_groups, use_linear_projection,
                                        only_cross_attention, upcast_attention, attention_type, dual_cross_attention)
        self.resnets = nn.ModuleList(
            [resnets.make(in_channels if i == 0 else out_channels, out_channels) for i in range(num_layers)]
        )
        self.downsamplers = nn.ModuleList(
            [Downsample2D(out_channels, use_conv=True, out_channels=out_channels, padding=downsample_padding,
                          name="op")]
        ) if add_downsample else None


# ---------------------------------------------------------------------------
# up stages


def _up_resnet_inputs(in_channels: int, prev_output_channel: int, out_channels: int, num_layers: int):
    """Input width of each up-stage resnet: its input plus the skip it concatenates."""
    widths = []
    for i in range(num_layers):
        skip_channels = in_channels if i == num_layers - 1 else out_channels
        input_channels = prev_output_channel if i == 0 else out_channels
        widths.append(input_channels + skip_channels)
    return widths


class _UpStage(_Stage):
    """(concat skip -> resnet (-> attention)) x num_layers, then an optional upsampler."""

    def forward(self, hidden_states: torch.Tensor, res_hidden_states_tuple: tuple[torch.Tensor, ...],
                temb: torch.Tensor | None = None, encoder_hidden_states: torch.Tensor | None = None,
                upsample_size: tuple[int, int] | None = None, attention_mask: torch.Tensor | None = None,
                cross_attention_kwargs: dict[str, Any] | None = None,
                encoder_attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        attentions = getattr(self, "attentions", None)
        for index, resnet in enumerate(self.resnets):
            skip = res_hidden_states_tuple[-1 - index]  # skips are consumed last-first
            hidden_states = resnet(torch.cat([hidden_states, skip], dim=1), temb)
            if attentions is not None:
                hidden_states = self._attend(attentions[index], hidden_states, encoder_hidden_states,
                                             attention_mask, encoder_attention_mask, cross_attention_kwargs)
        if self.upsamplers is not None:
            for upsampler in self.upsamplers:
                hidden_states = self._resample(upsampler, hidden_states, temb, upsample_size)
        return hidden_states


class UpBlock2D(_UpStage):
    """Resnet blocks over the skips, then nearest 2x + conv (Stable Diffusion's lowest-resolution up stage)."""

    factory_keys = frozenset({"num_layers", "in_channels", "out_channels", "prev_output_channel", "temb_channels",
                              "resolution_idx", "dropout", "add_upsample", "resnet_eps", "resnet_act_fn",
                              "resnet_groups", "resnet_time_scale_shift"})

    def __init__(self, in_channels: int, prev_output_channel: int, out_channels: int, temb_channels: int,
                 resolution_idx: int | None = None, dropout: float = 0.0, num_layers: int = 1,
                 resnet_eps: float = 1e-6, resnet_time_scale_shift: str = "default", resnet_act_fn: str = "swish",
                 resnet_groups: int = 32, resnet_pre_norm: bool = True, output_scale_factor: float = 1.0,
                 add_upsample: bool = True):
        super().__init__()
        self.resolution_idx = resolution_idx
        resnets = _Resnets(temb_channels, resnet_eps, resnet_act_fn, resnet_groups, resnet_time_scale_shift,
                           dropout, output_scale_factor)
        widths = _up_resnet_inputs(in_channels, prev_output_channel, out_channels, num_layers)
        self.resnets = nn.ModuleList([resnets.make(width, out_channels) for width in widths])
        self.upsamplers = nn.ModuleList([Upsample2D(out_channels, use_conv=True, out_channels=out_channels)]) \
            if add_upsample else None


class ResnetUpsampleBlock2D(_UpStage):
    """Resnet blocks over the skips, then a resnet block that upsamples (Kandinsky's last up stage)."""

    factory_keys = frozenset({"num_layers", "in_channels", "out_channels", "prev_output_channel", "temb_channels",
                              "resolution_idx", "dropout", "add_upsample", "resnet_eps", "resnet_act_fn",
                              "resnet_groups", "resnet_time_scale_shift", "skip_time_act", "output_scale_factor"})

    def __init__(self, in_channels: int, prev_output_channel: int, out_channels: int, temb_channels: int,
                 resolution_idx: int | None = None, dropout: float = 0.0, num_layers: int = 1,
                 resnet_eps: float = 1e-6, resnet_time_scale_shift: str = "default", resnet_act_fn: str = "swish",
                 resnet_groups: int = 32, resnet_pre_norm: bool = True, output_scale_factor: float = 1.0,
                 add_upsample: bool = True, skip_time_act: bool = False):
        super().__init__()
        self.resolution_idx = resolution_idx
        resnets = _Resnets(temb_channels, resnet_eps, resnet_act_fn, resnet_groups, resnet_time_scale_shift,
                           dropout, output_scale_factor, skip_time_act)
        widths = _up_resnet_inputs(in_channels, prev_output_channel, out_channels, num_layers)
        self.resnets = nn.ModuleList([resnets.make(width, out_channels) for width in widths])
        self.upsamplers = nn.ModuleList([resnets.make(out_channels, out_channels, up=True)]) \
            if add_upsample else None


class SimpleCrossAttnUpBlock2D(_SimpleCrossAttention, _UpStage):
    """Resnet blocks over the skips each followed by added-key/value attention, then an upsampling resnet."""

    factory_keys = frozenset({"num_layers", "in_channels", "out_channels", "prev_output_channel", "temb_channels",
                              "resolution_idx", "dropout", "add_upsample", "resnet_eps", "resnet_act_fn",
                              "resnet_groups", "cross_attention_dim", "attention_head_dim",
                              "resnet_time_scale_shift", "skip_time_act", "output_scale_factor",
                              "only_cross_attention", "cross_attention_norm"})

    def __init__(self, in_channels: int, out_channels: int, prev_output_channel: int, temb_channels: int,
                 resolution_idx: int | None = None, dropout: float = 0.0, num_layers: int = 1,
                 resnet_eps: float = 1e-6, resnet_time_scale_shift: str = "default", resnet_act_fn: str = "swish",
                 resnet_groups: int = 32, resnet_pre_norm: bool = True, attention_head_dim: int = 1,
                 cross_attention_dim: int = 1280, output_scale_factor: float = 1.0, add_upsample: bool = True,
                 skip_time_act: bool = False, only_cross_attention: bool = False,
                 cross_attention_norm: str | None = None):
        super().__init__()
        self.resolution_idx = resolution_idx
        self.attention_head_dim = attention_head_dim
        self.num_heads = out_channels // attention_head_dim
        resnets = _Resnets(temb_channels, resnet_eps, resnet_act_fn, resnet_groups, resnet_time_scale_shift,
                           dropout, output_scale_factor, skip_time_act)
        widths = _up_resnet_inputs(in_channels, prev_output_channel, out_channels, num_layers)
        self.attentions = nn.ModuleList(
            [_simple_cross_attention(out_channels, attention_head_dim, cross_attention_dim, resnet_groups,
                                     only_cross_attention, cross_attention_norm) for _ in range(num_layers)]
        )
        self.resnets = nn.ModuleList([resnets.make(width, out_channels) for width in widths])
        self.upsamplers = nn.ModuleList([resnets.make(out_channels, out_channels, up=True)]) \
            if add_upsample else None


class CrossAttnUpBlock2D(_TransformerCrossAttention, _UpStage):
    """Resnet blocks over the skips each followed by a spatial transformer, then nearest 2x + conv."""

    factory_keys = frozenset({"num_layers", "transformer_layers_per_block", "in_channels", "out_channels",
                              "prev_output_channel", "temb_channels", "resolution_idx", "dropout", "add_upsample",
                              "resnet_eps", "resnet_act_fn", "resnet_groups", "cross_attention_dim",
                              "num_attention_heads", "dual_cross_attention", "use_linear_projection",
                              "only_cross_attention", "upcast_attention", "resnet_time_scale_shift",
                              "attention_type"})

    def __init__(self, in_channels: int, out_channels: int, prev_output_channel: int, temb_channels: int,
                 resolution_idx: int | None = None, dropout: float = 0.0, num_layers: int = 1,
                 transformer_layers_per_block: int | tuple[int, ...] = 1, resnet_eps: float = 1e-6,
                 resnet_time_scale_shift: str = "default", resnet_act_fn: str = "swish", resnet_groups: int = 32,
                 resnet_pre_norm: bool = True, num_attention_heads: int = 1, cross_attention_dim: int = 1280,
                 output_scale_factor: float = 1.0, add_upsample: bool = True, dual_cross_attention: bool = False,
                 use_linear_projection: bool = False, only_cross_attention: bool = False,
                 upcast_attention: bool = False, attention_type: str = "default"):
        super().__init__()
        self.resolution_idx = resolution_idx
        self.num_attention_heads = num_attention_heads
        resnets = _Resnets(temb_channels, resnet_eps, resnet_act_fn, resnet_groups, resnet_time_scale_shift,
                           dropout, output_scale_factor)
        widths = _up_resnet_inputs(in_channels, prev_output_channel, out_channels, num_layers)
        self.attentions = _transformers(out_channels, num_layers, transformer_layers_per_block, num_attention_heads,
                                        cross_attention_dim, resnet_groups, use_linear_projection,
                                        only_cross_attention, upcast_attention, attention_type, dual_cross_attention)
        self.resnets = nn.ModuleList([resnets.make(width, out_channels) for width in widths])
        self.upsamplers = nn.ModuleList([Upsample2D(out_channels, use_conv=True, out_channels=out_channels)]) \
            if add_upsample else None


# ---------------------------------------------------------------------------
# mid stages


class _MidStage(_Stage):
    """resnet, then (attention -> resnet) pairs."""

    def forward(self, hidden_states: torch.Tensor, temb: torch.Tensor | None = None,
                encoder_hidden_states: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                cross_attention_kwargs: dict[str, Any] | None = None,
                encoder_attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        hidden_states = self.resnets[0](hidden_states, temb)
        for attention, resnet in zip(self.attentions, self.resnets[1:]):
            if attention is not None:
                hidden_states = self._attend(attention, hidden_states, encoder_hidden_states, attention_mask,
                                             encoder_attention_mask, cross_attention_kwargs)
            hidden_states = resnet(hidden_states, temb)
        return hidden_states


class UNetMidBlock2DSimpleCrossAttn(_SimpleCrossAttention, _MidStage):
    """Kandinsky mid stage: resnet, then (added-key/value attention -> resnet) x num_layers."""

    factory_keys = frozenset({"in_channels", "temb_channels", "dropout", "resnet_eps", "resnet_act_fn",
                              "output_scale_factor", "cross_attention_dim", "attention_head_dim", "resnet_groups",
                              "resnet_time_scale_shift", "skip_time_act", "only_cross_attention",
                              "cross_attention_norm"})

    def __init__(self, in_channels: int, temb_channels: int, dropout: float = 0.0, num_layers: int = 1,
                 resnet_eps: float = 1e-6, resnet_time_scale_shift: str = "default", resnet_act_fn: str = "swish",
                 resnet_groups: int | None = 32, resnet_pre_norm: bool = True, attention_head_dim: int = 1,
                 output_scale_factor: float = 1.0, cross_attention_dim: int = 1280, skip_time_act: bool = False,
                 only_cross_attention: bool = False, cross_attention_norm: str | None = None):
        super().__init__()
        resnet_groups = resnet_groups if resnet_groups is not None else min(in_channels // 4, 32)
        self.attention_head_dim = attention_head_dim
        self.num_heads = in_channels // attention_head_dim
        resnets = _Resnets(temb_channels, resnet_eps, resnet_act_fn, resnet_groups, resnet_time_scale_shift,
                           dropout, output_scale_factor, skip_time_act)
        self.attentions = nn.ModuleList(
            [_simple_cross_attention(in_channels, attention_head_dim, cross_attention_dim, resnet_groups,
                                     only_cross_attention, cross_attention_norm) for _ in range(num_layers)]
        )
        self.resnets = nn.ModuleList([resnets.make(in_channels, in_channels) for _ in range(num_layers + 1)])


class UNetMidBlock2DCrossAttn(_TransformerCrossAttention, _MidStage):
    """Stable Diffusion mid stage: resnet, then (spatial transformer -> resnet) x num_layers."""

    factory_keys = frozenset({"transformer_layers_per_block", "in_channels", "temb_channels", "dropout",
                              "resnet_eps", "resnet_act_fn", "output_scale_factor", "resnet_time_scale_shift",
                              "cross_attention_dim", "num_attention_heads", "resnet_groups", "dual_cross_attention",
                              "use_linear_projection", "upcast_attention", "attention_type"})

    def __init__(self, in_channels: int, temb_channels: int, out_channels: int | None = None, dropout: float = 0.0,
                 num_layers: int = 1, transformer_layers_per_block: int | tuple[int, ...] = 1,
                 resnet_eps: float = 1e-6, resnet_time_scale_shift: str = "default", resnet_act_fn: str = "swish",
                 resnet_groups: int | None = 32, resnet_groups_out: int | None = None, resnet_pre_norm: bool = True,
                 num_attention_heads: int = 1, output_scale_factor: float = 1.0, cross_attention_dim: int = 1280,
                 dual_cross_attention: bool = False, use_linear_projection: bool = False,
                 upcast_attention: bool = False, attention_type: str = "default"):
        super().__init__()
        out_channels = out_channels or in_channels
        self.in_channels, self.out_channels = in_channels, out_channels
        self.num_attention_heads = num_attention_heads
        resnet_groups = resnet_groups if resnet_groups is not None else min(in_channels // 4, 32)
        resnet_groups_out = resnet_groups_out or resnet_groups
        first = _Resnets(temb_channels, resnet_eps, resnet_act_fn, resnet_groups, resnet_time_scale_shift, dropout,
                         output_scale_factor)
        rest = _Resnets(temb_channels, resnet_eps, resnet_act_fn, resnet_groups_out, resnet_time_scale_shift,
                        dropout, output_scale_factor)
        self.attentions = _transformers(out_channels, num_layers, transformer_layers_per_block, num_attention_heads,
                                        cross_attention_dim, resnet_groups_out, use_linear_projection, False,
                                        upcast_attention, attention_type, dual_cross_attention)
        self.resnets = nn.ModuleList(
            [first.make(in_channels, out_channels, groups_out=resnet_groups_out)]
            + [rest.make(out_channels, out_channels) for _ in range(num_layers)]
        )


class UNetMidBlock2D(_MidStage):
    """Resnet, then (self-attention -> resnet) x num_layers; autoencoders, and UNets with attention off.

    With ``resnet_time_scale_shift="spatial"`` the norms are ``SpatialNorm`` driven by ``temb``
    (the MoVQ decoder), and the attention layers get a spatial norm too.
    """

    factory_keys = frozenset({"in_channels", "temb_channels", "dropout", "num_layers", "resnet_eps", "resnet_act_fn",
                              "output_scale_factor", "resnet_groups", "resnet_time_scale_shift", "add_attention"})

    def __init__(self, in_channels: int, temb_channels: int | None, dropout: float = 0.0, num_layers: int = 1,
                 resnet_eps: float = 1e-6, resnet_time_scale_shift: str = "default", resnet_act_fn: str = "swish",
                 resnet_groups: int | None = 32, attn_groups: int | None = None, resnet_pre_norm: bool = True,
                 add_attention: bool = True, attention_head_dim: int | None = 1, output_scale_factor: float = 1.0):
        super().__init__()
        resnet_groups = resnet_groups if resnet_groups is not None else min(in_channels // 4, 32)
        self.add_attention = add_attention
        if attn_groups is None:
            attn_groups = resnet_groups if resnet_time_scale_shift == "default" else None
        attention_head_dim = in_channels if attention_head_dim is None else attention_head_dim
        spatial = resnet_time_scale_shift == "spatial"
        resnets = _Resnets(temb_channels, resnet_eps, resnet_act_fn, resnet_groups, resnet_time_scale_shift,
                           dropout, output_scale_factor)
        self.attentions = nn.ModuleList([
            Attention(in_channels, heads=in_channels // attention_head_dim, dim_head=attention_head_dim,
                      rescale_output_factor=output_scale_factor, eps=resnet_eps, norm_num_groups=attn_groups,
                      spatial_norm_dim=temb_channels if spatial else None, residual_connection=True, bias=True,
                      upcast_softmax=True, _from_deprecated_attn_block=True)
            if add_attention else None
            for _ in range(num_layers)
        ])
        self.resnets = nn.ModuleList([resnets.make(in_channels, in_channels) for _ in range(num_layers + 1)])

    def forward(self, hidden_states: torch.Tensor, temb: torch.Tensor | None = None, **_unused: Any) -> torch.Tensor:
        hidden_states = self.resnets[0](hidden_states, temb)
        for attention, resnet in zip(self.attentions, self.resnets[1:]):
            if attention is not None:
                hidden_states = attention(hidden_states, temb=temb)
            hidden_states = resnet(hidden_states, temb)
        return hidden_states


# ---------------------------------------------------------------------------
# choosing stages by name

DOWN_BLOCKS: dict[str, type[nn.Module]] = {
    "DownBlock2D": DownBlock2D,
    "CrossAttnDownBlock2D": CrossAttnDownBlock2D,
    "ResnetDownsampleBlock2D": ResnetDownsampleBlock2D,
    "SimpleCrossAttnDownBlock2D": SimpleCrossAttnDownBlock2D,
    "KDownBlock2D": KDownBlock2D,
    "KCrossAttnDownBlock2D": KCrossAttnDownBlock2D,
}
UP_BLOCKS: dict[str, type[nn.Module]] = {
    "UpBlock2D": UpBlock2D,
    "CrossAttnUpBlock2D": CrossAttnUpBlock2D,
    "ResnetUpsampleBlock2D": ResnetUpsampleBlock2D,
    "SimpleCrossAttnUpBlock2D": SimpleCrossAttnUpBlock2D,
    "KUpBlock2D": KUpBlock2D,
    "KCrossAttnUpBlock2D": KCrossAttnUpBlock2D,
}
MID_BLOCKS: dict[str, type[_MidStage]] = {
    "UNetMidBlock2DSimpleCrossAttn": UNetMidBlock2DSimpleCrossAttn,
    "UNetMidBlock2DCrossAttn": UNetMidBlock2DCrossAttn,
    "UNetMidBlock2D": UNetMidBlock2D,
}

# UNet-level setting name -> stage constructor keyword, where they differ
_RENAMED = {"resnet_skip_time_act": "skip_time_act", "resnet_out_scale_factor": "output_scale_factor",
            "mid_block_only_cross_attention": "only_cross_attention"}


def _build(registry: dict[str, type], kind: str, block_type: str, settings: dict[str, Any]) -> nn.Module:
    name = block_type[7:] if block_type.startswith("UNetRes") else block_type
    if name not in registry:
        raise ValueError(f"{kind} block type {block_type!r} is not supported; choose from {sorted(registry)}")
    stage = registry[name]
    if settings.get("attention_head_dim", 0) is None:
        settings["attention_head_dim"] = settings.get("num_attention_heads")
    renamed = {_RENAMED.get(key, key): value for key, value in settings.items()}
    return stage(**{key: value for key, value in renamed.items() if key in stage.factory_keys})


def get_down_block(down_block_type: str, **settings: Any) -> nn.Module:
    """Build a down stage by name from UNet-level settings (the reference's ``get_down_block`` keywords)."""
    if down_block_type == "KCrossAttnDownBlock2D":
        # the upscaler's lowest stage (the one without a downsampler) also attends to itself
        settings = dict(settings, add_self_attention=not settings.get("add_downsample", True))
    return _build(DOWN_BLOCKS, "down", down_block_type, settings)


def get_up_block(up_block_type: str, **settings: Any) -> nn.Module:
    """Build an up stage by name from UNet-level settings (the reference's ``get_up_block`` keywords)."""
    return _build(UP_BLOCKS, "up", up_block_type, settings)


def get_mid_block(mid_block_type: str | None, **settings: Any) -> nn.Module | None:
    """Build the mid stage by name (``None`` means no mid stage)."""
    if mid_block_type is None:
        return None
    if mid_block_type == "UNetMidBlock2D":
        # inside a conditional UNet this stage is a single resnet block, as in the reference
        settings = dict(settings, num_layers=0, add_attention=False)
    return _build(MID_BLOCKS, "mid", mid_block_type, settings)
