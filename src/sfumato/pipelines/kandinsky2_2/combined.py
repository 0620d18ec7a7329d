"""Kandinsky 2.2 combined pipelines: prior and decoder in one call, from a prompt.

Each holds a prior pipeline and a decoder pipeline over shared components
(named ``prior_*`` for the prior's), runs the prior to get the embeddings and
passes them, with the pictures, to the decoder.
"""

from __future__ import annotations

from typing import Any

import torch

from ..base import DiffusionPipeline
from .decoder import KandinskyV22InpaintPipeline, KandinskyV22Img2ImgPipeline, KandinskyV22Pipeline
from .prior import KandinskyV22PriorPipeline


class KandinskyV22Combined(DiffusionPipeline):
    """Shared body: the two sub-pipelines and the plumbing between them."""

    model_cpu_offload_seq = "prior_text_encoder->prior_image_encoder->unet->movq"
    _load_connected_pipes = True
    _exclude_from_cpu_offload = ["prior_prior"]
    decoder_class: type = KandinskyV22Pipeline

    def __init__(self, unet, scheduler, movq, prior_prior, prior_image_encoder, prior_text_encoder, prior_tokenizer,
                 prior_scheduler, prior_image_processor):
        super().__init__()
        self.register_modules(unet=unet, scheduler=scheduler, movq=movq, prior_prior=prior_prior,
                              prior_image_encoder=prior_image_encoder, prior_text_encoder=prior_text_encoder,
                              prior_tokenizer=prior_tokenizer, prior_scheduler=prior_scheduler,
                              prior_image_processor=prior_image_processor)
        self.prior_pipe = KandinskyV22PriorPipeline(prior=prior_prior, image_encoder=prior_image_encoder,
                                                    text_encoder=prior_text_encoder, tokenizer=prior_tokenizer,
                                                    scheduler=prior_scheduler, image_processor=prior_image_processor)
        self.decoder_pipe = self.decoder_class(unet=unet, scheduler=scheduler, movq=movq)

    def __setattr__(self, name: str, value: Any) -> None:
        super().__setattr__(name, value)
        # pipe.scheduler = ... must reach the sub-pipeline that uses it
        if name in ("unet", "scheduler", "movq") and "decoder_pipe" in self.__dict__:
            setattr(self.decoder_pipe, name, value)
        elif name.startswith("prior_") and "prior_pipe" in self.__dict__ and name != "prior_pipe":
            setattr(self.prior_pipe, name[len("prior_"):], value)

    def set_progress_bar_config(self, **kwargs: Any) -> None:
        super().set_progress_bar_config(**kwargs)
        self.prior_pipe.set_progress_bar_config(**kwargs)
        self.decoder_pipe.set_progress_bar_config(**kwargs)

    def enable_model_cpu_offload(self, gpu_id=None, device=None) -> None:
        self.prior_pipe.enable_model_cpu_offload(gpu_id=gpu_id, device=device)
        self.decoder_pipe.enable_model_cpu_offload(gpu_id=gpu_id, device=device)

    def maybe_free_model_hooks(self) -> None:
        self.prior_pipe.maybe_free_model_hooks()
        self.decoder_pipe.maybe_free_model_hooks()

    def _embeds(self, prompt, negative_prompt, num_images_per_prompt, prior_num_inference_steps, generator, latents,
                prior_guidance_scale, prior_callback_on_step_end, prior_callback_on_step_end_tensor_inputs):
        return self.prior_pipe(prompt=prompt, negative_prompt=negative_prompt,
                               num_images_per_prompt=num_images_per_prompt,
                               num_inference_steps=prior_num_inference_steps, generator=generator, latents=latents,
                               guidance_scale=prior_guidance_scale, output_type="pt", return_dict=False,
                               callback_on_step_end=prior_callback_on_step_end,
                               callback_on_step_end_tensor_inputs=prior_callback_on_step_end_tensor_inputs)


def _per_embedding(name: str, pictures: Any, prompts: int, num_images_per_prompt: int) -> Any:
    """Give every image embedding its picture: one per prompt, repeated for each image of that prompt."""
    import numpy as np
    import PIL.Image

    if isinstance(pictures, (torch.Tensor, np.ndarray)) and not (pictures.ndim == 4 and pictures.shape[0] > 1):
        return pictures  # one picture for everything: the decoder broadcasts it
    if isinstance(pictures, PIL.Image.Image):
        return pictures
    items = list(pictures) if isinstance(pictures, (list, tuple)) else [p[None] for p in pictures]
    if len(items) == 1:
        return items
    if len(items) != prompts:
        raise ValueError(f"{name} has {len(items)} pictures, but there are {prompts} prompts; "
                         f"pass one picture or one per prompt")
    repeated = [item for item in items for _ in range(num_images_per_prompt)]
    if isinstance(repeated[0], torch.Tensor):
        return torch.cat(repeated)
    if isinstance(repeated[0], np.ndarray) and repeated[0].ndim == 4:
        return np.concatenate(repeated)
    return repeated


def _count(prompt: Any) -> int:
    return len(prompt) if isinstance(prompt, (list, tuple)) else 1


