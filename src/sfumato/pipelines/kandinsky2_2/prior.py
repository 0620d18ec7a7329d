"""Kandinsky 2.2 priors: prompt (and picture) -> CLIP image embeddings for the 2.2 decoders."""

from __future__ import annotations

import torch

from .. import checks
from ..prior import ImageEmbeddingPrior, KandinskyPriorPipelineOutput


class KandinskyV22PriorPipeline(ImageEmbeddingPrior):
    """Prompt -> CLIP image embeddings, sampled from noise (``interpolate`` mixes prompts and pictures)."""

    model_cpu_offload_seq = "text_encoder->image_encoder->prior"


class KandinskyV22PriorEmb2EmbPipeline(ImageEmbeddingPrior):
    """Prompt + picture -> image embeddings that start from the picture's (``strength`` of the way to noise)."""

    _callback_tensor_inputs = ["latents"]

    @torch.no_grad()
    def __call__(self, prompt, image, strength: float = 0.3, negative_prompt=None, num_images_per_prompt: int = 1,
                 num_inference_steps: int = 25, generator=None, guidance_scale: float = 4.0,
                 output_type: str | None = "pt", return_dict: bool = True):
        self.check_inputs(prompt=prompt, negative_prompt=negative_prompt, num_images_per_prompt=num_images_per_prompt,
                          num_inference_steps=num_inference_steps, generator=generator, guidance_scale=guidance_scale,
                          output_type=output_type, strength=strength)  # before the image encoder runs
        start = self.start_embeds(checks.required("image", image), num_images_per_prompt)
        return self.sample_embeds(prompt=prompt, negative_prompt=negative_prompt,
                                  num_images_per_prompt=num_images_per_prompt,
                                  num_inference_steps=num_inference_steps, generator=generator,
                                  guidance_scale=guidance_scale, output_type=output_type, return_dict=return_dict,
                                  start_embeds=start, strength=strength)


__all__ = ["KandinskyPriorPipelineOutput", "KandinskyV22PriorEmb2EmbPipeline", "KandinskyV22PriorPipeline"]
