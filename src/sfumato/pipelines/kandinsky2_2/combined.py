"""Kandinsky 2.2 combined pipelines: prior and decoder in one call, from a prompt."""

from __future__ import annotations

from ..combined import PriorDecoderPipeline
from .decoder import KandinskyV22Img2ImgPipeline, KandinskyV22InpaintPipeline, KandinskyV22Pipeline
from .prior import KandinskyV22PriorPipeline


class KandinskyV22Combined(PriorDecoderPipeline):
    """The 2.2 components: the decoder's UNet, scheduler and MoVQ, and the prior's under ``prior_*``."""

    model_cpu_offload_seq = "prior_text_encoder->prior_image_encoder->unet->movq"
    prior_class = KandinskyV22PriorPipeline

    def __init__(self, unet, scheduler, movq, prior_prior, prior_image_encoder, prior_text_encoder, prior_tokenizer,
                 prior_scheduler, prior_image_processor):
        super().__init__()
        self._assemble(locals())


class KandinskyV22CombinedPipeline(KandinskyV22Combined):
    """Prompt -> pictures with Kandinsky 2.2 (prior + decoder)."""

    decoder_class = KandinskyV22Pipeline

    def __call__(self, prompt=None, negative_prompt=None, num_inference_steps: int = 100, guidance_scale: float = 4.0,
                 num_images_per_prompt: int = 1, height: int = 512, width: int = 512,
                 prior_guidance_scale: float = 4.0, prior_num_inference_steps: int = 25, generator=None,
                 latents=None, output_type: str | None = "pil", callback=None, callback_steps: int = 1,
                 return_dict: bool = True, prior_callback_on_step_end=None,
                 prior_callback_on_step_end_tensor_inputs: list[str] = ["latents"], callback_on_step_end=None,
                 callback_on_step_end_tensor_inputs: list[str] = ["latents"], *,
                 prior_prompt_embeds=None, prior_text_encoder_hidden_states=None, prior_text_mask=None,
                 prior_negative_prompt_embeds=None, prior_negative_text_encoder_hidden_states=None,
                 prior_negative_text_mask=None):
        return self.prior_then_decoder(locals())


class KandinskyV22Img2ImgCombinedPipeline(KandinskyV22Combined):
    """Prompt + picture -> pictures with Kandinsky 2.2 image-to-image."""

    decoder_class = KandinskyV22Img2ImgPipeline

    def __call__(self, prompt=None, image=None, negative_prompt=None, num_inference_steps: int = 100,
                 guidance_scale: float = 4.0, strength: float = 0.3, num_images_per_prompt: int = 1,
                 height: int = 512, width: int = 512, prior_guidance_scale: float = 4.0,
                 prior_num_inference_steps: int = 25, generator=None, latents=None, output_type: str | None = "pil",
                 callback=None, callback_steps: int = 1, return_dict: bool = True, prior_callback_on_step_end=None,
                 prior_callback_on_step_end_tensor_inputs: list[str] = ["latents"], callback_on_step_end=None,
                 callback_on_step_end_tensor_inputs: list[str] = ["latents"], *,
                 prior_prompt_embeds=None, prior_text_encoder_hidden_states=None, prior_text_mask=None,
                 prior_negative_prompt_embeds=None, prior_negative_text_encoder_hidden_states=None,
                 prior_negative_text_mask=None):
        return self.prior_then_decoder(locals())


class KandinskyV22InpaintCombinedPipeline(KandinskyV22Combined):
    """Prompt + picture + mask (white = repaint) -> inpainted pictures with Kandinsky 2.2."""

    decoder_class = KandinskyV22InpaintPipeline

    def __call__(self, prompt=None, image=None, mask_image=None, negative_prompt=None, num_inference_steps: int = 100,
                 guidance_scale: float = 4.0, num_images_per_prompt: int = 1, height: int = 512, width: int = 512,
                 prior_guidance_scale: float = 4.0, prior_num_inference_steps: int = 25, generator=None,
                 latents=None, output_type: str | None = "pil", return_dict: bool = True,
                 prior_callback_on_step_end=None, prior_callback_on_step_end_tensor_inputs: list[str] = ["latents"],
                 callback_on_step_end=None, callback_on_step_end_tensor_inputs: list[str] = ["latents"], *,
                 prior_prompt_embeds=None, prior_text_encoder_hidden_states=None, prior_text_mask=None,
                 prior_negative_prompt_embeds=None, prior_negative_text_encoder_hidden_states=None,
                 prior_negative_text_mask=None):
        return self.prior_then_decoder(locals())
