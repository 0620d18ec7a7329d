"""Pipelines: the base class, the one denoising loop, and the model families built on them."""

from .base import DiffusionPipeline, ImagePipelineOutput

__all__ = ["DiffusionPipeline", "ImagePipelineOutput"]
