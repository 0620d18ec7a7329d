"""Kandinsky 2.1 combined pipelines: prior and decoder in one call, from a prompt.

The reference repeats batched prompts as ``[a, b, a, b]`` against embeddings
ordered ``[a, a, b, b]``; here every image embedding gets its own prompt. As in
the reference, ``negative_prompt`` steers the prior; the decoder's
unconditional text is empty.
"""

from __future__ import annotations

from ..combined import PriorDecoderPipeline
from .decoder import KandinskyImg2ImgPipeline, KandinskyInpaintPipeline, KandinskyPipeline
from .prior import KandinskyPriorPipeline


class KandinskyCombined(PriorDecoderPipeline):
    """The 2.1 components: the decoder's text encoder, tokenizer, UNet, scheduler and MoVQ, the prior's as ``prior_*``."""

    model_cpu_offload_seq = "prior_text_encoder->prior_image_encoder->prior_prior->text_encoder->unet->movq"
    prior_class = KandinskyPriorPipeline
    decoder_takes_prompt = True

    def __init__(self, text_encoder, tokenizer, unet, scheduler, movq, prior_prior, prior_image_encoder,
                 prior_text_encoder, prior_tokenizer, prior_scheduler, prior_image_processor):
        super().__init__()
        self._assemble(locals())


class KandinskyCombinedPipeline(KandinskyCombined):
    """Prompt -> pictures with Kandinsky 2.1 (prior + decoder)."""

    decoder_class = KandinskyPipeline

    def __call__(self, prompt=None, negative_prompt=None, num_inference_steps: int = 100, guidance_scale: float = 4.0,
                 num_images_per_prompt: int = 1, height: int = 512, width: int = 512,
                 prior_guidance_scale: float = 4.0, prior_num_inference_steps: int = 25, generator=None,
                 latents=None, output_type: str | None = "pil", callback=None, callback_steps: int = 1,
                 return_dict: bool = True, *,
                 prior_prompt_embeds=None, prior_text_encoder_hidden_states=None, prior_text_mask=None,
                 prior_negative_prompt_embeds=None, prior_negative_text_encoder_hidden_states=None,
                 prior_negative_text_mask=None,
                 prompt_embeds=None, text_encoder_hidden_states=None, negative_prompt_embeds=None,
                 negative_text_encoder_hidden_states=None):
        return self.prior_then_decoder(locals())


class KandinskyImg2ImgCombinedPipeline(KandinskyCombined):
    """Prompt + picture -> pictures with Kandinsky 2.1 image-to-image."""

    decoder_class = KandinskyImg2ImgPipeline

    def __call__(self, prompt=None, image=None, negative_prompt=None, num_inference_steps: int = 100,
                 guidance_scale: float = 4.0, num_images_per_prompt: int = 1, strength: float = 0.3,
                 height: int = 512, width: int = 512, prior_guidance_scale: float = 4.0,
                 prior_num_inference_steps: int = 25, generator=None, latents=None, output_type: str | None = "pil",
                 callback=None, callback_steps: int = 1, return_dict: bool = True, *,
                 prior_prompt_embeds=None, prior_text_encoder_hidden_states=None, prior_text_mask=None,
                 prior_negative_prompt_embeds=None, prior_negative_text_encoder_hidden_states=None,
                 prior_negative_text_mask=None,
                 prompt_embeds=None, text_encoder_hidden_states=None, negative_prompt_embeds=None,
                 negative_text_encoder_hidden_states=None):
        return self.prior_then_decoder(locals())


class KandinskyInpaintCombinedPipeline(KandinskyCombined):
    """Prompt + picture + mask (white = repaint) -> inpainted pictures with Kandinsky 2.1."""

    decoder_class = KandinskyInpaintPipeline

    def __call__(self, prompt=None, image=None, mask_image=None, negative_prompt=None, num_inference_steps: int = 100,
                 guidance_scale: float = 4.0, num_images_per_prompt: int = 1, height: int = 512, width: int = 512,
                 prior_guidance_scale: float = 4.0, prior_num_inference_steps: int = 25, generator=None,
                 latents=None, output_type: str | None = "pil", callback=None, callback_steps: int = 1,
                 return_dict: bool = True, *,
                 prior_prompt_embeds=None, prior_text_encoder_hidden_states=None, prior_text_mask=None,
                 prior_negative_prompt_embeds=None, prior_negative_text_encoder_hidden_states=None,
                 prior_negative_text_mask=None,
                 prompt_embeds=None, text_encoder_hidden_states=None, negative_prompt_embeds=None,
                 negative_text_encoder_hidden_states=None):
        return self.prior_then_decoder(locals())
