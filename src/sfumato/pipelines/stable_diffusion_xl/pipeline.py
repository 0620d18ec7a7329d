"""Stable Diffusion XL: the base model and the refiner, on the Stable Diffusion family.

SDXL is Stable Diffusion with three more inputs to its UNet:

* two CLIP text encoders: the token states of both (their penultimate layers,
  side by side) are the cross-attention context, and the second encoder's
  projected (pooled) output conditions every resnet;
* micro-conditioning: the picture's original size, crop corner and target size
  (the refiner: an aesthetic score in place of the target size), embedded
  like timesteps next to the pooled text;
* a hand-off: the base model can stop ``denoising_end`` of the way through the
  schedule and return latents, which the refiner (an image-to-image or
  inpainting pipeline) continues from ``denoising_start``.

The VAE runs in float32 where its config says ``force_upcast`` (SDXL's
overflows in float16), and latents are normalised with the VAE's
``latents_mean`` / ``latents_std`` where its config gives them.
"""

from __future__ import annotations

import contextlib
import logging
import math
import numbers
from dataclasses import dataclass
from typing import Any, Iterator, Mapping

import numpy as np
import PIL.Image
import torch

from ...outputs import BaseOutput
from .. import checks
from ..generation import GenerationPipeline, Request, per_image
from ..stable_diffusion.pipeline import StableDiffusionFamily
from ..tasks import ImageToImage, Inpaint, TextToImage
from ..text import tokenize

logger = logging.getLogger("sfumato")

_MICRO_CONDITIONING = ("original_size", "crops_coords_top_left", "target_size", "negative_original_size",
                       "negative_crops_coords_top_left", "negative_target_size", "aesthetic_score",
                       "negative_aesthetic_score")
# the refiner's defaults; another value given to a pipeline that does not read aesthetic scores is an error
_AESTHETIC_DEFAULTS = {"aesthetic_score": 6.0, "negative_aesthetic_score": 2.5}


@dataclass
class StableDiffusionXLPipelineOutput(BaseOutput):
    """``images``: a list of PIL images, an array or a tensor (latents for ``output_type="latent"``)."""

    images: list[PIL.Image.Image] | np.ndarray | torch.Tensor


