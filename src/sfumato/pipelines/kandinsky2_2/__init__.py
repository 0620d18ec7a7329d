"""Kandinsky 2.2: prior (text -> CLIP image embedding) and decoders (embedding -> picture)."""

from .combined import (
    KandinskyV22CombinedPipeline,
    KandinskyV22Img2ImgCombinedPipeline,
    KandinskyV22InpaintCombinedPipeline,
)
from .decoder import (
    KandinskyV22ControlnetImg2ImgPipeline,
    KandinskyV22ControlnetPipeline,
    KandinskyV22Img2ImgPipeline,
    KandinskyV22InpaintPipeline,
    KandinskyV22Pipeline,
)
from .prior import KandinskyPriorPipelineOutput, KandinskyV22PriorEmb2EmbPipeline, KandinskyV22PriorPipeline

__all__ = [
    "KandinskyPriorPipelineOutput", "KandinskyV22CombinedPipeline", "KandinskyV22ControlnetImg2ImgPipeline",
    "KandinskyV22ControlnetPipeline", "KandinskyV22Img2ImgCombinedPipeline", "KandinskyV22Img2ImgPipeline",
    "KandinskyV22InpaintCombinedPipeline", "KandinskyV22InpaintPipeline", "KandinskyV22Pipeline",
    "KandinskyV22PriorEmb2EmbPipeline", "KandinskyV22PriorPipeline",
]
