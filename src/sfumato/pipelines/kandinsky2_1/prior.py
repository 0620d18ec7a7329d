"""Kandinsky 2.1 prior: prompt -> CLIP image embeddings for the 2.1 decoders."""

from __future__ import annotations

import torch

from ..prior import ImageEmbeddingPrior


class KandinskyPriorPipeline(ImageEmbeddingPrior):
    """Prompt -> CLIP image embeddings, sampled from noise (``interpolate`` mixes prompts and pictures).

    ``interpolate`` with ``num_images_per_prompt > 1`` gives one mixed embedding
    per image (the reference sums them all into one).
    """

    model_cpu_offload_seq = "text_encoder->prior"

    @torch.no_grad()
    def __call__(self, prompt, negative_prompt=None, num_images_per_prompt: int = 1, num_inference_steps: int = 25,
                 generator=None, latents=None, guidance_scale: float = 4.0, output_type: str | None = "pt",
                 return_dict: bool = True, callback_on_step_end=None,
                 callback_on_step_end_tensor_inputs: list[str] = ["latents"]):
        return self.sample_embeds(prompt=prompt, negative_prompt=negative_prompt,
                                  num_images_per_prompt=num_images_per_prompt,
                                  num_inference_steps=num_inference_steps, generator=generator,
                                  guidance_scale=guidance_scale, output_type=output_type, return_dict=return_dict,
                                  callback_on_step_end=callback_on_step_end,
                                  callback_on_step_end_tensor_inputs=callback_on_step_end_tensor_inputs,
                                  latents=latents)
