"""The Stable Diffusion upscalers: the x2 latent upscaler and the x4 super-resolution model.

Both denoise from noise at the upscaled size while the low-resolution picture
rides along as a model input (the ``Upscale`` task); they differ in how.

* ``StableDiffusionLatentUpscalePipeline`` (``stabilityai/sd-x2-latent-upscaler``)
  works in Stable Diffusion's latent space: ``image`` is a picture (encoded
  first) or latents of the same VAE (a pipeline's ``output_type="latent"``),
  upsampled 2x (nearest) and concatenated to the model input. Its UNet is a
  k-diffusion model: it is told ``log(sigma) / 4`` as its time, gets the noise
  level (0) and the pooled prompt as ``timestep_cond``, and its output is turned
  into the denoised latents here (``c_skip * x + c_out * F``), so the scheduler
  must be a sigma-space one with ``prediction_type="sample"`` (Euler, as shipped, or LMS).
* ``StableDiffusionUpscalePipeline`` (``stabilityai/stable-diffusion-x4-upscaler``)
  is a Stable Diffusion family member with a 7-channel UNet: the low-resolution
  picture, noised to ``noise_level`` by ``low_res_scheduler``, is concatenated
  to the latents (which have the picture's size; its own VAE decodes them 4x),
  and ``noise_level`` is the UNet's class label.

Unlike the reference, each sample gets its own noised picture from its own
generator (so ``num_images_per_prompt`` with a list of generators equals the
single runs), prompts and pictures stay paired with ``num_images_per_prompt > 1``,
and one picture serves every prompt.
"""

from __future__ import annotations

import logging
import numbers
from typing import Any, Mapping

import torch
import torch.nn.functional as F

from ...image import ImageProcessor
from ...random import randn_tensor
from .. import checks
from ..generation import Request
from ..tasks import Upscale
from ..text import tokenize
from ..vae import VaeLatents
from .pipeline import StableDiffusionFamily

logger = logging.getLogger("sfumato")

# the keywords of the x2 upscaler's __call__ that say what to draw
_X2_CONDITIONING = ("prompt", "negative_prompt", "prompt_embeds", "negative_prompt_embeds", "pooled_prompt_embeds",
                    "negative_pooled_prompt_embeds")
# the x2 UNet's noise-level features for a clean (noise level 0) picture: cos(0) and sin(0), 64 each
_CLEAN_NOISE_LEVEL = (1.0, 0.0)
_NOISE_LEVEL_FEATURES = 64
# the scaling factor of the x4 upscaler's VAE; the reference sets it on any VAE handed to this pipeline
_X4_SCALING_FACTOR = 0.08333