class StableDiffusionXLFamily(StableDiffusionFamily):
    """Shared body of the SDXL pipelines: VAE, two CLIP text encoders with their tokenizers (either encoder
    may be missing: the refiner has only the second), the UNet and the scheduler."""

    model_cpu_offload_seq = "text_encoder->text_encoder_2->image_encoder->unet->vae"
    _optional_components = ["tokenizer", "tokenizer_2", "text_encoder", "text_encoder_2", "image_encoder",
                            "feature_extractor"]
    _exclude_from_cpu_offload: list[str] = []
    _callback_tensor_inputs = ["latents", "prompt_embeds", "add_text_embeds", "add_time_ids"]
    _settings = ("force_zeros_for_empty_prompt", "add_watermarker")
    _conditioning_keywords = StableDiffusionFamily._conditioning_keywords + (
        "prompt_2", "negative_prompt_2", "pooled_prompt_embeds", "negative_pooled_prompt_embeds") + _MICRO_CONDITIONING
    output_class = StableDiffusionXLPipelineOutput
    # the reference's image-to-image and inpainting pipelines default each negative size to its positive one
    # and give the negative half the positive crop corner; its text-to-image pipeline uses the negative
    # sizes (with the negative crop corner) only when both are given
    _negative_sizes_default_each = False

    def __init__(self, vae, text_encoder, text_encoder_2, tokenizer, tokenizer_2, unet, scheduler, image_encoder=None,
                 feature_extractor=None, force_zeros_for_empty_prompt: bool = True,
                 add_watermarker: bool | None = None):
        # Stable Diffusion's own parts (the safety checker, its scheduler fixes) are not SDXL's
        super(StableDiffusionFamily, self).__init__()
        if add_watermarker:
            raise NotImplementedError("add_watermarker=True: sfumato does not watermark pictures (the reference "
                                      "does with the invisible-watermark package); pass add_watermarker=False")
        self.register_modules(vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2, tokenizer=tokenizer,
                              tokenizer_2=tokenizer_2, unet=unet, scheduler=scheduler, image_encoder=image_encoder,
                              feature_extractor=feature_extractor)
        self.register_to_config(force_zeros_for_empty_prompt=force_zeros_for_empty_prompt)

    @property
    def requires_aesthetics_score(self) -> bool:
        """Whether the UNet reads an aesthetic score instead of the target size (the refiner)."""
        return bool(self.config.get("requires_aesthetics_score", False))

    # ------------------------------------------------------------------ checks (no model runs)

    def check_conditioning(self, conditioning: dict[str, Any], request: Request) -> int:
        if conditioning["ip_adapter_image"] is not None or conditioning["ip_adapter_image_embeds"] is not None:
            raise NotImplementedError("IP-Adapter inputs (ip_adapter_image, ip_adapter_image_embeds) are not "
                                      "supported by sfumato's SDXL pipelines")
        guided = request.guidance_scale > 1 and self.unet.config.get("time_cond_proj_dim") is None
        count = self._check_prompts(conditioning, guided)
        self._check_micro_conditioning(conditioning)
        return count

    def _check_prompts(self, c: dict[str, Any], guided: bool) -> int:
        """Prompts as text or embeddings (with their pooled rows), normalised in place; the number of prompts."""
        # an absent negative prompt means zeros (the unconditional half of training), where the config says so
        zero_negatives = c["negative_prompt"] is None and self.config.force_zeros_for_empty_prompt
        for name, embeds_name in (("prompt_2", "prompt_embeds"), ("negative_prompt_2", "negative_prompt_embeds")):
            if c[name] is not None and c[embeds_name] is not None:
                raise ValueError(f"pass {name} or {embeds_name}, not both: {embeds_name} are both encoders' output")
        prompts, embeds, negatives, negative_embeds, count = checks.prompt_inputs(
            c["prompt"], c["prompt_embeds"], c["negative_prompt"], c["negative_prompt_embeds"],
            width=self.unet.config.cross_attention_dim)
        c.update(prompt=prompts, prompt_embeds=embeds, negative_prompt=negatives,
                 negative_prompt_embeds=negative_embeds, zero_negatives=zero_negatives)
        # the second encoder reads the first prompt where it gets none of its own ("" counts as none)
        c["prompt_2"] = checks.second_prompts("prompt_2", c["prompt_2"], count) or prompts
        c["negative_prompt_2"] = checks.second_prompts("negative_prompt_2", c["negative_prompt_2"], count) or negatives
        if zero_negatives and c["negative_prompt_2"] is not negatives and negative_embeds is None:
            logger.warning("negative_prompt_2 is ignored without negative_prompt: force_zeros_for_empty_prompt "
                           "makes the unconditional half zeros")
        for name, embeds_name in (("pooled_prompt_embeds", "prompt_embeds"),
                                  ("negative_pooled_prompt_embeds", "negative_prompt_embeds")):
            if c[embeds_name] is not None and c[name] is None:
                raise ValueError(f"{embeds_name} were given without {name}: SDXL also reads the pooled output of its "
                                 f"second text encoder; pass both, made by the same encoders")
            if c[name] is not None:
                c[name] = checks.as_batch(name, c[name], 2)
                if c[name].shape[0] != count:
                    raise ValueError(f"{name} has {c[name].shape[0]} rows, but there are {count} prompts")
        encodes = embeds is None or (guided and negative_embeds is None and not zero_negatives)
        self._check_text_encoders(encodes, c["clip_skip"])
        return count

    def _check_text_encoders(self, encodes: bool, clip_skip: Any) -> None:
        for number in ("", "_2"):
            if (getattr(self, f"tokenizer{number}") is None) != (getattr(self, f"text_encoder{number}") is None):
                raise ValueError(f"tokenizer{number} and text_encoder{number} come together: this pipeline has one "
                                 f"without the other")
        if encodes and self.text_encoder_2 is None:
            raise ValueError("this pipeline has no text_encoder_2 / tokenizer_2, so prompts must come as "
                             "prompt_embeds with pooled_prompt_embeds (and their negatives when guidance_scale > 1)")
        if clip_skip is None or not self._text_encoders():
            return
        layers = min(encoder.config.num_hidden_layers for encoder in self._text_encoders())
        if isinstance(clip_skip, bool) or not isinstance(clip_skip, int) or not 0 <= clip_skip < layers:
            raise ValueError(f"clip_skip must be None or the number of layers to skip before the penultimate one, "
                             f"0 to {layers - 1}, got {clip_skip!r}")

    def _check_micro_conditioning(self, c: dict[str, Any]) -> None:
        for name in ("original_size", "target_size", "negative_original_size", "negative_target_size"):
            c[name] = _pair(name, c[name], "(height, width)")
        for name in ("crops_coords_top_left", "negative_crops_coords_top_left"):
            c[name] = _pair(name, c[name], "(top, left)")
        for name, default in _AESTHETIC_DEFAULTS.items():
            if c[name] is not None:
                checks.number(name, c[name])
            if not self.requires_aesthetics_score and c[name] is not None and c[name] != default:
                raise ValueError(f"{name}={c[name]!r} was given, but this pipeline's UNet does not read aesthetic "
                                 f"scores (requires_aesthetics_score is False: it is not a refiner)")
        config = self.unet.config
        if config.get("addition_embed_type") != "text_time":
            raise ValueError(f"this unet is not an SDXL UNet: its addition_embed_type is "
                             f"{config.get('addition_embed_type')!r}, SDXL's is 'text_time'")
        given = [c[name] for name in ("pooled_prompt_embeds", "negative_pooled_prompt_embeds") if c[name] is not None]
        pooled_width = (self.text_encoder_2.config.projection_dim if self.text_encoder_2 is not None
                        else given[0].shape[-1])
        for name in ("pooled_prompt_embeds", "negative_pooled_prompt_embeds"):
            if c[name] is not None and c[name].shape[-1] != pooled_width:
                raise ValueError(f"{name} has width {c[name].shape[-1]}, but the pooled text here is {pooled_width} "
                                 f"wide (text_encoder_2's projection_dim, or pooled_prompt_embeds')")
        ids = 5 if self.requires_aesthetics_score else 6
        expected = config.projection_class_embeddings_input_dim
        passed = config.addition_time_embed_dim * ids + pooled_width
        if expected != passed:
            one_value = config.addition_time_embed_dim
            if expected == passed - one_value and ids == 6:
                hint = "it reads an aesthetic score, not the target size (a refiner): set requires_aesthetics_score=True"
            elif expected == passed + one_value and ids == 5:
                hint = "it reads the target size, not an aesthetic score: set requires_aesthetics_score=False"
            else:
                hint = "check unet.config.addition_time_embed_dim and text_encoder_2.config.projection_dim"
            raise ValueError(f"the UNet's added embedding reads {expected} features, but {ids} micro-conditioning "
                             f"values and pooled text of width {pooled_width} make {passed}; {hint}")

    # ------------------------------------------------------------------ conditioning

    def condition(self, conditioning: dict[str, Any], request: Request, guided: bool) -> dict[str, torch.Tensor]:
        self._clip_skip = conditioning["clip_skip"]
        self._cross_attention_kwargs = conditioning["cross_attention_kwargs"]
        positive, negative = self._text_embeddings(conditioning, guided)
        time_ids, negative_time_ids = self._time_ids(conditioning, request.height, request.width)
        rows = positive[0].shape[0]
        halves = [positive + (time_ids.expand(rows, -1),)]
        if guided:
            halves.insert(0, negative + (negative_time_ids.expand(rows, -1),))
        # each half is repeated per image on its own, so the rows of a sample stay aligned in all three tensors
        prompt_embeds, text_embeds, time_ids = (torch.cat([self._per_image(half[i], request.num_images_per_prompt)
                                                           for half in halves]) for i in range(3))
        return {"prompt_embeds": prompt_embeds, "add_text_embeds": text_embeds, "add_time_ids": time_ids}

    def encode_prompt(self, prompt, prompt_2=None, device=None, num_images_per_prompt: int = 1,
                      do_classifier_free_guidance: bool = True, negative_prompt=None, negative_prompt_2=None,
                      prompt_embeds=None, negative_prompt_embeds=None, pooled_prompt_embeds=None,
                      negative_pooled_prompt_embeds=None, lora_scale: float | None = None,
                      clip_skip: int | None = None):
        """``(prompt_embeds, negative_prompt_embeds, pooled_prompt_embeds, negative_pooled_prompt_embeds)`` as
        ``__call__`` makes them (the reference's method): one row per image, the negatives None without
        guidance. Embeddings given are passed through (and their missing halves made)."""
        if lora_scale is not None:
            raise NotImplementedError("lora_scale: sfumato's SDXL text encoders have no LoRA layers")
        conditioning = self.text_conditioning(locals())
        self._check_prompts(conditioning, do_classifier_free_guidance)
        positive, negative = self._text_embeddings(conditioning, do_classifier_free_guidance)
        embeds, pooled = (self._per_image(x, num_images_per_prompt, device) for x in positive)
        if negative is None:
            return embeds, None, pooled, None
        negative_embeds, negative_pooled = (self._per_image(x, num_images_per_prompt, device) for x in negative)
        return embeds, negative_embeds, pooled, negative_pooled

    def _per_image(self, tensor: torch.Tensor, num_images_per_prompt: int, device=None) -> torch.Tensor:
        return per_image(tensor.to(device=device or self._execution_device, dtype=self.model_dtype),
                         num_images_per_prompt)

    def _text_embeddings(self, c: Mapping[str, Any], guided: bool):
        """``(prompt_embeds, pooled)`` per prompt and, when ``guided``, the same of the negative prompts (else None)."""
        embeds, pooled = c["prompt_embeds"], c["pooled_prompt_embeds"]
        if embeds is None:
            embeds, encoded_pooled = self._encode_texts(c["prompt"], c["prompt_2"], clip_skip=c["clip_skip"])
            pooled = encoded_pooled if pooled is None else pooled
        if not guided:
            return (embeds, pooled), None
        negative_embeds, negative_pooled = c["negative_prompt_embeds"], c["negative_pooled_prompt_embeds"]
        if negative_embeds is None and c["zero_negatives"]:
            negative_embeds, negative_pooled = torch.zeros_like(embeds), torch.zeros_like(pooled)
        elif negative_embeds is None:
            # negative prompts are read from the penultimate layer whatever clip_skip says, as the reference does
            negative_embeds, encoded_pooled = self._encode_texts(c["negative_prompt"], c["negative_prompt_2"],
                                                                 clip_skip=None, length=embeds.shape[1])
            negative_pooled = encoded_pooled if negative_pooled is None else negative_pooled
        return (embeds, pooled), (negative_embeds, negative_pooled)

    def _text_encoders(self) -> list[Any]:
        return [encoder for encoder in (self.text_encoder, self.text_encoder_2) if encoder is not None]

    def _encode_texts(self, prompts: list[str], prompts_2: list[str], *, clip_skip: int | None,
                      length: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Both encoders' token states side by side, and the pooled (projected) output of the second.

        SDXL reads the penultimate layer without the final layer norm;
        ``clip_skip`` counts further back from it. A pipeline with one encoder
        (the refiner's ``text_encoder_2``) gives it ``prompts``, as the reference
        does: ``prompt_2`` is the second encoder's prompt where there are two.
        """
        states, pooled = [], None
        encoders = [(tokenizer, encoder) for tokenizer, encoder in ((self.tokenizer, self.text_encoder),
                                                                    (self.tokenizer_2, self.text_encoder_2))
                    if encoder is not None]
        for (tokenizer, encoder), texts in zip(encoders, (prompts, prompts_2)):
            ids, _ = tokenize(tokenizer, texts, length or tokenizer.model_max_length, self._execution_device)
            output = encoder(ids, output_hidden_states=True)
            if pooled is None:
                pooled = getattr(output, "text_embeds", None)
            states.append(output.hidden_states[-(2 + (clip_skip or 0))])
        if pooled is None:
            raise ValueError("text_encoder_2 gives no pooled output (text_embeds); SDXL needs a "
                             "CLIPTextModelWithProjection there")
        return torch.cat(states, dim=-1), pooled

    def _time_ids(self, c: Mapping[str, Any], height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The micro-conditioning of the conditional and the unconditional half, one row each.

        Sizes default to the picture's; the refiner reads an aesthetic score
        instead of the target size.
        """
        original, target = c["original_size"] or (height, width), c["target_size"] or (height, width)
        crops = c["crops_coords_top_left"]
        negative_original, negative_target = c["negative_original_size"], c["negative_target_size"]
        negative_crops = c["negative_crops_coords_top_left"]
        if self.requires_aesthetics_score:
            positive = original + crops + (c["aesthetic_score"],)
            negative = (negative_original or original) + negative_crops + (c["negative_aesthetic_score"],)
        elif self._negative_sizes_default_each:
            positive = original + crops + target
            negative = (negative_original or original) + crops + (negative_target or target)
        else:
            positive = original + crops + target
            negative = (negative_original + negative_crops + negative_target
                        if negative_original is not None and negative_target is not None else positive)
        return torch.tensor([positive], dtype=torch.float32), torch.tensor([negative], dtype=torch.float32)

    # ------------------------------------------------------------------ denoising and output

    def added_conditions(self, tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {"text_embeds": tensors["add_text_embeds"], "time_ids": tensors["add_time_ids"]}

    def outputs(self, latents: torch.Tensor, output_type: str) -> dict[str, Any]:
        # no safety checker: the pictures as decoded
        return GenerationPipeline.outputs(self, latents, output_type)

    def to_latents(self, sample: torch.Tensor) -> torch.Tensor:
        mean, std = self._latent_statistics(sample)
        if mean is None:
            return super().to_latents(sample)
        return (sample - mean) * self.vae.config.scaling_factor / std

    def from_latents(self, latents: torch.Tensor) -> torch.Tensor:
        mean, std = self._latent_statistics(latents)
        if mean is None:
            return super().from_latents(latents)
        return latents * std / self.vae.config.scaling_factor + mean

    def _latent_statistics(self, like: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Per-channel mean and standard deviation of the VAE's latents, where its config gives both."""
        mean, std = self.vae.config.get("latents_mean"), self.vae.config.get("latents_std")
        if mean is None or std is None:
            return None, None
        shape = (1, len(mean), 1, 1)
        return (torch.tensor(mean).view(shape).to(like.device, like.dtype),
                torch.tensor(std).view(shape).to(like.device, like.dtype))

    @contextlib.contextmanager
    def vae_precision(self, *, decoding: bool) -> Iterator[None]:
        """A ``force_upcast`` VAE runs in float32: always while encoding, when it is float16 while decoding
        (as the reference runs it), and returns to its own dtype afterwards."""
        original = self.vae.dtype
        upcast = self.vae.config.get("force_upcast", False) and (not decoding or original == torch.float16)
        if upcast:
            self.vae.to(dtype=torch.float32)
        try:
            yield
        finally:
            if upcast:
                self.vae.to(dtype=original)


class _ImageFamily(StableDiffusionXLFamily):
    """Image-to-image and inpainting: the refiner's pipelines, which may read an aesthetic score."""

    _settings = ("requires_aesthetics_score", "force_zeros_for_empty_prompt", "add_watermarker")
    _negative_sizes_default_each = True

    def __init__(self, vae, text_encoder, text_encoder_2, tokenizer, tokenizer_2, unet, scheduler, image_encoder=None,
                 feature_extractor=None, requires_aesthetics_score: bool = False,
                 force_zeros_for_empty_prompt: bool = True, add_watermarker: bool | None = None):
        super().__init__(vae, text_encoder, text_encoder_2, tokenizer, tokenizer_2, unet, scheduler, image_encoder,
                         feature_extractor, force_zeros_for_empty_prompt, add_watermarker)
        self.register_to_config(requires_aesthetics_score=requires_aesthetics_score)


def _pair(name: str, value: Any, meaning: str) -> tuple[float, float] | None:
    if value is None:
        return None
    if not (isinstance(value, (tuple, list)) and len(value) == 2 and all(
            isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v) for v in value)):
        raise ValueError(f"{name} must be two numbers {meaning}, got {value!r:.80}")
    return tuple(value)


# ---------------------------------------------------------------------------------------------- public pipelines


class StableDiffusionXLPipeline(StableDiffusionXLFamily):
    """Text-to-image with the SDXL base model; ``denoising_end`` stops part of the way for a refiner."""

    def __call__(self, prompt=None, prompt_2=None, height: int | None = None, width: int | None = None,
                 num_inference_steps: int = 50, timesteps: list[int] = None, sigmas: list[float] = None,
                 denoising_end: float | None = None, guidance_scale: float = 5.0, negative_prompt=None,
                 negative_prompt_2=None, num_images_per_prompt: int | None = 1, eta: float = 0.0, generator=None,
                 latents=None, prompt_embeds=None, negative_prompt_embeds=None, pooled_prompt_embeds=None,
                 negative_pooled_prompt_embeds=None, ip_adapter_image=None, ip_adapter_image_embeds=None,
                 output_type: str | None = "pil", return_dict: bool = True, cross_attention_kwargs=None,
                 guidance_rescale: float = 0.0, original_size: tuple[int, int] | None = None,
                 crops_coords_top_left: tuple[int, int] = (0, 0), target_size: tuple[int, int] | None = None,
                 negative_original_size: tuple[int, int] | None = None,
                 negative_crops_coords_top_left: tuple[int, int] = (0, 0),
                 negative_target_size: tuple[int, int] | None = None, clip_skip: int | None = None,
                 callback_on_step_end=None, callback_on_step_end_tensor_inputs: list[str] = ["latents"], **kwargs):
        return self.generate(conditioning=self.text_conditioning(locals()), task=TextToImage(),
                             request=Request.of(locals()))


class StableDiffusionXLImg2ImgPipeline(_ImageFamily):
    """Image-to-image (the refiner's pipeline): ``image`` noised to ``strength``, or a base model's latents
    continued from ``denoising_start``. The output has the picture's size."""

    def __call__(self, prompt=None, prompt_2=None, image=None, strength: float = 0.3, num_inference_steps: int = 50,
                 timesteps: list[int] = None, sigmas: list[float] = None, denoising_start: float | None = None,
                 denoising_end: float | None = None, guidance_scale: float = 5.0, negative_prompt=None,
                 negative_prompt_2=None, num_images_per_prompt: int | None = 1, eta: float = 0.0, generator=None,
                 latents=None, prompt_embeds=None, negative_prompt_embeds=None, pooled_prompt_embeds=None,
                 negative_pooled_prompt_embeds=None, ip_adapter_image=None, ip_adapter_image_embeds=None,
                 output_type: str | None = "pil", return_dict: bool = True, cross_attention_kwargs=None,
                 guidance_rescale: float = 0.0, original_size: tuple[int, int] = None,
                 crops_coords_top_left: tuple[int, int] = (0, 0), target_size: tuple[int, int] = None,
                 negative_original_size: tuple[int, int] | None = None,
                 negative_crops_coords_top_left: tuple[int, int] = (0, 0),
                 negative_target_size: tuple[int, int] | None = None, aesthetic_score: float = 6.0,
                 negative_aesthetic_score: float = 2.5, clip_skip: int | None = None, callback_on_step_end=None,
                 callback_on_step_end_tensor_inputs: list[str] = ["latents"], **kwargs):
        return self.generate(conditioning=self.text_conditioning(locals()), task=ImageToImage(image, strength),
                             request=Request.of(locals()))


class StableDiffusionXLInpaintPipeline(_ImageFamily):
    """Inpainting: repaint where ``mask_image`` is white (1), keep the rest of ``image``; a 9-channel UNet sees
    the mask and the masked picture, a 4-channel one (base or refiner) gets the known region put back after
    every step."""

    _callback_tensor_inputs = ["latents", "prompt_embeds", "add_text_embeds", "add_time_ids", "mask",
                               "masked_image_latents"]

    def __call__(self, prompt=None, prompt_2=None, image=None, mask_image=None, masked_image_latents=None,
                 height: int | None = None, width: int | None = None, padding_mask_crop: int | None = None,
                 strength: float = 0.9999, num_inference_steps: int = 50, timesteps: list[int] = None,
                 sigmas: list[float] = None, denoising_start: float | None = None, denoising_end: float | None = None,
                 guidance_scale: float = 7.5, negative_prompt=None, negative_prompt_2=None,
                 num_images_per_prompt: int | None = 1, eta: float = 0.0, generator=None, latents=None,
                 prompt_embeds=None, negative_prompt_embeds=None, pooled_prompt_embeds=None,
                 negative_pooled_prompt_embeds=None, ip_adapter_image=None, ip_adapter_image_embeds=None,
                 output_type: str | None = "pil", return_dict: bool = True, cross_attention_kwargs=None,
                 guidance_rescale: float = 0.0, original_size: tuple[int, int] = None,
                 crops_coords_top_left: tuple[int, int] = (0, 0), target_size: tuple[int, int] = None,
                 negative_original_size: tuple[int, int] | None = None,
                 negative_crops_coords_top_left: tuple[int, int] = (0, 0),
                 negative_target_size: tuple[int, int] | None = None, aesthetic_score: float = 6.0,
                 negative_aesthetic_score: float = 2.5, clip_skip: int | None = None, callback_on_step_end=None,
                 callback_on_step_end_tensor_inputs: list[str] = ["latents"], **kwargs):
        task = Inpaint(image, mask_image, strength=strength, masked_image_latents=masked_image_latents,
                       padding_mask_crop=padding_mask_crop)
        return self.generate(conditioning=self.text_conditioning(locals()), task=task, request=Request.of(locals()))
