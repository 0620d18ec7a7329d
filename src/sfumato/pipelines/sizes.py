"""What sizes a checkpoint takes, from its config files alone (no torch, no weights)."""

from __future__ import annotations

import math
from typing import Any, Mapping


def movq_size_multiple(movq_config: Mapping[str, Any], unet_config: Mapping[str, Any]) -> int:
    """The multiple that heights and widths must have, from the MoVQ's and the UNet's configs alone.

    (The command line asks this before it loads any weights.)
    """
    scale = 2 ** (len(movq_config["block_out_channels"]) - 1)
    unet_factor = 2 ** (len(unet_config["block_out_channels"]) - 1)
    return math.lcm(scale * scale, scale * unet_factor)


def vae_size_multiple(vae_config: Mapping[str, Any]) -> int:
    """The multiple of heights and widths for a VAE's latent space (Stable Diffusion, SDXL): whole latent pixels."""
    return 2 ** (len(vae_config["block_out_channels"]) - 1)


def vae_default_size(vae_config: Mapping[str, Any], unet_config: Mapping[str, Any]) -> tuple[int, int]:
    """(height, width) a VAE-latent pipeline makes when none is given: the UNet's sample size in pixels."""
    sample = unet_config["sample_size"]
    height, width = sample if isinstance(sample, (list, tuple)) else (sample, sample)
    scale = vae_size_multiple(vae_config)
    return int(height) * scale, int(width) * scale


def upscaler_sizes(kind: str, vae_config: Mapping[str, Any], unet_config: Mapping[str, Any]) -> tuple[int, int, int]:
    """(factor, input multiple, input minimum) of a Stable Diffusion upscaler: the output is ``factor`` times the
    input picture, whose sides must be multiples of ``input multiple`` pixels and at least ``input minimum``.

    ``kind`` is "x2" (the latent upscaler: the picture is encoded, its latents doubled, and its k-diffusion UNet
    must come back to the doubled latent size, which takes at least two of its smallest steps) or "x4" (the UNet
    runs at the picture's own size and the VAE decodes ``2 ** (levels - 1)`` times larger).
    """
    scale = vae_size_multiple(vae_config)
    unet_levels = 2 ** (len(unet_config["block_out_channels"]) - 1)
    if kind == "x2":
        multiple = max(1, unet_levels // 2) * scale
        return 2, multiple, 2 * multiple
    return scale, unet_levels, unet_levels
