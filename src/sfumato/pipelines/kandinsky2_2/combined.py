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

    def __call__(self, prompt, negative_prompt=None, num_inference_steps: int = 100, guidance_scale: float = 4.0,
                 num_images_per_prompt: int = 1, height: int = 512, width: int = 512,
                 prior_guidance_scale: float = 4.0, prior_num_inference_steps: int = 25, generator=None,
                 latents=None, output_type: str | None = "pil", callback=None, callback_steps: int = 1,
                 return_dict: bool = True, prior_callback_on_step_end=None,
                 prior_callback_on_step_end_tensor_inputs: list[str] = ["latents"], callback_on_step_end=None,
                 callback_on_step_end_tensor_inputs: list[str] = ["latents"]):
        return self.prior_then_decoder(
            prompt=prompt, negative_prompt=negative_prompt, num_images_per_prompt=num_images_per_prompt,
            prior_guidance_scale=prior_guidance_scale, prior_num_inference_steps=prior_num_inference_steps,
            generator=generator, latents=latents, pictures={},
            prior_callbacks=dict(callback_on_step_end=prior_callback_on_step_end,
                                 callback_on_step_end_tensor_inputs=prior_callback_on_step_end_tensor_inputs),
            height=height, width=width, num_inference_steps=num_inference_steps, guidance_scale=guidance_scale,
            output_type=output_type, callback=callback, callback_steps=callback_steps, return_dict=return_dict,
            callback_on_step_end=callback_on_step_end,
            callback_on_step_end_tensor_inputs=callback_on_step_end_tensor_inputs)


class KandinskyV22Img2ImgCombinedPipeline(KandinskyV22Combined):
    """Prompt + picture -> pictures with Kandinsky 2.2 image-to-image."""

    decoder_class = KandinskyV22Img2ImgPipeline

    def __call__(self, prompt, image, negative_prompt=None, num_inference_steps: int = 100,
                 guidance_scale: float = 4.0, strength: float = 0.3, num_images_per_prompt: int = 1,
                 height: int = 512, width: int = 512, prior_guidance_scale: float = 4.0,
                 prior_num_inference_steps: int = 25, generator=None, latents=None, output_type: str | None = "pil",
                 callback=None, callback_steps: int = 1, return_dict: bool = True, prior_callback_on_step_end=None,
                 prior_callback_on_step_end_tensor_inputs: list[str] = ["latents"], callback_on_step_end=None,
                 callback_on_step_end_tensor_inputs: list[str] = ["latents"]):
        return self.prior_then_decoder(
            prompt=prompt, negative_prompt=negative_prompt, num_images_per_prompt=num_images_per_prompt,
            prior_guidance_scale=prior_guidance_scale, prior_num_inference_steps=prior_num_inference_steps,
            generator=generator, latents=latents, pictures={"image": image},
            prior_callbacks=dict(callback_on_step_end=prior_callback_on_step_end,
                                 callback_on_step_end_tensor_inputs=prior_callback_on_step_end_tensor_inputs),
            height=height, width=width, strength=strength, num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale, output_type=output_type, callback=callback, callback_steps=callback_steps,
            return_dict=return_dict, callback_on_step_end=callback_on_step_end,
            callback_on_step_end_tensor_inputs=callback_on_step_end_tensor_inputs)


class KandinskyV22InpaintCombinedPipeline(KandinskyV22Combined):
    """Prompt + picture + mask (white = repaint) -> inpainted pictures with Kandinsky 2.2."""

    decoder_class = KandinskyV22InpaintPipeline

    def __call__(self, prompt, image, mask_image, negative_prompt=None, num_inference_steps: int = 100,
                 guidance_scale: float = 4.0, num_images_per_prompt: int = 1, height: int = 512, width: int = 512,
                 prior_guidance_scale: float = 4.0, prior_num_inference_steps: int = 25, generator=None,
                 latents=None, output_type: str | None = "pil", return_dict: bool = True,
                 prior_callback_on_step_end=None, prior_callback_on_step_end_tensor_inputs: list[str] = ["latents"],
                 callback_on_step_end=None, callback_on_step_end_tensor_inputs: list[str] = ["latents"]):
        return self.prior_then_decoder(
            prompt=prompt, negative_prompt=negative_prompt, num_images_per_prompt=num_images_per_prompt,
            prior_guidance_scale=prior_guidance_scale, prior_num_inference_steps=prior_num_inference_steps,
            generator=generator, latents=latents, pictures={"image": image, "mask_image": mask_image},
            prior_callbacks=dict(callback_on_step_end=prior_callback_on_step_end,
                                 callback_on_step_end_tensor_inputs=prior_callback_on_step_end_tensor_inputs),
            height=height, width=width, num_inference_steps=num_inference_steps, guidance_scale=guidance_scale,
            output_type=output_type, return_dict=return_dict, callback_on_step_end=callback_on_step_end,
            callback_on_step_end_tensor_inputs=callback_on_step_end_tensor_inputs)
