"""Embeddings that turn a timestep, a class label or an image embedding into conditioning vectors.

* ``timestep_embedding`` / ``Timesteps``: the fixed sinusoidal code of a (possibly
  fractional) timestep, as in DDPM.
* ``GaussianFourierProjection``: random Fourier features of a noise level (score-SDE UNets).
* ``TimestepEmbedding``: the small MLP that maps such a code to the UNet's time vector.
* Kandinsky conditioning: ``ImageProjection`` (2.2: CLIP image embedding -> a sequence of
  cross-attention tokens), ``TextImageProjection`` (2.1: text tokens + image tokens),
  ``ImageTimeEmbedding`` / ``TextImageTimeEmbedding`` (embedding added to the time vector) and
  ``ImageHintTimeEmbedding`` (2.2 ControlNet: the same plus a small conv net that turns a
  depth-map hint into four latent channels).

Layer names match the reference so checkpoints load unchanged.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .activations import get_activation


def lookup_table(count: int, width: int) -> nn.Embedding:
    """``nn.Embedding(count, width)``, normally initialised as torch does, except on the meta device.

    Models are built on the meta device before their weights are read, and
    torch's ``normal_`` there goes through its reference ops, whose first use
    imports ``torch._dynamo``: 1.5 s of a command's start-up on a slow CPU.
    """
    weight = torch.empty(count, width)
    if weight.device.type != "meta":
        nn.init.normal_(weight)
    return nn.Embedding(count, width, _weight=weight)


def timestep_embedding(
    timesteps: torch.Tensor,
    embedding_dim: int,
    flip_sin_to_cos: bool = False,
    downscale_freq_shift: float = 1,
    scale: float = 1,
    max_period: int = 10000,
) -> torch.Tensor:
    """Sinusoidal code of a 1-D tensor of timesteps: shape ``(len(timesteps), embedding_dim)``, float32.

    Frequencies fall geometrically from 1 to ``1 / max_period``; ``flip_sin_to_cos`` puts
    the cosine half first, ``downscale_freq_shift`` moves the frequency grid (0 or 1 in
    released configs). An odd ``embedding_dim`` gets one zero column at the end.
    """
    if timesteps.ndim != 1:
        raise ValueError(f"timesteps must be a 1-D tensor, got shape {tuple(timesteps.shape)}")
    half_dim = embedding_dim // 2
    exponent = -math.log(max_period) * torch.arange(half_dim, dtype=torch.float32, device=timesteps.device)
    frequencies = torch.exp(exponent / (half_dim - downscale_freq_shift))
    angles = scale * (timesteps[:, None].float() * frequencies[None, :])
    halves = (torch.cos(angles), torch.sin(angles)) if flip_sin_to_cos else (torch.sin(angles), torch.cos(angles))
    embedding = torch.cat(halves, dim=-1)
    if embedding_dim % 2 == 1:
        embedding = nn.functional.pad(embedding, (0, 1))
    return embedding


class Timesteps(nn.Module):
    """Parameter-free module form of ``timestep_embedding`` (``UNet2DConditionModel.time_proj``)."""

    def __init__(self, num_channels: int, flip_sin_to_cos: bool, downscale_freq_shift: float, scale: int = 1):
        super().__init__()
        self.num_channels = num_channels
        self.flip_sin_to_cos = flip_sin_to_cos
        self.downscale_freq_shift = downscale_freq_shift
        self.scale = scale

    def forward(self, timesteps: torch.Tensor) -> torch.Tensor:
        return timestep_embedding(
            timesteps, self.num_channels, self.flip_sin_to_cos, self.downscale_freq_shift, self.scale
        )


class GaussianFourierProjection(nn.Module):
    """Fixed random Fourier features ``[sin(2 pi w x), cos(2 pi w x)]`` of a noise level ``x``."""

    def __init__(self, embedding_size: int = 256, scale: float = 1.0, set_W_to_weight: bool = True,
                 log: bool = True, flip_sin_to_cos: bool = False):
        super().__init__()
        # ``set_W_to_weight`` only mattered for an old key rename; the stored key is always "weight"
        self.weight = nn.Parameter(torch.randn(embedding_size) * scale, requires_grad=False)
        self.log = log
        self.flip_sin_to_cos = flip_sin_to_cos

    def forward(self, noise_level: torch.Tensor) -> torch.Tensor:
        if self.log:
            noise_level = torch.log(noise_level)
        angles = noise_level[:, None] * self.weight[None, :] * 2 * math.pi
        halves = (torch.cos(angles), torch.sin(angles)) if self.flip_sin_to_cos else (torch.sin(angles), torch.cos(angles))
        return torch.cat(halves, dim=-1)


class TimestepEmbedding(nn.Module):
    """Two-layer MLP (``linear_1`` -> activation -> ``linear_2``) from a timestep code to the time vector.

    ``cond_proj_dim`` adds a bias-free projection of an extra condition to the input
    (latent-consistency ``timestep_cond``); ``post_act_fn`` an activation at the end.
    """

    def __init__(
        self,
        in_channels: int,
        time_embed_dim: int,
        act_fn: str = "silu",
        out_dim: int | None = None,
        post_act_fn: str | None = None,
        cond_proj_dim: int | None = None,
        sample_proj_bias: bool = True,
    ):
        super().__init__()
        self.linear_1 = nn.Linear(in_channels, time_embed_dim, sample_proj_bias)
        self.cond_proj = nn.Linear(cond_proj_dim, in_channels, bias=False) if cond_proj_dim is not None else None
        self.act = get_activation(act_fn)
        self.linear_2 = nn.Linear(time_embed_dim, out_dim if out_dim is not None else time_embed_dim, sample_proj_bias)
        self.post_act = get_activation(post_act_fn) if post_act_fn is not None else None

    def forward(self, sample: torch.Tensor, condition: torch.Tensor | None = None) -> torch.Tensor:
        if condition is not None:
            sample = sample + self.cond_proj(condition)
        sample = self.linear_2(self.act(self.linear_1(sample)))
        if self.post_act is not None:
            sample = self.post_act(sample)
        return sample


class ImageProjection(nn.Module):
    """Kandinsky 2.2: one CLIP image embedding -> ``num_image_text_embeds`` layer-normed cross-attention tokens."""

    def __init__(self, image_embed_dim: int = 768, cross_attention_dim: int = 768, num_image_text_embeds: int = 32):
        super().__init__()
        self.num_image_text_embeds = num_image_text_embeds
        self.image_embeds = nn.Linear(image_embed_dim, num_image_text_embeds * cross_attention_dim)
        self.norm = nn.LayerNorm(cross_attention_dim)

    def forward(self, image_embeds: torch.Tensor) -> torch.Tensor:
        batch_size = image_embeds.shape[0]
        tokens = self.image_embeds(image_embeds.to(self.image_embeds.weight.dtype))
        return self.norm(tokens.reshape(batch_size, self.num_image_text_embeds, -1))


class TextImageProjection(nn.Module):
    """Kandinsky 2.1: image embedding -> ``num_image_text_embeds`` tokens, placed before the projected text tokens."""

    def __init__(self, text_embed_dim: int = 1024, image_embed_dim: int = 768, cross_attention_dim: int = 768,
                 num_image_text_embeds: int = 10):
        super().__init__()
        self.num_image_text_embeds = num_image_text_embeds
        self.image_embeds = nn.Linear(image_embed_dim, num_image_text_embeds * cross_attention_dim)
        self.text_proj = nn.Linear(text_embed_dim, cross_attention_dim)

    def forward(self, text_embeds: torch.Tensor, image_embeds: torch.Tensor) -> torch.Tensor:
        batch_size = text_embeds.shape[0]
        image_tokens = self.image_embeds(image_embeds).reshape(batch_size, self.num_image_text_embeds, -1)
        return torch.cat([image_tokens, self.text_proj(text_embeds)], dim=1)


class ImageTimeEmbedding(nn.Module):
    """Kandinsky 2.2: image embedding -> vector added to the time embedding (linear + LayerNorm)."""

    def __init__(self, image_embed_dim: int = 768, time_embed_dim: int = 1536):
        super().__init__()
        self.image_proj = nn.Linear(image_embed_dim, time_embed_dim)
        self.image_norm = nn.LayerNorm(time_embed_dim)

    def forward(self, image_embeds: torch.Tensor) -> torch.Tensor:
        return self.image_norm(self.image_proj(image_embeds))


class TextImageTimeEmbedding(nn.Module):
    """Kandinsky 2.1: pooled text embedding (linear + LayerNorm) plus image embedding (linear), added to time."""

    def __init__(self, text_embed_dim: int = 768, image_embed_dim: int = 768, time_embed_dim: int = 1536):
        super().__init__()
        self.text_proj = nn.Linear(text_embed_dim, time_embed_dim)
        self.text_norm = nn.LayerNorm(time_embed_dim)
        self.image_proj = nn.Linear(image_embed_dim, time_embed_dim)

    def forward(self, text_embeds: torch.Tensor, image_embeds: torch.Tensor) -> torch.Tensor:
        return self.image_proj(image_embeds) + self.text_norm(self.text_proj(text_embeds))


def _hint_encoder() -> nn.Sequential:
    """Conv stack (3 -> 4 channels, 8x smaller) that turns an RGB-like hint image into latent-sized features.

    Indices matter: the checkpoint stores ``input_hint_block.<i>.weight`` for the conv layers at even i.
    """
    widths = [(3, 16, 1), (16, 16, 1), (16, 32, 2), (32, 32, 1), (32, 96, 2), (96, 96, 1), (96, 256, 2)]
    layers: list[nn.Module] = []
    for in_ch, out_ch, stride in widths:
        layers += [nn.Conv2d(in_ch, out_ch, 3, padding=1, stride=stride), nn.SiLU()]
    layers.append(nn.Conv2d(256, 4, 3, padding=1))
    return nn.Sequential(*layers)


class ImageHintTimeEmbedding(nn.Module):
    """Kandinsky 2.2 ControlNet: image embedding -> time vector, and hint image -> 4 latent channels.

    ``forward`` returns ``(time_image_embeds, hint_features)``; the UNet concatenates the
    hint features to its input sample, which is why the ControlNet UNet has 8 input channels.
    """

    hint_channels = 3

    def __init__(self, image_embed_dim: int = 768, time_embed_dim: int = 1536):
        super().__init__()
        self.image_proj = nn.Linear(image_embed_dim, time_embed_dim)
        self.image_norm = nn.LayerNorm(time_embed_dim)
        self.input_hint_block = _hint_encoder()

    def forward(self, image_embeds: torch.Tensor, hint: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.image_norm(self.image_proj(image_embeds)), self.input_hint_block(hint)
