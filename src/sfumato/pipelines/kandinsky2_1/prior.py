"""Kandinsky 2.1 prior: prompt -> CLIP image embeddings for the 2.1 decoders."""

from __future__ import annotations

from ..prior import ImageEmbeddingPrior


class KandinskyPriorPipeline(ImageEmbeddingPrior):
    """Prompt -> CLIP image embeddings, sampled from noise (``interpolate`` mixes prompts and pictures).

    ``interpolate`` with ``num_images_per_prompt > 1`` gives one mixed embedding
    per image (the reference sums them all into one).
    """

    model_cpu_offload_seq = "text_encoder->prior"
