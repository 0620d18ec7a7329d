"""Stable Diffusion 1.x / 2.x: a CLIP-text-conditioned UNet in the latent space of an ``AutoencoderKL``.

``StableDiffusionFamily`` is the family: it encodes prompts with the CLIP text
encoder (or takes ``prompt_embeds``, e.g. from a prompt-weighting library),
runs the UNet, decodes with the VAE and passes the pictures through the
safety checker when the checkpoint has one. The three public pipelines differ
only in their task and their inputs.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np
import PIL.Image
import torch

from ...image import postprocess
from ...outputs import BaseOutput
from .. import checks, safety
from ..generation import Request, per_image
from ..tasks import ImageToImage, Inpaint, TextToImage
from ..text import clip_hidden_states, tokenize
from ..vae import VaeLatents

logger = logging.getLogger("sfumato")

# the keywords of a Stable Diffusion __call__ that say what to draw (the rest are the task's and the request's)
_CONDITIONING = ("prompt", "negative_prompt", "prompt_embeds", "negative_prompt_embeds", "clip_skip",
                 "cross_attention_kwargs", "ip_adapter_image", "ip_adapter_image_embeds")


@dataclass
class StableDiffusionPipelineOutput(BaseOutput):
    """``images`` (PIL list, array or tensor) and, per image, whether the safety checker flagged it
    (``nsfw_content_detected``; None when there is no checker or the output is latents)."""

    images: list[PIL.Image.Image] | np.ndarray | torch.Tensor
    nsfw_content_detected: list[bool] | None


class StableDiffusionFamily(VaeLatents):
    """Shared body of the Stable Diffusion pipelines: VAE, CLIP text encoder and tokenizer, UNet, scheduler,
    and the optional safety checker with its feature extractor."""

    model_cpu_offload_seq = "text_encoder->image_encoder->unet->vae"
    _optional_components = ["safety_checker", "feature_extractor", "image_encoder"]
    _exclude_from_cpu_offload = ["safety_checker"]
    _callback_tensor_inputs = ["latents", "prompt_embeds", "negative_prompt_embeds"]
    _settings = ("requires_safety_checker",)
    output_class = StableDiffusionPipelineOutput
    # scheduler config values of old checkpoints that the reference rewrites when it builds the pipeline
    _scheduler_fixes: Mapping[str, Any] = {"steps_offset": 1, "clip_sample": False}

    # the keywords of a __call__ that say what to draw (a family that reads more names them)
    _conditioning_keywords: tuple[str, ...] = _CONDITIONING

    _clip_skip: int | None = None
    _cross_attention_kwargs: dict | None = None

    def __init__(self, vae, text_encoder, tokenizer, unet, scheduler, safety_checker, feature_extractor,
                 image_encoder=None, requires_safety_checker: bool = True):
        super().__init__()
        _fix_outdated_config(scheduler, fixes=self._scheduler_fixes)
        safety.check_components(type(self), safety_checker, feature_extractor, requires_safety_checker)
        self.register_modules(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
                              safety_checker=safety_checker, feature_extractor=feature_extractor,
                              image_encoder=image_encoder)
        self.register_to_config(requires_safety_checker=requires_safety_checker)

    @classmethod
    def text_conditioning(cls, call_locals: Mapping[str, Any]) -> dict[str, Any]:
        """The prompt keywords of a ``__call__``, taken by name from its ``locals()`` (None where it has none)."""
        return {name: call_locals.get(name) for name in cls._conditioning_keywords}

    @property
    def clip_skip(self) -> int | None:
        return self._clip_skip

    @property
    def cross_attention_kwargs(self) -> dict | None:
        return self._cross_attention_kwargs

    @property
    def do_classifier_free_guidance(self) -> bool:
        # guidance-distilled UNets (a guidance embedding, time_cond_proj_dim) are never run twice
        return self._guidance_scale > 1 and self.unet.config.get("time_cond_proj_dim") is None

    # ------------------------------------------------------------------ conditioning

    def check_conditioning(self, conditioning: dict[str, Any], request: Request) -> int:
        prompts, embeds, negatives, negative_embeds, count = checks.prompt_inputs(
            conditioning["prompt"], conditioning["prompt_embeds"], conditioning["negative_prompt"],
            conditioning["negative_prompt_embeds"], width=self.unet.config.cross_attention_dim)
        if conditioning["ip_adapter_image"] is not None or conditioning["ip_adapter_image_embeds"] is not None:
            raise NotImplementedError("IP-Adapter inputs (ip_adapter_image, ip_adapter_image_embeds) are not "
                                      "supported by sfumato's Stable Diffusion pipelines")
        self._check_clip_skip(conditioning["clip_skip"])
        needs_encoder = embeds is None or (request.guidance_scale > 1 and negative_embeds is None)
        if needs_encoder and (self.text_encoder is None or self.tokenizer is None):
            raise ValueError("this pipeline has no text_encoder / tokenizer, so prompts must come as prompt_embeds "
                             "(and negative_prompt_embeds when guidance_scale > 1)")
        conditioning.update(prompt=prompts, prompt_embeds=embeds, negative_prompt=negatives,
                            negative_prompt_embeds=negative_embeds)
        return count

    def _check_clip_skip(self, clip_skip: Any) -> None:
        if clip_skip is None:
            return
        layers = self.text_encoder.config.num_hidden_layers if self.text_encoder is not None else None
        if isinstance(clip_skip, bool) or not isinstance(clip_skip, int) or clip_skip < 0 or (
                layers is not None and clip_skip >= layers):
            raise ValueError(f"clip_skip must be None or the number of text encoder layers to skip, 0 to "
                             f"{(layers or 1) - 1}, got {clip_skip!r}")

    def condition(self, conditioning: dict[str, Any], request: Request, guided: bool) -> dict[str, torch.Tensor]:
        self._clip_skip = conditioning["clip_skip"]
        self._cross_attention_kwargs = conditioning["cross_attention_kwargs"]
        n, device, dtype = request.num_images_per_prompt, self._execution_device, self.model_dtype
        positive = conditioning["prompt_embeds"]
        if positive is None:
            positive = self._encode_prompts(conditioning["prompt"], clip_skip=self._clip_skip)
        negative = None
        if guided:
            negative = conditioning["negative_prompt_embeds"]
            if negative is None:
                # the reference reads negative prompts from the last layer whatever clip_skip says; so do we,
                # for its numbers
                negative = self._encode_prompts(conditioning["negative_prompt"], clip_skip=None,
                                                length=positive.shape[1])
            negative = per_image(negative.to(device=device, dtype=dtype), n)
        positive = per_image(positive.to(device=device, dtype=dtype), n)
        return {"prompt_embeds": torch.cat([negative, positive]) if guided else positive,
                "negative_prompt_embeds": negative}

    def _encode_prompts(self, prompts: list[str], *, clip_skip: int | None, length: int | None = None) -> torch.Tensor:
        ids, mask = tokenize(self.tokenizer, prompts, length or self.tokenizer.model_max_length,
                             self._execution_device)
        use_mask = getattr(self.text_encoder.config, "use_attention_mask", False)
        return clip_hidden_states(self.text_encoder, ids, clip_skip=clip_skip,
                                  attention_mask=mask if use_mask else None)

    # ------------------------------------------------------------------ denoising and output

    def predict(self, model_input: torch.Tensor, t: torch.Tensor, tensors: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return self.unet(sample=self.with_inpaint_inputs(model_input, tensors), timestep=t,
                         encoder_hidden_states=tensors["prompt_embeds"],
                         cross_attention_kwargs=self._cross_attention_kwargs,
                         added_cond_kwargs=self.added_conditions(tensors),
                         **self.unet_residuals(model_input, t, tensors), return_dict=False)[0]

    def added_conditions(self, tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor] | None:
        """The UNet's ``added_cond_kwargs`` (SDXL: pooled text and micro-conditioning); none here."""
        return None

    def unet_residuals(self, model_input: torch.Tensor, t: torch.Tensor,
                       tensors: Mapping[str, torch.Tensor]) -> dict[str, Any]:
        """Features the UNet adds to its skips and mid stage at this step (a ControlNet's); none here."""
        return {}

    def outputs(self, latents: torch.Tensor, output_type: str) -> dict[str, Any]:
        if output_type == "latent":
            return {"images": latents, "nsfw_content_detected": None}
        pixels, flagged = safety.check_pictures(self.safety_checker, self.feature_extractor,
                                                self.decode_latents(latents), device=self._execution_device,
                                                dtype=self.model_dtype)
        # flagged pictures are black (zeros) and stay so
        denormalize = [True] * pixels.shape[0] if flagged is None else [not flag for flag in flagged]
        return {"images": postprocess(pixels, output_type, denormalize), "nsfw_content_detected": flagged}


