"""Pipelines: the base class, the one generation body and denoising loop, and the model families built on them.

Names load on first use: ``sfumato.pipelines.sizes`` (what sizes a checkpoint takes, from its configs)
works without importing torch, which the command line uses to check arguments before loading anything.
"""

from __future__ import annotations

from .._lazy import lazy_exports

_EXPORTS = {"base": ("DiffusionPipeline", "ImagePipelineOutput")}

__all__, __getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
