"""``Kandinsky3UNet``: the denoising UNet of Kandinsky 3, with the reference's config fields and weight names.

Unlike the 2.x UNets it has no mid block and no separate skip per layer: each
level is one block that the way down and the way up pass through once, and the
way up concatenates the way down's output of the same level before it starts.
Its parts, in reading order:

1. *time*: a sinusoidal code of the timestep (``time_proj``) and an MLP
   (``time_embedding``); ``add_time_condition`` pools the text tokens into the
   time vector by attention (the query is the tokens' mean).
2. *text*: ``encoder_hid_proj`` maps the text encoder's hidden states (T5,
   ``encoder_hid_dim`` wide) to ``cross_attention_dim`` (linear, layer norm).
3. *the U*: ``conv_in``; ``down_blocks`` and ``up_blocks``, one per level, built
   from ``ResNetBlock`` (a BigGAN-deep bottleneck of four norm-act-conv units)
   and ``AttentionBlock`` (attention + feed-forward, both with a time-conditioned
   group norm); ``conv_norm_out`` / ``conv_act_out`` / ``conv_out``.

Every norm inside the blocks is a ``ConditionalGroupNorm``: the time vector sets
its scale and shift. ``forward(sample, timestep, encoder_hidden_states,
encoder_attention_mask)`` returns a ``Kandinsky3UNetOutput`` (``.sample``, the
predicted noise) or a 1-tuple.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import nn

from ..checkpoint.config import register_to_config
from ..checkpoint.modeling import ModelMixin
from ..nn import attention as attention_layers
from ..nn.attention import Attention
from ..nn.embeddings import TimestepEmbedding, Timesteps
from ..outputs import BaseOutput

# fixed by the architecture (the reference does not put them in the config)
ATTENTION_EXPANSION = 4  # feed-forward width of an attention block, in channels
RESNET_COMPRESSION = 2  # a resnet block's bottleneck is max(in, out) // this
MAX_LEVELS = 4
# which levels attend (text and self-attention), outermost first: all but the outermost.
# The reference lists this for four levels and reads the list backwards on the way up,
# so a network with fewer levels attends at its outermost level on the way up too.
_ATTENTION_AT = (False, True, True, True)
# a masked text token gets this added to its attention score (the reference's value, not -inf:
# a prompt whose tokens are all masked then attends evenly instead of giving NaN)
_MASKED_SCORE = -10000.0


@dataclass
class Kandinsky3UNetOutput(BaseOutput):
    """``sample``: the predicted noise, shaped like the input sample."""

    sample: torch.Tensor = None


# --------------------------------------------------------------------------- blocks


class ConditionalGroupNorm(nn.Module):
    """Group norm without its own affine; the time vector gives a scale (around 1) and a shift."""

    def __init__(self, groups: int, channels: int, time_embed_dim: int):
        super().__init__()
        self.norm = nn.GroupNorm(groups, channels, affine=False)
        self.context_mlp = nn.Sequential(nn.SiLU(), nn.Linear(time_embed_dim, 2 * channels))

    def forward(self, x: torch.Tensor, time_embed: torch.Tensor) -> torch.Tensor:
        scale, shift = self.context_mlp(time_embed)[:, :, None, None].chunk(2, dim=1)
        return torch.addcmul(shift, self.norm(x), scale + 1.0)


class ConvUnit(nn.Module):
    """norm -> SiLU -> [2x transposed-conv up] -> conv -> [2x strided-conv down]: one step of a resnet block.

    (The reference calls it ``Kandinsky3Block``.)
    """

    def __init__(self, in_channels: int, out_channels: int, time_embed_dim: int, kernel_size: int, groups: int,
                 resample: str | None = None):
        super().__init__()
        self.group_norm = ConditionalGroupNorm(groups, in_channels, time_embed_dim)
        self.activation = nn.SiLU()
        self.up_sample = nn.ConvTranspose2d(in_channels, in_channels, kernel_size=2, stride=2) \
            if resample == "up" else None
        self.projection = nn.Conv2d(in_channels, out_channels, kernel_size=kernel_size, padding=kernel_size // 2)
        self.down_sample = nn.Conv2d(out_channels, out_channels, kernel_size=2, stride=2) \
            if resample == "down" else None

    def forward(self, x: torch.Tensor, time_embed: torch.Tensor) -> torch.Tensor:
        x = self.activation(self.group_norm(x, time_embed))
        if self.up_sample is not None:
            x = self.up_sample(x)
        x = self.projection(x)
        if self.down_sample is not None:
            x = self.down_sample(x)
        return x


class ResNetBlock(nn.Module):
    """A BigGAN-deep bottleneck: 1x1 in, two 3x3, 1x1 out, added to a shortcut.

    ``resample="up"`` doubles the size in the second unit (and the shortcut),
    ``"down"`` halves it in the third.
    """

    _KERNELS = (1, 3, 3, 1)
    _RESAMPLED_UNIT = {"up": 1, "down": 2}

    def __init__(self, in_channels: int, out_channels: int, time_embed_dim: int, groups: int,
                 resample: str | None = None):
        super().__init__()
        hidden = max(in_channels, out_channels) // RESNET_COMPRESSION
        widths = [in_channels, hidden, hidden, hidden, out_channels]
        resampled = self._RESAMPLED_UNIT.get(resample)
        self.resnet_blocks = nn.ModuleList(
            ConvUnit(widths[i], widths[i + 1], time_embed_dim, kernel, groups,
                     resample=resample if i == resampled else None)
            for i, kernel in enumerate(self._KERNELS)
        )
        self.shortcut_up_sample = nn.ConvTranspose2d(in_channels, in_channels, kernel_size=2, stride=2) \
            if resample == "up" else None
        self.shortcut_projection = nn.Conv2d(in_channels, out_channels, kernel_size=1) \
            if in_channels != out_channels else None
        self.shortcut_down_sample = nn.Conv2d(out_channels, out_channels, kernel_size=2, stride=2) \
            if resample == "down" else None

    def forward(self, x: torch.Tensor, time_embed: torch.Tensor) -> torch.Tensor:
        out = x
        for unit in self.resnet_blocks:
            out = unit(out, time_embed)
        for shortcut in (self.shortcut_up_sample, self.shortcut_projection, self.shortcut_down_sample):
            if shortcut is not None:
                x = shortcut(x)
        return x + out


class AttentionBlock(nn.Module):
    """Attention over a feature map (self-attention, or cross-attention to text), then a 1x1 feed-forward.

    Each half has a time-conditioned norm in front and a residual around it.
    """

    def __init__(self, channels: int, time_embed_dim: int, context_dim: int | None, groups: int, head_dim: int):
        super().__init__()
        self.in_norm = ConditionalGroupNorm(groups, channels, time_embed_dim)
        self.attention = Attention(channels, context_dim or channels, dim_head=head_dim, out_dim=channels,
                                   out_bias=False)
        self.out_norm = ConditionalGroupNorm(groups, channels, time_embed_dim)
        hidden = ATTENTION_EXPANSION * channels
        self.feed_forward = nn.Sequential(
            nn.Conv2d(channels, hidden, kernel_size=1, bias=False),
            nn.SiLU(),
            nn.Conv2d(hidden, channels, kernel_size=1, bias=False),
        )

    def forward(self, x: torch.Tensor, time_embed: torch.Tensor, context: torch.Tensor | None = None,
                context_mask: torch.Tensor | None = None) -> torch.Tensor:
        # the attention layer reads a (B, C, H, W) map as H*W tokens and returns a map
        x = x + self.attention(self.in_norm(x, time_embed), context, context_mask)
        return x + self.feed_forward(self.out_norm(x, time_embed))


class AttentionPooling(nn.Module):
    """The text tokens pooled into the time vector: their mean attends to them, the result is added."""

    def __init__(self, time_embed_dim: int, context_dim: int, head_dim: int):
        super().__init__()
        self.attention = Attention(context_dim, context_dim, dim_head=head_dim, out_dim=time_embed_dim,
                                   out_bias=False)

    def forward(self, time_embed: torch.Tensor, context: torch.Tensor,
                context_mask: torch.Tensor | None = None) -> torch.Tensor:
        pooled = self.attention(context.mean(dim=1, keepdim=True), context, context_mask)
        return time_embed + pooled.squeeze(1)


class EncoderProjection(nn.Module):
    """Text encoder hidden states -> cross-attention tokens: a bias-free linear map and a layer norm."""

    def __init__(self, encoder_hid_dim: int, cross_attention_dim: int):
        super().__init__()
        self.projection_linear = nn.Linear(encoder_hid_dim, cross_attention_dim, bias=False)
        self.projection_norm = nn.LayerNorm(cross_attention_dim)

    def forward(self, encoder_hidden_states: torch.Tensor) -> torch.Tensor:
        return self.projection_norm(self.projection_linear(encoder_hidden_states))


def _attention_or_nothing(channels: int, time_embed_dim: int, context_dim: int | None, groups: int,
                          head_dim: int, present: bool) -> nn.Module:
    # an Identity keeps the list index of an absent attention, as the reference's weight names count them
    return AttentionBlock(channels, time_embed_dim, context_dim, groups, head_dim) if present else nn.Identity()


class DownBlock(nn.Module):
    """One level on the way down: self-attention, then layers of resnet -> text attention -> resnet.

    The last resnet halves the size unless this is the deepest level.
    ``attentions[0]`` is the self-attention, ``attentions[1 + i]`` layer i's text attention.
    """

    def __init__(self, in_channels: int, out_channels: int, time_embed_dim: int, context_dim: int, layers: int,
                 groups: int, head_dim: int, attends: bool, down_sample: bool):
        super().__init__()
        self.attends = attends
        attentions = [_attention_or_nothing(in_channels, time_embed_dim, None, groups, head_dim, attends)]
        resnets_in, resnets_out = [], []
        for i in range(layers):
            resnets_in.append(ResNetBlock(in_channels if i == 0 else out_channels, out_channels, time_embed_dim,
                                          groups))
            attentions.append(_attention_or_nothing(out_channels, time_embed_dim, context_dim, groups, head_dim,
                                                    attends))
            last = i == layers - 1
            resnets_out.append(ResNetBlock(out_channels, out_channels, time_embed_dim, groups,
                                           resample="down" if down_sample and last else None))
        self.attentions = nn.ModuleList(attentions)
        self.resnets_in = nn.ModuleList(resnets_in)
        self.resnets_out = nn.ModuleList(resnets_out)

    def forward(self, x, time_embed, context, context_mask):
        if self.attends:
            x = self.attentions[0](x, time_embed)
        for resnet_in, attention, resnet_out in zip(self.resnets_in, self.attentions[1:], self.resnets_out):
            x = resnet_in(x, time_embed)
            if self.attends:
                x = attention(x, time_embed, context, context_mask)
            x = resnet_out(x, time_embed)
        return x


class UpBlock(nn.Module):
    """One level on the way up: layers of resnet -> text attention -> resnet, then self-attention.

    Its input is the level below's output joined with this level's down-block output
    (``skip_channels``; none at the deepest level); the first resnet doubles the size
    unless this is the deepest level, and the last one narrows to ``out_channels``.
    ``attentions[0]`` is the self-attention, ``attentions[1 + i]`` layer i's text attention.
    """

    def __init__(self, in_channels: int, skip_channels: int, out_channels: int, time_embed_dim: int,
                 context_dim: int, layers: int, groups: int, head_dim: int, attends: bool, up_sample: bool):
        super().__init__()
        self.attends = attends
        widths = [in_channels + skip_channels] + [in_channels] * (layers - 1) + [out_channels]
        attentions = [_attention_or_nothing(out_channels, time_embed_dim, None, groups, head_dim, attends)]
        resnets_in, resnets_out = [], []
        for i in range(layers):
            resnets_in.append(ResNetBlock(widths[i], widths[i], time_embed_dim, groups,
                                          resample="up" if up_sample and i == 0 else None))
            attentions.append(_attention_or_nothing(widths[i], time_embed_dim, context_dim, groups, head_dim,
                                                    attends))
            resnets_out.append(ResNetBlock(widths[i], widths[i + 1], time_embed_dim, groups))
        self.attentions = nn.ModuleList(attentions)
        self.resnets_in = nn.ModuleList(resnets_in)
        self.resnets_out = nn.ModuleList(resnets_out)

    def forward(self, x, time_embed, context, context_mask):
        for resnet_in, attention, resnet_out in zip(self.resnets_in, self.attentions[1:], self.resnets_out):
            x = resnet_in(x, time_embed)
            if self.attends:
                x = attention(x, time_embed, context, context_mask)
            x = resnet_out(x, time_embed)
        if self.attends:
            x = self.attentions[0](x, time_embed)
        return x


# --------------------------------------------------------------------------- the UNet


class Kandinsky3UNet(ModelMixin):
    """Kandinsky 3's UNet; config fields, defaults (the released model's) and weight names follow the reference."""

    @register_to_config
    def __init__(
        self,
        in_channels: int = 4,
        time_embedding_dim: int = 1536,
        groups: int = 32,
        attention_head_dim: int = 64,
        layers_per_block: int | Sequence[int] = 3,
        block_out_channels: Sequence[int] = (384, 768, 1536, 3072),
        cross_attention_dim: int = 4096,
        encoder_hid_dim: int = 4096,
    ):
        super().__init__()
        levels = len(block_out_channels)
        layers = _check_config(levels, layers_per_block, block_out_channels, groups, attention_head_dim,
                               time_embedding_dim, cross_attention_dim)
        init_channels = block_out_channels[0] // 2
        # widths[i] -> widths[i + 1] is level i's change of width on the way down
        widths = [init_channels, *block_out_channels]

        # 1. time and text
        self.time_proj = Timesteps(init_channels, flip_sin_to_cos=False, downscale_freq_shift=1)
        self.time_embedding = TimestepEmbedding(init_channels, time_embedding_dim)
        self.add_time_condition = AttentionPooling(time_embedding_dim, cross_attention_dim, attention_head_dim)
        self.conv_in = nn.Conv2d(in_channels, init_channels, kernel_size=3, padding=1)
        self.encoder_hid_proj = EncoderProjection(encoder_hid_dim, cross_attention_dim)

        # 2. the U: down outermost first, up deepest first
        shared = dict(time_embed_dim=time_embedding_dim, context_dim=cross_attention_dim, groups=groups,
                      head_dim=attention_head_dim)
        self.down_blocks = nn.ModuleList(
            DownBlock(widths[level], widths[level + 1], layers=layers[level], attends=_ATTENTION_AT[level],
                      down_sample=level < levels - 1, **shared)
            for level in range(levels)
        )
        self.up_blocks = nn.ModuleList()
        for step, level in enumerate(reversed(range(levels))):
            deepest = step == 0
            self.up_blocks.append(UpBlock(
                widths[level + 1], 0 if deepest else widths[level + 1], widths[level], layers=layers[level],
                attends=_ATTENTION_AT[MAX_LEVELS - 1 - step], up_sample=not deepest, **shared))

        # 3. out
        self.conv_norm_out = nn.GroupNorm(groups, init_channels)
        self.conv_act_out = nn.SiLU()
        self.conv_out = nn.Conv2d(init_channels, in_channels, kernel_size=3, padding=1)

    @property
    def size_multiple(self) -> int:
        """Latent heights and widths must be multiples of this (the way down halves them at all but one level)."""
        return 2 ** (len(self.config.block_out_channels) - 1)

    # -- attention processors ------------------------------------------------

    @property
    def attn_processors(self) -> dict[str, Any]:
        """Every attention layer's processor, keyed by ``"<module path>.processor"``."""
        return attention_layers.attn_processors(self)

    def set_attn_processor(self, processor) -> None:
        """Set one processor for every attention layer, or a dict keyed like ``attn_processors``."""
        attention_layers.set_attn_processor(self, processor)

    def set_default_attn_processor(self) -> None:
        """Use the reference's default (explicit matmul + softmax) processors."""
        attention_layers.set_default_attn_processor(self)

    # -- forward ---------------------------------------------------------------

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | float | int,
        encoder_hidden_states: torch.Tensor | None = None,
        encoder_attention_mask: torch.Tensor | None = None,
        return_dict: bool = True,
    ) -> Kandinsky3UNetOutput | tuple[torch.Tensor]:
        """Predict the noise in ``sample`` (batch, in_channels, height, width) at ``timestep``.

        ``encoder_hidden_states`` are the text encoder's (batch, tokens, encoder_hid_dim);
        ``encoder_attention_mask`` (batch, tokens) is 1 = read, 0 = ignore.
        """
        self._check_inputs(sample, encoder_hidden_states, encoder_attention_mask)
        bias = None
        if encoder_attention_mask is not None:
            bias = ((1 - encoder_attention_mask.to(sample.dtype)) * _MASKED_SCORE).unsqueeze(1)

        # 1. time vector, text tokens pooled into it
        time_embed = self.time_embedding(self._time_features(sample, timestep))
        context = self.encoder_hid_proj(encoder_hidden_states)
        time_embed = self.add_time_condition(time_embed, context, bias)

        # 2. down, keeping each level's output but the deepest's for the way up
        sample = self.conv_in(sample)
        skips = []
        for down_block in self.down_blocks:
            sample = down_block(sample, time_embed, context, bias)
            skips.append(sample)
        skips.pop()

        # 3. up
        for step, up_block in enumerate(self.up_blocks):
            if step > 0:
                sample = torch.cat([sample, skips.pop()], dim=1)
            sample = up_block(sample, time_embed, context, bias)

        # 4. out
        sample = self.conv_out(self.conv_act_out(self.conv_norm_out(sample)))
        if not return_dict:
            return (sample,)
        return Kandinsky3UNetOutput(sample=sample)

    def _time_features(self, sample: torch.Tensor, timestep) -> torch.Tensor:
        """The sinusoidal code of ``timestep``, one row per batch item, in the sample's dtype."""
        if not torch.is_tensor(timestep):
            if isinstance(timestep, bool) or not isinstance(timestep, (int, float)):
                raise TypeError(f"timestep must be a number or a tensor, got {type(timestep).__name__}")
            dtype = torch.float32 if isinstance(timestep, float) else torch.int32
            timestep = torch.tensor([timestep], dtype=dtype, device=sample.device)
        elif timestep.ndim == 0:
            timestep = timestep[None].to(sample.device)
        if timestep.ndim != 1 or timestep.shape[0] not in (1, sample.shape[0]):
            raise ValueError(f"timestep must be a number, a 0-d tensor or a 1-d tensor of length 1 or "
                             f"{sample.shape[0]} (the batch), got shape {tuple(timestep.shape)}")
        return self.time_proj(timestep.expand(sample.shape[0])).to(sample.dtype)

    def _check_inputs(self, sample, encoder_hidden_states, encoder_attention_mask) -> None:
        """Fail before any compute, naming the argument that is off and what it needs."""
        config = self.config
        if not isinstance(sample, torch.Tensor) or sample.ndim != 4 or sample.shape[1] != config.in_channels:
            got = tuple(sample.shape) if isinstance(sample, torch.Tensor) else type(sample).__name__
            raise ValueError(f"sample must have shape (batch, {config.in_channels}, height, width), got {got}")
        multiple = self.size_multiple
        if any(size % multiple for size in sample.shape[-2:]):
            raise ValueError(f"sample height and width must be multiples of {multiple} (this UNet halves them "
                             f"{len(config.block_out_channels) - 1} times), got {tuple(sample.shape[-2:])}")
        batch = sample.shape[0]
        if encoder_hidden_states is None:
            raise ValueError("encoder_hidden_states is required: Kandinsky3UNet is conditioned on text")
        if encoder_hidden_states.ndim != 3 or encoder_hidden_states.shape[0] != batch \
                or encoder_hidden_states.shape[2] != config.encoder_hid_dim:
            raise ValueError(f"encoder_hidden_states must have shape ({batch}, tokens, {config.encoder_hid_dim}), "
                             f"got {tuple(encoder_hidden_states.shape)}")
        if encoder_attention_mask is not None \
                and tuple(encoder_attention_mask.shape) != tuple(encoder_hidden_states.shape[:2]):
            raise ValueError(f"encoder_attention_mask must have shape {tuple(encoder_hidden_states.shape[:2])} "
                             f"(batch, tokens), got {tuple(encoder_attention_mask.shape)}")


