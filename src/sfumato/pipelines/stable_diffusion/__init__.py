"""Stable Diffusion 1.x / 2.x in an ``AutoencoderKL``'s latent space: text-to-image, image-to-image, inpainting,
ControlNet, and the x2 latent / x4 upscalers."""

from .controlnet import (
    StableDiffusionControlNetFamily,
    StableDiffusionControlNetImg2ImgPipeline,
    StableDiffusionControlNetInpaintPipeline,
    StableDiffusionControlNetPipeline,
)
from .pipeline import (
    StableDiffusionFamily,
    StableDiffusionImg2ImgPipeline,
    StableDiffusionInpaintPipeline,
    StableDiffusionPipeline,
    StableDiffusionPipelineOutput,
)
from .upscale import StableDiffusionLatentUpscalePipeline, StableDiffusionUpscalePipeline

__all__ = ["StableDiffusionControlNetFamily", "StableDiffusionControlNetImg2ImgPipeline",
           "StableDiffusionControlNetInpaintPipeline", "StableDiffusionControlNetPipeline", "StableDiffusionFamily", "StableDiffusionImg2ImgPipeline",
           "StableDiffusionInpaintPipeline", "StableDiffusionLatentUpscalePipeline", "StableDiffusionPipeline",
           "StableDiffusionPipelineOutput", "StableDiffusionUpscalePipeline"]
