"""Kandinsky 2.2 priors: prompt (and picture) -> CLIP image embeddings for the 2.2 decoders."""

from __future__ import annotations

import torch

from .. import checks
from ..prior import TEXT_EMBEDDING_KEYWORDS, ImageEmbeddingPrior, KandinskyPriorPipelineOutput


class KandinskyV22PriorPipeline(ImageEmbeddingPrior):
    """Prompt -> CLIP image embeddings, sampled from noise (``interpolate`` mixes prompts and pictures)."""

    model_cpu_offload_seq = "text_encoder->image_encoder->prior"


class KandinskyV22PriorEmb2EmbPipeline(ImageEmbeddingPrior):
    """Prompt + picture -> image embeddings that start from the picture's (``strength`` of the way to noise)."""

    _callback_tensor_inputs = ["latents"]

    @torch.no_grad()
    def __call__(self, prompt=None, image=None, strength: float = 0.3, negative_prompt=None,
                 num_images_per_prompt: int = 1, num_inference_steps: int = 25, generator=None,
                 guidance_scale: float = 4.0, output_type: str | None = "pt", return_dict: bool = True, *,
                 prompt_embeds=None, text_encoder_hidden_states=None, text_mask=None, negative_prompt_embeds=None,
                 negative_text_encoder_hidden_states=None, negative_text_mask=None):
        """Prompt (or its text encoder outputs, as ``KandinskyV22PriorPipeline`` takes them) + picture -> embeddings."""
        text_embeddings = {name: value for name, value in locals().items() if name in TEXT_EMBEDDING_KEYWORDS}
        self.check_inputs(prompt=prompt, negative_prompt=negative_prompt, num_images_per_prompt=num_images_per_prompt,
                          num_inference_steps=num_inference_steps, generator=generator, guidance_scale=guidance_scale,
                          output_type=output_type, strength=strength,
                          text_embeddings=text_embeddings)  # before the image encoder runs
        start = self.start_embeds(checks.required("image", image), num_images_per_prompt)
        return self.sample_embeds(text_embeddings=text_embeddings, prompt=prompt, negative_prompt=negative_prompt,
                                  num_images_per_prompt=num_images_per_prompt,
                                  num_inference_steps=num_inference_steps, generator=generator,
                                  guidance_scale=guidance_scale, output_type=output_type, return_dict=return_dict,
                                  start_embeds=start, strength=strength)


__all__ = ["KandinskyPriorPipelineOutput", "KandinskyV22PriorEmb2EmbPipeline", "KandinskyV22PriorPipeline"]