class StableDiffusionLatentUpscalePipeline(VaeLatents):
    """x2 upscaling in Stable Diffusion's latent space, guided by a prompt (``image``: pictures or latents)."""

    model_cpu_offload_seq = "text_encoder->unet->vae"
    #: The schedulers it runs: it denoises in sigma space and hands them the denoised latents
    #: (``prediction_type='sample'``).
    sigma_space_schedulers = ("EulerDiscreteScheduler", "LMSDiscreteScheduler")

    def __init__(self, vae, text_encoder, tokenizer, unet, scheduler):
        super().__init__()
        self.register_modules(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler)

    def __call__(self, prompt=None, image=None, num_inference_steps: int = 75, guidance_scale: float = 9.0,
                 negative_prompt=None, generator=None, latents=None, prompt_embeds=None, negative_prompt_embeds=None,
                 pooled_prompt_embeds=None, negative_pooled_prompt_embeds=None, output_type: str | None = "pil",
                 return_dict: bool = True, callback=None, callback_steps: int = 1):
        conditioning = {name: value for name, value in locals().items() if name in _X2_CONDITIONING}
        return self.generate(conditioning=conditioning, task=Upscale(image), request=Request.of(locals()))

    # ------------------------------------------------------------------ the low-resolution picture

    @property
    def image_processor(self) -> ImageProcessor:
        return ImageProcessor(vae_scale_factor=self.vae_scale_factor, vae_latent_channels=self.latent_channels,
                              resample="bicubic")

    def low_res_pixels(self, image: Any) -> torch.Tensor:
        pixels = self.preprocess_pictures(image, None, None)
        # the UNet halves the 2x latents once per level and must come back to the same size
        multiple = 2 ** (len(self.unet.config.block_out_channels) - 1)
        latent = [size // self.vae_scale_factor if pixels.shape[1] != self.latent_channels else size
                  for size in pixels.shape[-2:]]
        if any(2 * size % multiple for size in latent):
            step = multiple // 2 * self.vae_scale_factor
            raise ValueError(f"image gives latents of {tuple(latent)} (height, width), but this upscaler's UNet needs "
                             f"latent sides that are multiples of {multiple // 2}: pass pictures whose sides are "
                             f"multiples of {step} pixels (or latents of such pictures)")
        return pixels

    def upscaled_size(self, pixels: torch.Tensor) -> tuple[int, int]:
        height, width = self.picture_size(pixels)
        return 2 * height, 2 * width

    def low_res_inputs(self, pixels: torch.Tensor, *, generator: Any) -> dict[str, torch.Tensor]:
        image_latents = self.encode_pictures(pixels, generator=generator)
        # noise level 0: the conditioning latents need no rescaling
        return {"image_cond": F.interpolate(image_latents, scale_factor=2, mode="nearest")}

    # ------------------------------------------------------------------ conditioning

    def check_conditioning(self, conditioning: dict[str, Any], request: Request) -> int:
        self._check_scheduler()
        width = self.unet.config.cross_attention_dim
        prompts, embeds, negatives, negative_embeds, count = checks.prompt_inputs(
            conditioning["prompt"], conditioning["prompt_embeds"], conditioning["negative_prompt"],
            conditioning["negative_prompt_embeds"], width=width)
        pooled_width = self.unet.config.time_cond_proj_dim - 2 * _NOISE_LEVEL_FEATURES
        pooled = _pooled("pooled_prompt_embeds", conditioning["pooled_prompt_embeds"], embeds, "prompt_embeds",
                         pooled_width)
        negative_pooled = _pooled("negative_pooled_prompt_embeds", conditioning["negative_pooled_prompt_embeds"],
                                  negative_embeds, "negative_prompt_embeds", pooled_width)
        needs_encoder = embeds is None or (request.guidance_scale > 1 and negative_embeds is None)
        if needs_encoder and (self.text_encoder is None or self.tokenizer is None):
            raise ValueError("this pipeline has no text_encoder / tokenizer, so prompts must come as prompt_embeds "
                             "and pooled_prompt_embeds (and their negative_ pair when guidance_scale > 1)")
        conditioning.update(prompt=prompts, prompt_embeds=embeds, negative_prompt=negatives,
                            negative_prompt_embeds=negative_embeds, pooled_prompt_embeds=pooled,
                            negative_pooled_prompt_embeds=negative_pooled)
        return count

    def _check_scheduler(self) -> None:
        from ... import schedulers

        sigma_space = tuple(getattr(schedulers, name) for name in self.sigma_space_schedulers)
        if not isinstance(self.scheduler, sigma_space) or self.scheduler.config.prediction_type != "sample":
            got = f"{type(self.scheduler).__name__}(prediction_type={self.scheduler.config.get('prediction_type')!r})"
            raise ValueError(f"the latent upscaler denoises in sigma space and hands its scheduler the denoised "
                             f"latents: it needs {' or '.join(self.sigma_space_schedulers)} with "
                             f"prediction_type='sample', got {got}")

    def condition(self, conditioning: dict[str, Any], request: Request, guided: bool) -> dict[str, torch.Tensor]:
        device, dtype = self._execution_device, self.model_dtype
        prompts = conditioning["prompt"]
        if request.guidance_scale == 0 and prompts is not None:
            prompts = [""] * len(prompts)  # the reference's "no guidance": an empty prompt
        embeds, pooled = conditioning["prompt_embeds"], conditioning["pooled_prompt_embeds"]
        if embeds is None:
            embeds, pooled = self._encode_prompts(prompts)
        if guided:
            negative, negative_pooled = (conditioning["negative_prompt_embeds"],
                                         conditioning["negative_pooled_prompt_embeds"])
            if negative is None:
                negative, negative_pooled = self._encode_prompts(conditioning["negative_prompt"])
            embeds, pooled = torch.cat([negative, embeds]), torch.cat([negative_pooled, pooled])
        pooled = pooled.to(device=device, dtype=dtype)
        noise_level = torch.tensor(_CLEAN_NOISE_LEVEL, device=device, dtype=dtype)
        noise_level = noise_level.repeat_interleave(_NOISE_LEVEL_FEATURES).expand(pooled.shape[0], -1)
        return {"prompt_embeds": embeds.to(device=device, dtype=dtype),
                "timestep_cond": torch.cat([noise_level, pooled], dim=1)}

    def _encode_prompts(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """The text encoder's last layer (before its final norm, as this model was trained) and pooled output."""
        ids, _ = tokenize(self.tokenizer, prompts, self.tokenizer.model_max_length, self._execution_device)
        output = self.text_encoder(ids, output_hidden_states=True)
        return output.hidden_states[-1], output.pooler_output

    # ------------------------------------------------------------------ denoising

    def predict(self, model_input: torch.Tensor, t: torch.Tensor, tensors: Mapping[str, torch.Tensor]) -> torch.Tensor:
        sigma = self.scheduler.sigmas[self.scheduler.step_index]
        latents = tensors["latents"]
        latents = torch.cat([latents] * (model_input.shape[0] // latents.shape[0]))
        output = self.unet(sample=torch.cat([model_input, tensors["image_cond"]], dim=1),
                           timestep=(torch.log(sigma) * 0.25).to(model_input.device),
                           encoder_hidden_states=tensors["prompt_embeds"], timestep_cond=tensors["timestep_cond"],
                           return_dict=False)[0][:, :-1]
        # k-diffusion's denoiser with sigma_data = 1: c_skip * x + c_out * F
        return 1 / (sigma**2 + 1) * latents + sigma / ((sigma**2 + 1) ** 0.5) * output


def _pooled(name: str, value: Any, embeds: torch.Tensor | None, embeds_name: str, width: int) -> torch.Tensor | None:
    """Pooled prompt embeddings come with their token embeddings, one row each."""
    if embeds is None:
        if value is not None:
            raise ValueError(f"{name} was given without {embeds_name}; pass both (or neither: the prompt is encoded)")
        return None
    if value is None:
        raise ValueError(f"{embeds_name} need {name} too (the pooled output of the same text encoder)")
    pooled = checks.as_batch(name, value, 2)
    if pooled.shape != (embeds.shape[0], width):
        raise ValueError(f"{name} has shape {tuple(pooled.shape)}, but needs {(embeds.shape[0], width)} "
                         f"(one row per row of {embeds_name}, as wide as this UNet's pooled text input)")
    return pooled


class StableDiffusionUpscalePipeline(StableDiffusionFamily):
    """x4 super-resolution guided by a prompt: ``image`` (pictures) noised to ``noise_level``, then upscaled."""

    model_cpu_offload_seq = "text_encoder->unet->vae"
    _optional_components = ["watermarker", "safety_checker", "feature_extractor"]
    _callback_tensor_inputs = ["latents"]
    _settings = ("max_noise_level",)
    _scheduler_fixes: Mapping[str, Any] = {}

    def __init__(self, vae, text_encoder, tokenizer, unet, low_res_scheduler, scheduler, safety_checker=None,
                 feature_extractor=None, watermarker=None, max_noise_level: int = 350):
        # not the family's __init__: this pipeline has no image encoder and does not ask for a safety checker
        VaeLatents.__init__(self)
        if vae is not None and vae.config.get("scaling_factor") != _X4_SCALING_FACTOR:
            logger.warning("the VAE's scaling_factor is %s, but the x4 upscaler's is %s; using %s (fix "
                           "vae/config.json to silence this)", vae.config.get("scaling_factor"), _X4_SCALING_FACTOR,
                           _X4_SCALING_FACTOR)
            vae.register_to_config(scaling_factor=_X4_SCALING_FACTOR)
        if safety_checker is not None and feature_extractor is None:
            raise ValueError("StableDiffusionUpscalePipeline has a safety_checker but no feature_extractor to feed it; "
                             "pass feature_extractor=..., or safety_checker=None")
        self.register_modules(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                              low_res_scheduler=low_res_scheduler, scheduler=scheduler, safety_checker=safety_checker,
                              watermarker=watermarker, feature_extractor=feature_extractor)
        self.register_to_config(max_noise_level=max_noise_level)

    def __call__(self, prompt=None, image=None, num_inference_steps: int = 75, guidance_scale: float = 9.0,
                 noise_level: int = 20, negative_prompt=None, num_images_per_prompt: int | None = 1, eta: float = 0.0,
                 generator=None, latents=None, prompt_embeds=None, negative_prompt_embeds=None,
                 output_type: str | None = "pil", return_dict: bool = True, callback=None, callback_steps: int = 1,
                 cross_attention_kwargs=None, clip_skip: int = None):
        return self.generate(conditioning=self.text_conditioning(locals()),
                             task=Upscale(image, noise_level=noise_level), request=Request.of(locals()))

    # ------------------------------------------------------------------ the low-resolution picture

    @property
    def image_processor(self) -> ImageProcessor:
        return ImageProcessor(vae_scale_factor=self.vae_scale_factor, resample="bicubic")

    def low_res_pixels(self, image: Any, *, noise_level: Any) -> torch.Tensor:
        self._check_noise_level(noise_level)
        pixels = self.image_processor.preprocess(image)
        channels = self.unet.config.in_channels - self.latent_channels
        if pixels.shape[1] != channels:
            latents = " (latents?)" if pixels.shape[1] == self.latent_channels else ""
            raise ValueError(f"image has {pixels.shape[1]} channels{latents}, but the x4 upscaler takes pictures "
                             f"({channels} channels) and makes its own latents; decode latents first (e.g. "
                             f"output_type='pil' in the pipeline that made them)")
        return pixels

    def _check_noise_level(self, noise_level: Any) -> None:
        most = min(self.config.max_noise_level, self.low_res_scheduler.config.num_train_timesteps - 1)
        if isinstance(self.unet.config.get("num_class_embeds"), int):
            most = min(most, self.unet.config.num_class_embeds - 1)
        if isinstance(noise_level, bool) or not isinstance(noise_level, numbers.Integral) \
                or not 0 <= noise_level <= most:
            raise ValueError(f"noise_level must be an integer from 0 to {most} (max_noise_level), got {noise_level!r}")

    def upscaled_size(self, pixels: torch.Tensor) -> tuple[int, int]:
        return tuple(size * self.vae_scale_factor for size in pixels.shape[-2:])

    def low_res_inputs(self, pixels: torch.Tensor, *, generator: Any, noise_level: int) -> dict[str, torch.Tensor]:
        """The picture noised to ``noise_level`` (one draw per row from ``generator``) and the level per row."""
        device, dtype = self._execution_device, self.model_dtype
        pixels = pixels.to(device=device, dtype=dtype)
        noise = randn_tensor(pixels.shape, generator=generator, device=device, dtype=dtype)
        level = torch.tensor([noise_level], dtype=torch.long, device=device)
        return {"image": self.low_res_scheduler.add_noise(pixels, noise, level),
                "noise_level": level.repeat(pixels.shape[0])}

    # ------------------------------------------------------------------ denoising and output

    def predict(self, model_input: torch.Tensor, t: torch.Tensor, tensors: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return self.unet(sample=torch.cat([model_input, tensors["image"]], dim=1), timestep=t,
                         encoder_hidden_states=tensors["prompt_embeds"], class_labels=tensors["noise_level"],
                         cross_attention_kwargs=self._cross_attention_kwargs, return_dict=False)[0]

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """One picture at a time: the decoder works at 4x the latents' size, so the peak is one picture's."""
        decode = super().decode_latents
        return torch.cat([decode(row[None]) for row in latents])

    def outputs(self, latents: torch.Tensor, output_type: str) -> dict[str, Any]:
        fields = super().outputs(latents, output_type)
        if output_type == "pil" and self.watermarker is not None:
            fields["images"] = self.watermarker.apply_watermark(fields["images"])
        return fields
