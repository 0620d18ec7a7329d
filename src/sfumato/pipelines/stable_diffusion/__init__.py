"""Stable Diffusion 1.x / 2.x: text-to-image, image-to-image and inpainting in an ``AutoencoderKL``'s latent space."""

from .pipeline import (
    StableDiffusionFamily,
    StableDiffusionImg2ImgPipeline,
    StableDiffusionInpaintPipeline,
    StableDiffusionPipeline,
    StableDiffusionPipelineOutput,
)

__all__ = ["StableDiffusionFamily", "StableDiffusionImg2ImgPipeline", "StableDiffusionInpaintPipeline",
           "StableDiffusionPipeline", "StableDiffusionPipelineOutput"]
