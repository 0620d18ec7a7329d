"""Stable Diffusion XL: base text-to-image, the refiner's image-to-image, and inpainting."""

from .pipeline import (
    StableDiffusionXLFamily,
    StableDiffusionXLImg2ImgPipeline,
    StableDiffusionXLInpaintPipeline,
    StableDiffusionXLPipeline,
    StableDiffusionXLPipelineOutput,
)

__all__ = ["StableDiffusionXLFamily", "StableDiffusionXLImg2ImgPipeline", "StableDiffusionXLInpaintPipeline",
           "StableDiffusionXLPipeline", "StableDiffusionXLPipelineOutput"]
