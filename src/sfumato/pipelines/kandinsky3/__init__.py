"""Kandinsky 3: one-stage text-to-image and image-to-image with a T5 encoder, its own UNet and the MoVQ."""

from .pipeline import Kandinsky3Img2ImgPipeline, Kandinsky3Pipeline

__all__ = ["Kandinsky3Img2ImgPipeline", "Kandinsky3Pipeline"]
