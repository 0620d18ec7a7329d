"""Kandinsky 2.1: prior (text -> CLIP image embedding) and decoders (prompt + embedding -> picture)."""

from .combined import KandinskyCombinedPipeline, KandinskyImg2ImgCombinedPipeline, KandinskyInpaintCombinedPipeline
from .decoder import KandinskyImg2ImgPipeline, KandinskyInpaintPipeline, KandinskyPipeline
from .prior import KandinskyPriorPipeline

__all__ = [
    "KandinskyCombinedPipeline", "KandinskyImg2ImgCombinedPipeline", "KandinskyImg2ImgPipeline",
    "KandinskyInpaintCombinedPipeline", "KandinskyInpaintPipeline", "KandinskyPipeline", "KandinskyPriorPipeline",
]