def _fix_outdated_config(scheduler: Any, *, fixes: Mapping[str, Any]) -> None:
    """Set scheduler config fields that old checkpoints got wrong to the values their models need."""
    if scheduler is None:
        return
    wrong = {field: value for field, value in fixes.items()
             if field in scheduler.config and scheduler.config[field] != value}
    if wrong:
        logger.warning("the scheduler config of this checkpoint is outdated: %s; using %s instead (update "
                       "scheduler/scheduler_config.json to silence this)",
                       ", ".join(f"{k}={scheduler.config[k]!r}" for k in wrong),
                       ", ".join(f"{k}={v!r}" for k, v in wrong.items()))
        scheduler.register_to_config(**wrong)


class StableDiffusionPipeline(StableDiffusionFamily):
    """Text-to-image: a prompt (or its embeddings) -> pictures."""

    def __call__(self, prompt=None, height: int | None = None, width: int | None = None,
                 num_inference_steps: int = 50, timesteps: list[int] = None, sigmas: list[float] = None,
                 guidance_scale: float = 7.5, negative_prompt=None, num_images_per_prompt: int | None = 1,
                 eta: float = 0.0, generator=None, latents=None, prompt_embeds=None, negative_prompt_embeds=None,
                 ip_adapter_image=None, ip_adapter_image_embeds=None, output_type: str | None = "pil",
                 return_dict: bool = True, cross_attention_kwargs=None, guidance_rescale: float = 0.0,
                 clip_skip: int | None = None, callback_on_step_end=None,
                 callback_on_step_end_tensor_inputs: list[str] = ["latents"], **kwargs):
        return self.generate(conditioning=self.text_conditioning(locals()), task=TextToImage(),
                             request=Request.of(locals()))


