"""``AutoencoderKL``: the variational image autoencoder of Stable Diffusion (and SDXL).

``encode(image).latent_dist`` is a diagonal Gaussian over the latents;
pipelines draw from it with their generator (``.sample(generator)``) or take
its mean (``.mode()``), then multiply by ``config.scaling_factor`` to get the
unit-variance latents the UNet was trained on. ``decode(latents / scaling_factor)``
gives the picture back.

Large pictures can be encoded and decoded in overlapping tiles
(``enable_tiling``), blended across the seams as the reference does, and
batches one picture at a time (``enable_slicing``, same numbers).

The encoder and decoder are the MoVQ's (``autoencoder_parts``) with plain group
norms; the encoder predicts a mean and a log-variance per latent channel.
Config fields, defaults and state-dict keys are those of ``diffusers.AutoencoderKL``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch import nn

from ..checkpoint import ModelMixin, register_to_config
from ..nn.layout import follow_input_layout
from ..outputs import BaseOutput
from ..random import randn_tensor
from .autoencoder_parts import Decoder, DecoderOutput, Encoder, LegacyAttentionKeys, check_config

__all__ = ["AutoencoderKL", "AutoencoderKLOutput", "DecoderOutput", "DiagonalGaussianDistribution"]


class DiagonalGaussianDistribution:
    """A Gaussian per latent value: ``parameters`` holds the means, then the log-variances, along dim 1."""

    def __init__(self, parameters: torch.Tensor, deterministic: bool = False):
        self.parameters = parameters
        self.mean, logvar = torch.chunk(parameters, 2, dim=1)
        self.logvar = torch.clamp(logvar, -30.0, 20.0)
        self.deterministic = deterministic
        if deterministic:
            self.std = self.var = torch.zeros_like(self.mean)
        else:
            self.std = torch.exp(0.5 * self.logvar)
            self.var = torch.exp(self.logvar)

    def sample(self, generator: torch.Generator | list[torch.Generator] | None = None) -> torch.Tensor:
        """One draw, ``mean + std * noise``; a list of generators draws one row each."""
        noise = randn_tensor(self.mean.shape, generator=generator, device=self.parameters.device,
                             dtype=self.parameters.dtype)
        return self.mean + self.std * noise

    def mode(self) -> torch.Tensor:
        return self.mean

    def kl(self, other: "DiagonalGaussianDistribution | None" = None) -> torch.Tensor:
        """KL divergence to ``other`` (default: the standard normal), summed per sample."""
        if self.deterministic:
            return torch.Tensor([0.0])
        if other is None:
            terms = self.mean.pow(2) + self.var - 1.0 - self.logvar
        else:
            terms = ((self.mean - other.mean).pow(2) / other.var + self.var / other.var - 1.0 - self.logvar
                     + other.logvar)
        return 0.5 * terms.sum(dim=[1, 2, 3])

    def nll(self, sample: torch.Tensor, dims: tuple[int, ...] = (1, 2, 3)) -> torch.Tensor:
        """Negative log-likelihood of ``sample``, summed over ``dims``."""
        if self.deterministic:
            return torch.Tensor([0.0])
        return 0.5 * torch.sum(np.log(2.0 * np.pi) + self.logvar + (sample - self.mean).pow(2) / self.var,
                               dim=list(dims))


@dataclass
class AutoencoderKLOutput(BaseOutput):
    """What ``AutoencoderKL.encode`` returns: the posterior ``latent_dist`` over the latents."""

    latent_dist: DiagonalGaussianDistribution


class AutoencoderKL(LegacyAttentionKeys, ModelMixin):
    """Variational autoencoder: ``encoder`` -> ``quant_conv`` -> Gaussian -> ``post_quant_conv`` -> ``decoder``."""

    @register_to_config
    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int = 3,
        down_block_types: tuple[str, ...] = ("DownEncoderBlock2D",),
        up_block_types: tuple[str, ...] = ("UpDecoderBlock2D",),
        block_out_channels: tuple[int, ...] = (64,),
        layers_per_block: int = 1,
        act_fn: str = "silu",
        latent_channels: int = 4,
        norm_num_groups: int = 32,
        sample_size: int = 32,
        scaling_factor: float = 0.18215,
        shift_factor: float | None = None,
        latents_mean: tuple[float, ...] | None = None,
        latents_std: tuple[float, ...] | None = None,
        force_upcast: bool = True,
        use_quant_conv: bool = True,
        use_post_quant_conv: bool = True,
        mid_block_add_attention: bool = True,
    ):
        super().__init__()
        check_config(down_block_types, up_block_types, block_out_channels, layers_per_block, act_fn, norm_num_groups)
        blocks = tuple(block_out_channels)
        # the encoder predicts a mean and a log-variance per latent channel
        self.encoder = Encoder(in_channels, 2 * latent_channels, tuple(down_block_types), blocks, layers_per_block,
                               norm_num_groups, act_fn, mid_block_add_attention)
        self.decoder = Decoder(latent_channels, out_channels, tuple(up_block_types), blocks, layers_per_block,
                               norm_num_groups, act_fn, "group", mid_block_add_attention)
        self.quant_conv = nn.Conv2d(2 * latent_channels, 2 * latent_channels, 1) if use_quant_conv else None
        self.post_quant_conv = nn.Conv2d(latent_channels, latent_channels, 1) if use_post_quant_conv else None
        # channels-last after the mid-block attention: weights follow, instead of a copy per call
        follow_input_layout(self)

        self.use_slicing = False
        self.use_tiling = False
        # tiles are sample_size pixels (sample_size / 2**(levels-1) latents) and overlap by a quarter
        pixels = sample_size[0] if isinstance(sample_size, (list, tuple)) else sample_size
        self.tile_sample_min_size = int(pixels)
        self.tile_latent_min_size = int(pixels / 2 ** (len(blocks) - 1))
        self.tile_overlap_factor = 0.25

    # ------------------------------------------------------------------ public API

    def encode(self, x: torch.Tensor, return_dict: bool = True) -> AutoencoderKLOutput | tuple:
        """Pictures (batch, in_channels, h, w) in [-1, 1] -> the posterior over latents (batch, latent_channels, ..)."""
        self._check_input("x", x, self.config.in_channels, "pictures")
        moments = self._per_sample(self._encode, x)
        posterior = DiagonalGaussianDistribution(moments)
        return AutoencoderKLOutput(latent_dist=posterior) if return_dict else (posterior,)

    def decode(self, z: torch.Tensor, return_dict: bool = True, generator=None) -> DecoderOutput | tuple:
        """Latents (divided by ``scaling_factor``) -> pictures in about [-1, 1]. ``generator`` is unused."""
        self._check_input("z", z, self.config.latent_channels, "latents")
        decoded = self._per_sample(self._decode, z)
        return DecoderOutput(sample=decoded) if return_dict else (decoded,)

    def forward(self, sample: torch.Tensor, sample_posterior: bool = False, return_dict: bool = True,
                generator: torch.Generator | None = None) -> DecoderOutput | tuple:
        """Encode and decode ``sample``, through a draw from the posterior or its mean."""
        posterior = self.encode(sample).latent_dist
        latents = posterior.sample(generator=generator) if sample_posterior else posterior.mode()
        decoded = self.decode(latents).sample
        return DecoderOutput(sample=decoded) if return_dict else (decoded,)

    def tiled_encode(self, x: torch.Tensor, return_dict: bool = True) -> AutoencoderKLOutput | tuple:
        """Encode in overlapping tiles whatever ``use_tiling`` says (the reference's public method)."""
        posterior = DiagonalGaussianDistribution(self._tiled(x, self._encode_tile, self.tile_sample_min_size,
                                                             self.tile_latent_min_size))
        return AutoencoderKLOutput(latent_dist=posterior) if return_dict else (posterior,)

    def tiled_decode(self, z: torch.Tensor, return_dict: bool = True) -> DecoderOutput | tuple:
        """Decode in overlapping tiles whatever ``use_tiling`` says (the reference's public method)."""
        decoded = self._tiled(z, self._decode_tile, self.tile_latent_min_size, self.tile_sample_min_size)
        return DecoderOutput(sample=decoded) if return_dict else (decoded,)

    def enable_tiling(self) -> None:
        """Encode and decode large pictures in overlapping tiles: memory stays flat, seams are blended."""
        self.use_tiling = True

    def disable_tiling(self) -> None:
        self.use_tiling = False

    def enable_slicing(self) -> None:
        """Encode and decode one picture of a batch at a time: less peak memory, same numbers."""
        self.use_slicing = True

    def disable_slicing(self) -> None:
        self.use_slicing = False

    # ------------------------------------------------------------------ internals

    def _per_sample(self, run: Callable[[torch.Tensor], torch.Tensor], batch: torch.Tensor) -> torch.Tensor:
        if self.use_slicing and batch.shape[0] > 1:
            return torch.cat([run(part) for part in batch.split(1)])
        return run(batch)

    def _encode(self, x: torch.Tensor) -> torch.Tensor:
        if self.use_tiling and max(x.shape[-2:]) > self.tile_sample_min_size:
            return self._tiled(x, self._encode_tile, self.tile_sample_min_size, self.tile_latent_min_size)
        return self._encode_tile(x)

    def _decode(self, z: torch.Tensor) -> torch.Tensor:
        if self.use_tiling and max(z.shape[-2:]) > self.tile_latent_min_size:
            return self._tiled(z, self._decode_tile, self.tile_latent_min_size, self.tile_sample_min_size)
        return self._decode_tile(z)

    def _encode_tile(self, x: torch.Tensor) -> torch.Tensor:
        moments = self.encoder(x)
        return moments if self.quant_conv is None else self.quant_conv(moments)

    def _decode_tile(self, z: torch.Tensor) -> torch.Tensor:
        if self.post_quant_conv is not None:
            z = self.post_quant_conv(z)
        return self.decoder(z)

    def _tiled(self, inputs: torch.Tensor, run: Callable[[torch.Tensor], torch.Tensor], tile_in: int,
               tile_out: int) -> torch.Tensor:
        """``run`` over tiles of ``tile_in`` pixels, a quarter overlapping; outputs of ``tile_out`` cross-faded.

        Tiles are blended in reading order, each with its (already blended) upper
        and left neighbours, then cropped to the stride; the reference does the same.
        """
        stride = int(tile_in * (1 - self.tile_overlap_factor))
        extent = int(tile_out * self.tile_overlap_factor)
        kept = tile_out - extent
        height, width = inputs.shape[-2:]
        rows = [[run(inputs[:, :, top: top + tile_in, left: left + tile_in]) for left in range(0, width, stride)]
                for top in range(0, height, stride)]
        for i, row in enumerate(rows):
            for j, tile in enumerate(row):
                if i > 0:
                    _cross_fade(rows[i - 1][j], tile, extent, dim=2)
                if j > 0:
                    _cross_fade(row[j - 1], tile, extent, dim=3)
        return torch.cat([torch.cat([tile[:, :, :kept, :kept] for tile in row], dim=3) for row in rows], dim=2)

    def _check_input(self, name: str, value: torch.Tensor, channels: int, what: str) -> None:
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor of {what} (batch, {channels}, height, width), "
                            f"got {type(value).__name__}")
        if value.ndim != 4 or value.shape[1] != channels:
            raise ValueError(f"{name} must be {what} of shape (batch, {channels}, height, width), "
                             f"got shape {tuple(value.shape)}")
        if not value.is_floating_point():
            raise TypeError(f"{name} must be floating-point {what}, got dtype {value.dtype}")


def _cross_fade(before: torch.Tensor, after: torch.Tensor, extent: int, dim: int) -> None:
    """Blend the first ``extent`` rows (dim 2) or columns (dim 3) of ``after`` with the last ones of ``before``.

    Linearly from all ``before`` to all ``after``; ``after`` is changed in place.
    """
    extent = min(before.shape[dim], after.shape[dim], extent)
    if extent == 0:
        return
    ramp = torch.arange(extent, dtype=torch.float64) / extent
    shape = (-1, 1) if dim == 2 else (1, -1)
    weight_after = ramp.to(after.dtype).view(shape)
    weight_before = (1 - ramp).to(after.dtype).view(shape)
    head = after.narrow(dim, 0, extent)
    head.copy_(before.narrow(dim, before.shape[dim] - extent, extent) * weight_before + head * weight_after)
