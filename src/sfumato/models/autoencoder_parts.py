"""The convolutional encoder and decoder of the image autoencoders (MoVQ ``VQModel``, ``AutoencoderKL``).

``Encoder`` turns an image into a latent grid 2**(levels-1) times smaller; ``Decoder``
turns a latent grid back into an image. With ``norm_type="spatial"`` (MoVQ, the
Kandinsky decoder) every normalisation in the decoder is a ``SpatialNorm``: a
group norm whose per-pixel scale and shift are 1x1 convs of the quantised
latents ``zq``.

Module and attribute names follow the reference checkpoints
(``down_blocks.0.resnets.1.norm1.weight``, ``mid_block.attentions.0.to_q.weight``,
``up_blocks.2.upsamplers.0.conv.weight``, ...), so their state dicts load unchanged.

Inference is the hot path (decoding a 512x512 image runs ~2 TFLOP of convs), so
the layers here avoid the reference's full-resolution temporaries where the
result is the same:

* ``SpatialNorm`` applies its 1x1 convs to ``zq`` at latent resolution and
  broadcasts the result over each upsampled block, instead of upsampling ``zq``
  first (a 1x1 conv commutes with nearest upsampling) and materialising two
  full-size maps;
* activations and residual additions run in place on tensors the layer itself
  created, when no gradient is being recorded.

Resampling and ``SpatialNorm`` come from ``sfumato.nn``. The resnet and attention
layers are kept here rather than taken from ``sfumato.nn`` because the attention mirrors the reference's operation order exactly (3-d group
norm, channels-last residual sum), which keeps fp32 results within ~1e-6 of it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..nn.activations import get_activation
from ..nn.attention import sdpa
from ..nn.norms import SPATIAL_NORM_GROUPS, SpatialNorm, _can_overwrite
from ..nn.sampling import Downsample2D, Upsample2D
from ..outputs import BaseOutput

# every norm in these autoencoders uses this epsilon
NORM_EPS = 1e-6

ENCODER_BLOCK_TYPES = ("DownEncoderBlock2D", "AttnDownEncoderBlock2D")
DECODER_BLOCK_TYPES = ("UpDecoderBlock2D", "AttnUpDecoderBlock2D")
NORM_TYPES = ("group", "spatial")


def _activate(activation: nn.Module, hidden_states: torch.Tensor) -> torch.Tensor:
    """Apply ``activation`` to a tensor this layer owns, in place when that is safe."""
    if isinstance(activation, nn.SiLU) and _can_overwrite(hidden_states):
        return F.silu(hidden_states, inplace=True)
    return activation(hidden_states)


@dataclass
class DecoderOutput(BaseOutput):
    """What an autoencoder's ``decode`` returns: the image ``sample`` (and, for ``VQModel``, the codebook
    ``commit_loss``, per the reference)."""

    sample: torch.Tensor
    commit_loss: torch.Tensor | None = None


# --------------------------------------------------------------------------- norms


def _make_norm(channels: int, norm_num_groups: int, zq_channels: int | None) -> nn.Module:
    """A plain group norm, or a ``SpatialNorm`` when the layer is conditioned on ``zq``."""
    if zq_channels is None:
        return nn.GroupNorm(num_channels=channels, num_groups=norm_num_groups, eps=NORM_EPS, affine=True)
    return SpatialNorm(channels, zq_channels)


def _normalise(norm: nn.Module, hidden_states: torch.Tensor, zq: torch.Tensor | None) -> torch.Tensor:
    return norm(hidden_states, zq) if isinstance(norm, SpatialNorm) else norm(hidden_states)


# --------------------------------------------------------------------------- layers


class ResnetBlock(nn.Module):
    """Two (norm, activation, 3x3 conv) steps plus a skip connection (1x1 conv when widths differ).

    Serves both ``ResnetBlock2D`` (plain group norms) and ``ResnetBlockCondNorm2D``
    with ``time_embedding_norm="spatial"`` (``SpatialNorm`` on ``zq``): their
    parameter names are the same. Autoencoder blocks have no time embedding,
    no dropout and an output scale of 1, so none of those appear here.
    """

    def __init__(self, in_channels: int, out_channels: int, norm_num_groups: int, act_fn: str,
                 zq_channels: int | None = None):
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.norm1 = _make_norm(in_channels, norm_num_groups, zq_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1)
        self.norm2 = _make_norm(out_channels, norm_num_groups, zq_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1)
        self.nonlinearity = get_activation(act_fn)
        self.conv_shortcut = None
        if in_channels != out_channels:
            self.conv_shortcut = nn.Conv2d(in_channels, out_channels, kernel_size=1)

    def forward(self, input_tensor: torch.Tensor, zq: torch.Tensor | None = None) -> torch.Tensor:
        hidden_states = _activate(self.nonlinearity, _normalise(self.norm1, input_tensor, zq))
        hidden_states = self.conv1(hidden_states)
        hidden_states = _activate(self.nonlinearity, _normalise(self.norm2, hidden_states, zq))
        hidden_states = self.conv2(hidden_states)
        skip = input_tensor if self.conv_shortcut is None else self.conv_shortcut(input_tensor)
        if _can_overwrite(hidden_states):
            return hidden_states.add_(skip)
        return skip + hidden_states


class SpatialSelfAttention(nn.Module):
    """Single-head self-attention over the pixels of a feature map, with a residual connection.

    The reference's ``Attention(..., residual_connection=True, _from_deprecated_attn_block=True)``
    as autoencoders use it: one head as wide as the channels, a group norm (or
    ``SpatialNorm`` on ``zq``) before the projections, scaled dot-product
    attention by ``F.scaled_dot_product_attention``.
    """

    # old checkpoints name the projections query/key/value/proj_attn; see ``legacy_key_renames``
    _from_deprecated_attn_block = True
    # set by the fast CPU mode, as on ``sfumato.nn.attention.Attention``
    products_attention: bool = False

    def __init__(self, channels: int, norm_num_groups: int, zq_channels: int | None = None):
        super().__init__()
        self.channels = channels
        if zq_channels is None:
            self.group_norm = nn.GroupNorm(num_channels=channels, num_groups=norm_num_groups, eps=NORM_EPS, affine=True)
            self.spatial_norm = None
        else:
            self.group_norm = None
            self.spatial_norm = SpatialNorm(channels, zq_channels)
        self.to_q = nn.Linear(channels, channels)
        self.to_k = nn.Linear(channels, channels)
        self.to_v = nn.Linear(channels, channels)
        # index 1 of the reference's to_out is a parameter-free dropout (p=0)
        self.to_out = nn.ModuleList([nn.Linear(channels, channels)])

    def forward(self, hidden_states: torch.Tensor, zq: torch.Tensor | None = None) -> torch.Tensor:
        batch, channels, height, width = hidden_states.shape
        if self.spatial_norm is not None:
            normed = self.spatial_norm(hidden_states, zq).view(batch, channels, height * width)
        else:
            # on the (batch, channels, pixels) view, as the reference does: the 3-d and 4-d
            # group-norm kernels round differently
            normed = self.group_norm(hidden_states.view(batch, channels, height * width))
        tokens = normed.transpose(1, 2)  # (batch, pixels, channels)
        query, key, value = (proj(tokens).view(batch, -1, 1, channels).transpose(1, 2)
                             for proj in (self.to_q, self.to_k, self.to_v))
        attended = sdpa(query, key, value, products=self.products_attention)
        attended = attended.transpose(1, 2).reshape(batch, -1, channels)
        attended = self.to_out[0](attended)
        # The (batch, pixels, channels) result viewed as (batch, channels, h, w) is channels-last,
        # and as the first operand it makes the sum channels-last too: the reference's order,
        # kept because later convs pick their kernels (and rounding) by memory layout. The view
        # is taken by permuting, which gives the canonical channels-last strides even for a
        # batch of one; a transpose-and-reshape view there has a batch stride of ``channels``,
        # which group norm does not recognise as channels-last, so the rest of the decoder
        # fell back to the contiguous layout (and oneDNN's slower NCHW convolutions).
        return attended.view(batch, height, width, channels).permute(0, 3, 1, 2) + hidden_states


# --------------------------------------------------------------------------- blocks


class _ResnetStage(nn.Module):
    """Resnets, each followed by an attention layer when ``with_attention``; norms spatial when ``zq_channels``.

    Attentions are registered before resnets, as in the reference, so state dicts list keys in the same order.
    """

    def __init__(self, num_layers: int, in_channels: int, out_channels: int, norm_num_groups: int, act_fn: str,
                 with_attention: bool, zq_channels: int | None = None):
        super().__init__()
        if with_attention:
            self.attentions = nn.ModuleList(
                SpatialSelfAttention(out_channels, norm_num_groups, zq_channels) for _ in range(num_layers)
            )
        self.resnets = nn.ModuleList(
            ResnetBlock(in_channels if i == 0 else out_channels, out_channels, norm_num_groups, act_fn, zq_channels)
            for i in range(num_layers)
        )

    def _resnets_and_attentions(self, hidden_states: torch.Tensor, zq: torch.Tensor | None) -> torch.Tensor:
        attentions = getattr(self, "attentions", None)
        for index, resnet in enumerate(self.resnets):
            hidden_states = resnet(hidden_states, zq)
            if attentions is not None:
                hidden_states = attentions[index](hidden_states, zq)
        return hidden_states


class EncoderBlock(_ResnetStage):
    """``DownEncoderBlock2D`` / ``AttnDownEncoderBlock2D``: the stage, then an optional 2x downsampling."""

    def __init__(self, block_type: str, num_layers: int, in_channels: int, out_channels: int,
                 norm_num_groups: int, act_fn: str, add_downsample: bool):
        super().__init__(num_layers, in_channels, out_channels, norm_num_groups, act_fn,
                         with_attention=block_type == "AttnDownEncoderBlock2D")
        self.downsamplers = None
        if add_downsample:
            # padding=0: pad bottom/right by one, then a stride-2 3x3 conv, as the checkpoints expect
            self.downsamplers = nn.ModuleList([Downsample2D(out_channels, use_conv=True, padding=0, name="op")])

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        hidden_states = self._resnets_and_attentions(hidden_states, None)
        if self.downsamplers is not None:
            hidden_states = self.downsamplers[0](hidden_states)
        return hidden_states


class DecoderBlock(_ResnetStage):
    """``UpDecoderBlock2D`` / ``AttnUpDecoderBlock2D``: the stage, then an optional 2x upsampling."""

    def __init__(self, block_type: str, num_layers: int, in_channels: int, out_channels: int,
                 norm_num_groups: int, act_fn: str, add_upsample: bool, zq_channels: int | None):
        super().__init__(num_layers, in_channels, out_channels, norm_num_groups, act_fn,
                         with_attention=block_type == "AttnUpDecoderBlock2D", zq_channels=zq_channels)
        self.upsamplers = nn.ModuleList([Upsample2D(out_channels, use_conv=True)]) if add_upsample else None

    def forward(self, hidden_states: torch.Tensor, zq: torch.Tensor | None = None) -> torch.Tensor:
        hidden_states = self._resnets_and_attentions(hidden_states, zq)
        if self.upsamplers is not None:
            hidden_states = self.upsamplers[0](hidden_states)
        return hidden_states


class MidBlock(nn.Module):
    """``UNetMidBlock2D`` of an autoencoder: resnet, then (attention, resnet); the attention is optional."""

    def __init__(self, channels: int, norm_num_groups: int, act_fn: str, add_attention: bool,
                 zq_channels: int | None = None):
        super().__init__()
        attentions = [SpatialSelfAttention(channels, norm_num_groups, zq_channels)] if add_attention else []
        self.attentions = nn.ModuleList(attentions)
        self.resnets = nn.ModuleList(
            ResnetBlock(channels, channels, norm_num_groups, act_fn, zq_channels) for _ in range(2)
        )

    def forward(self, hidden_states: torch.Tensor, zq: torch.Tensor | None = None) -> torch.Tensor:
        hidden_states = self.resnets[0](hidden_states, zq)
        for attention in self.attentions:
            hidden_states = attention(hidden_states, zq)
        return self.resnets[1](hidden_states, zq)


# --------------------------------------------------------------------------- encoder / decoder


class Encoder(nn.Module):
    """Image -> latent grid: conv_in, encoder blocks (each but the last halves the size), mid block,
    group norm, SiLU, conv_out to ``out_channels``."""

    def __init__(self, in_channels: int, out_channels: int, down_block_types: tuple[str, ...],
                 block_out_channels: tuple[int, ...], layers_per_block: int, norm_num_groups: int,
                 act_fn: str, mid_block_add_attention: bool = True):
        super().__init__()
        widths = list(block_out_channels)
        self.conv_in = nn.Conv2d(in_channels, widths[0], kernel_size=3, padding=1)
        self.down_blocks = nn.ModuleList(
            EncoderBlock(block_type, layers_per_block, widths[max(i - 1, 0)], widths[i], norm_num_groups, act_fn,
                         add_downsample=i < len(widths) - 1)
            for i, block_type in enumerate(down_block_types)
        )
        self.mid_block = MidBlock(widths[-1], norm_num_groups, act_fn, mid_block_add_attention)
        self.conv_norm_out = nn.GroupNorm(num_channels=widths[-1], num_groups=norm_num_groups, eps=NORM_EPS)
        self.conv_act = nn.SiLU()  # SiLU here whatever act_fn is, as in the reference
        self.conv_out = nn.Conv2d(widths[-1], out_channels, kernel_size=3, padding=1)

    def forward(self, sample: torch.Tensor) -> torch.Tensor:
        sample = self.conv_in(sample)
        for block in self.down_blocks:
            sample = block(sample)
        sample = self.mid_block(sample)
        sample = _activate(self.conv_act, self.conv_norm_out(sample))
        return self.conv_out(sample)


class Decoder(nn.Module):
    """Latent grid -> image: conv_in, mid block, decoder blocks (each but the last doubles the size),
    norm, SiLU, conv_out. With ``norm_type="spatial"`` every norm is conditioned on ``zq``."""

    def __init__(self, in_channels: int, out_channels: int, up_block_types: tuple[str, ...],
                 block_out_channels: tuple[int, ...], layers_per_block: int, norm_num_groups: int,
                 act_fn: str, norm_type: str = "group", mid_block_add_attention: bool = True):
        super().__init__()
        widths = list(reversed(block_out_channels))
        zq_channels = in_channels if norm_type == "spatial" else None
        self.conv_in = nn.Conv2d(in_channels, widths[0], kernel_size=3, padding=1)
        # up_blocks before mid_block: the reference's registration (and state-dict) order
        self.up_blocks = nn.ModuleList(
            DecoderBlock(block_type, layers_per_block + 1, widths[max(i - 1, 0)], widths[i], norm_num_groups,
                         act_fn, add_upsample=i < len(widths) - 1, zq_channels=zq_channels)
            for i, block_type in enumerate(up_block_types)
        )
        self.mid_block = MidBlock(widths[0], norm_num_groups, act_fn, mid_block_add_attention, zq_channels)
        self.conv_norm_out = _make_norm(widths[-1], norm_num_groups, zq_channels)
        self.conv_act = nn.SiLU()  # SiLU here whatever act_fn is, as in the reference
        self.conv_out = nn.Conv2d(widths[-1], out_channels, kernel_size=3, padding=1)

    def forward(self, sample: torch.Tensor, latent_embeds: torch.Tensor | None = None) -> torch.Tensor:
        """``latent_embeds`` is ``zq``, the quantised latents that spatial norms are conditioned on."""
        sample = self.conv_in(sample)
        sample = self.mid_block(sample, latent_embeds)
        for block in self.up_blocks:
            sample = block(sample, latent_embeds)
        sample = _activate(self.conv_act, _normalise(self.conv_norm_out, sample, latent_embeds))
        return self.conv_out(sample)


def legacy_key_renames(model: nn.Module) -> dict[str, str]:
    """Old attention key -> current key, for every ``SpatialSelfAttention`` in ``model``.

    Early autoencoder checkpoints name the projections ``query``, ``key``, ``value``
    and ``proj_attn``; the reference renames them when loading, and so do we.
    """
    renames = {}
    old_to_new = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}
    for path, module in model.named_modules():
        if getattr(module, "_from_deprecated_attn_block", False):
            for old, new in old_to_new.items():
                for kind in ("weight", "bias"):
                    renames[f"{path}.{old}.{kind}"] = f"{path}.{new}.{kind}"
    return renames


class LegacyAttentionKeys:
    """Mixin for autoencoder models: ``load_weights`` also takes the old attention key names."""

    def load_weights(self, state: dict[str, torch.Tensor], source: str = "state dict",
                     dtype: torch.dtype | None = None) -> None:
        renames = legacy_key_renames(self)
        if any(key in renames for key in state):
            state = {renames.get(key, key): tensor for key, tensor in state.items()}
        super().load_weights(state, source=source, dtype=dtype)


def check_config(down_block_types, up_block_types, block_out_channels, layers_per_block, act_fn,
                 norm_num_groups, extra_groups: tuple[int, ...] = ()) -> None:
    """Reject encoder / decoder configs the reference would fail on late (or silently misbuild), naming the field.

    ``extra_groups``: other group counts every width must divide (``SpatialNorm``'s fixed 32).
    """
    levels = len(block_out_channels)
    if levels == 0:
        raise ValueError("block_out_channels must list at least one width, got an empty sequence")
    for name, types, allowed in (("down_block_types", down_block_types, ENCODER_BLOCK_TYPES),
                                 ("up_block_types", up_block_types, DECODER_BLOCK_TYPES)):
        if len(types) != levels:
            raise ValueError(
                f"{name} must have one entry per block_out_channels entry ({levels}), got {len(types)}: {list(types)}"
            )
        unknown = [t for t in types if t not in allowed]
        if unknown:
            raise ValueError(f"{name} may only contain {list(allowed)}, got {unknown}")
    if not isinstance(layers_per_block, int) or layers_per_block < 1:
        raise ValueError(f"layers_per_block must be a positive int, got {layers_per_block!r}")
    get_activation(act_fn)  # raises ValueError naming the supported activations
    for width in block_out_channels:
        for group_count in (norm_num_groups, *extra_groups):
            if width % group_count:
                raise ValueError(
                    f"every block_out_channels entry must be divisible by the number of norm groups "
                    f"({group_count}{', fixed by SpatialNorm' if group_count != norm_num_groups else ''}), "
                    f"got {width} in {list(block_out_channels)}"
                )