class StableDiffusionImg2ImgPipeline(StableDiffusionFamily):
    """Image-to-image: ``image`` (a picture, or latents of this VAE) noised to ``strength``, then denoised
    towards the prompt. The output has the picture's size."""

    def __call__(self, prompt=None, image=None, strength: float = 0.8, num_inference_steps: int | None = 50,
                 timesteps: list[int] = None, sigmas: list[float] = None, guidance_scale: float | None = 7.5,
                 negative_prompt=None, num_images_per_prompt: int | None = 1, eta: float | None = 0.0,
                 generator=None, prompt_embeds=None, negative_prompt_embeds=None, ip_adapter_image=None,
                 ip_adapter_image_embeds=None, output_type: str | None = "pil", return_dict: bool = True,
                 cross_attention_kwargs=None, clip_skip: int = None, callback_on_step_end=None,
                 callback_on_step_end_tensor_inputs: list[str] = ["latents"], **kwargs):
        return self.generate(conditioning=self.text_conditioning(locals()), task=ImageToImage(image, strength),
                             request=Request.of(locals()))


class StableDiffusionInpaintPipeline(StableDiffusionFamily):
    """Inpainting: repaint where ``mask_image`` is white (1), keep the rest of ``image``.

    A 9-channel inpainting UNet sees the mask and the masked picture; a
    text-to-image (4-channel) UNet gets the known region put back after every step.
    """

    _callback_tensor_inputs = ["latents", "prompt_embeds", "negative_prompt_embeds", "mask", "masked_image_latents"]
    _scheduler_fixes = {"steps_offset": 1, "skip_prk_steps": True}

    def __call__(self, prompt=None, image=None, mask_image=None, masked_image_latents=None,
                 height: int | None = None, width: int | None = None, padding_mask_crop: int | None = None,
                 strength: float = 1.0, num_inference_steps: int = 50, timesteps: list[int] = None,
                 sigmas: list[float] = None, guidance_scale: float = 7.5, negative_prompt=None,
                 num_images_per_prompt: int | None = 1, eta: float = 0.0, generator=None, latents=None,
                 prompt_embeds=None, negative_prompt_embeds=None, ip_adapter_image=None, ip_adapter_image_embeds=None,
                 output_type: str | None = "pil", return_dict: bool = True, cross_attention_kwargs=None,
                 clip_skip: int = None, callback_on_step_end=None,
                 callback_on_step_end_tensor_inputs: list[str] = ["latents"], **kwargs):
        task = Inpaint(image, mask_image, strength=strength, masked_image_latents=masked_image_latents,
                       padding_mask_crop=padding_mask_crop)
        return self.generate(conditioning=self.text_conditioning(locals()), task=task, request=Request.of(locals()))