class KandinskyV22CombinedPipeline(KandinskyV22Combined):
    """Prompt -> pictures with Kandinsky 2.2 (prior + decoder)."""

    decoder_class = KandinskyV22Pipeline

    @torch.no_grad()
    def __call__(self, prompt, negative_prompt=None, num_inference_steps: int = 100, guidance_scale: float = 4.0,
                 num_images_per_prompt: int = 1, height: int = 512, width: int = 512,
                 prior_guidance_scale: float = 4.0, prior_num_inference_steps: int = 25, generator=None,
                 latents=None, output_type: str | None = "pil", callback=None, callback_steps: int = 1,
                 return_dict: bool = True, prior_callback_on_step_end=None,
                 prior_callback_on_step_end_tensor_inputs: list[str] = ["latents"], callback_on_step_end=None,
                 callback_on_step_end_tensor_inputs: list[str] = ["latents"]):
        embeds, negative = self._embeds(prompt, negative_prompt, num_images_per_prompt, prior_num_inference_steps,
                                        generator, latents, prior_guidance_scale, prior_callback_on_step_end,
                                        prior_callback_on_step_end_tensor_inputs)
        return self.decoder_pipe(image_embeds=embeds, negative_image_embeds=negative, width=width, height=height,
                                 num_inference_steps=num_inference_steps, generator=generator,
                                 guidance_scale=guidance_scale, output_type=output_type, callback=callback,
                                 callback_steps=callback_steps, return_dict=return_dict,
                                 callback_on_step_end=callback_on_step_end,
                                 callback_on_step_end_tensor_inputs=callback_on_step_end_tensor_inputs)


class KandinskyV22Img2ImgCombinedPipeline(KandinskyV22Combined):
    """Prompt + picture -> pictures with Kandinsky 2.2 image-to-image."""

    decoder_class = KandinskyV22Img2ImgPipeline

    @torch.no_grad()
    def __call__(self, prompt, image, negative_prompt=None, num_inference_steps: int = 100,
                 guidance_scale: float = 4.0, strength: float = 0.3, num_images_per_prompt: int = 1,
                 height: int = 512, width: int = 512, prior_guidance_scale: float = 4.0,
                 prior_num_inference_steps: int = 25, generator=None, latents=None, output_type: str | None = "pil",
                 callback=None, callback_steps: int = 1, return_dict: bool = True, prior_callback_on_step_end=None,
                 prior_callback_on_step_end_tensor_inputs: list[str] = ["latents"], callback_on_step_end=None,
                 callback_on_step_end_tensor_inputs: list[str] = ["latents"]):
        image = _per_embedding("image", image, _count(prompt), num_images_per_prompt)
        embeds, negative = self._embeds(prompt, negative_prompt, num_images_per_prompt, prior_num_inference_steps,
                                        generator, latents, prior_guidance_scale, prior_callback_on_step_end,
                                        prior_callback_on_step_end_tensor_inputs)
        return self.decoder_pipe(image_embeds=embeds, image=image, negative_image_embeds=negative, width=width,
                                 height=height, strength=strength, num_inference_steps=num_inference_steps,
                                 generator=generator, guidance_scale=guidance_scale, output_type=output_type,
                                 callback=callback, callback_steps=callback_steps, return_dict=return_dict,
                                 callback_on_step_end=callback_on_step_end,
                                 callback_on_step_end_tensor_inputs=callback_on_step_end_tensor_inputs)


class KandinskyV22InpaintCombinedPipeline(KandinskyV22Combined):
    """Prompt + picture + mask (white = repaint) -> inpainted pictures with Kandinsky 2.2."""

    decoder_class = KandinskyV22InpaintPipeline

    @torch.no_grad()
    def __call__(self, prompt, image, mask_image, negative_prompt=None, num_inference_steps: int = 100,
                 guidance_scale: float = 4.0, num_images_per_prompt: int = 1, height: int = 512, width: int = 512,
                 prior_guidance_scale: float = 4.0, prior_num_inference_steps: int = 25, generator=None,
                 latents=None, output_type: str | None = "pil", return_dict: bool = True,
                 prior_callback_on_step_end=None, prior_callback_on_step_end_tensor_inputs: list[str] = ["latents"],
                 callback_on_step_end=None, callback_on_step_end_tensor_inputs: list[str] = ["latents"]):
        image = _per_embedding("image", image, _count(prompt), num_images_per_prompt)
        mask_image = _per_embedding("mask_image", mask_image, _count(prompt), num_images_per_prompt)
        embeds, negative = self._embeds(prompt, negative_prompt, num_images_per_prompt, prior_num_inference_steps,
                                        generator, latents, prior_guidance_scale, prior_callback_on_step_end,
                                        prior_callback_on_step_end_tensor_inputs)
        return self.decoder_pipe(image_embeds=embeds, image=image, mask_image=mask_image,
                                 negative_image_embeds=negative, width=width, height=height,
                                 num_inference_steps=num_inference_steps, generator=generator,
                                 guidance_scale=guidance_scale, output_type=output_type, return_dict=return_dict,
                                 callback_on_step_end=callback_on_step_end,
                                 callback_on_step_end_tensor_inputs=callback_on_step_end_tensor_inputs)