def _check_config(levels: int, layers_per_block, block_out_channels, groups: int, head_dim: int,
                  time_embedding_dim: int, cross_attention_dim: int) -> list[int]:
    """Reject configs the architecture cannot run, before building; return the layer count per level."""
    if not 1 <= levels <= MAX_LEVELS:
        raise ValueError(f"block_out_channels must have 1 to {MAX_LEVELS} levels, got {list(block_out_channels)}")
    if isinstance(layers_per_block, int):
        layers = [layers_per_block] * levels
    else:
        layers = list(layers_per_block)
        if len(layers) != levels:
            raise ValueError(f"layers_per_block must be one number or one per level ({levels}), got {layers}")
    if any(not isinstance(n, int) or n < 2 for n in layers):
        raise ValueError(f"layers_per_block must be at least 2 (the way up narrows in its last layer, after a "
                         f"first layer that takes the skip), got {layers_per_block}")
    init_channels = block_out_channels[0] // 2
    for width in (init_channels, *block_out_channels):
        if width % groups:
            raise ValueError(f"every width ({init_channels} = block_out_channels[0] // 2, and "
                             f"{list(block_out_channels)}) must be a multiple of groups={groups}")
    # attention has width // attention_head_dim heads: at least one everywhere it attends
    attended = [w for level, w in enumerate(block_out_channels) if _ATTENTION_AT[level]]
    if levels < MAX_LEVELS:  # then the way up attends at its outermost level too (see _ATTENTION_AT)
        attended += [init_channels, block_out_channels[0]]
    narrowest = min(attended, default=head_dim)
    for name, width in (("time_embedding_dim", time_embedding_dim), ("the narrowest attending width", narrowest)):
        if width < head_dim:
            raise ValueError(f"{name} ({width}) must be at least attention_head_dim={head_dim}: attention "
                             f"there has width // attention_head_dim heads")
    if not isinstance(cross_attention_dim, int):
        raise ValueError(f"cross_attention_dim must be one number, got {cross_attention_dim!r}")
    return layers
