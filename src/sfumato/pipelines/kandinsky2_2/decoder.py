"""Kandinsky 2.2 decoders: image embeddings -> picture, through a UNet and the MoVQ.

The five public pipelines differ only in their inputs: text-to-image starts
from noise; image-to-image from a noised picture (``strength``); inpainting
also feeds the kept region to the UNet and puts it back after every step;
ControlNet adds a ``hint`` (a depth map). ``KandinskyV22Decoder.generate``
does all of it once; each class states its ``__call__`` and hands over.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch

from ...image import ImageProcessor, kandinsky_latent_mask, postprocess, prepare_mask_and_masked_image
from ...image.processor import OUTPUT_TYPES
from ..base import DiffusionPipeline, ImagePipelineOutput
from ..loop import check_callback_inputs, denoise, noise_latents, noised_image_latents, timesteps_for_strength
from .. import checks


class KandinskyV22Decoder(DiffusionPipeline):
    """Shared body of the 2.2 decoder pipelines: a UNet, a scheduler and the MoVQ."""

    model_cpu_offload_seq = "unet->movq"
    _callback_tensor_inputs = ["latents", "image_embeds", "negative_image_embeds"]
    # output_type="pt" gives the MoVQ's raw [-1, 1] output in the reference's text-to-image,
    # inpaint and ControlNet pipelines and [0, 1] in its image-to-image ones; we keep its numbers
    pt_output_in_unit_range = False

    def __init__(self, unet, scheduler, movq):
        super().__init__()
        self.register_modules(unet=unet, scheduler=scheduler, movq=movq)

    @property
    def movq_scale_factor(self) -> int:
        return 2 ** (len(self.movq.config.block_out_channels) - 1)

    @property
    def image_processor(self) -> ImageProcessor:
        return ImageProcessor(vae_scale_factor=self.movq_scale_factor, resample="bicubic", reducing_gap=1)

    def size_multiple(self) -> int:
        """Heights and widths must be multiples of this, so every level of the UNet gets whole pixels."""
        unet_factor = 2 ** (len(self.unet.config.block_out_channels) - 1)
        scale = self.movq_scale_factor
        return math.lcm(scale * scale, scale * unet_factor)

    @torch.no_grad()
    def generate(
        self,
        image_embeds,
        negative_image_embeds,
        height: int,
        width: int,
        num_inference_steps: int,
        guidance_scale: float,
        num_images_per_prompt: int = 1,
        generator=None,
        latents: torch.Tensor | None = None,
        output_type: str | None = "pil",
        return_dict: bool = True,
        callback_on_step_end: Callable | None = None,
        callback_on_step_end_tensor_inputs: list[str] | None = None,
        image=None,
        strength: float | None = None,
        mask_image=None,
        hint=None,
        callback: Callable | None = None,
        callback_steps: int = 1,
    ):
        """Validate everything, then: starting latents -> denoising loop -> MoVQ decode."""
        output_type = output_type or "pil"
        checks.one_of("output_type", output_type, OUTPUT_TYPES)
        checks.positive_int("num_inference_steps", num_inference_steps)
        checks.positive_int("num_images_per_prompt", num_images_per_prompt)
        checks.number("guidance_scale", guidance_scale)
        checks.size(height, width, self.size_multiple())
        if strength is not None:
            checks.strength(strength, num_inference_steps)
        check_callback_inputs(self, callback_on_step_end_tensor_inputs)
        callback_on_step_end = checks.merge_legacy_callback(callback_on_step_end, callback, callback_steps,
                                                            self.scheduler)
        embeds, negative = checks.embeds_pair(image_embeds, negative_image_embeds)
        batch = embeds.shape[0]
        latent_size = (height // self.movq_scale_factor, width // self.movq_scale_factor)
        if hint is not None:
            # the UNet's hint network downsamples by 8 to meet the latents
            hint = checks.hint(hint, batch, (latent_size[0] * 8, latent_size[1] * 8))
        if image is not None and mask_image is None:
            image = self.image_processor.preprocess(image, height, width)
            checks.batch_matches("image", image.shape[0], batch)

        device = self._execution_device
        dtype = self.unet.dtype
        self._guidance_scale = guidance_scale
        n = num_images_per_prompt
        guided = self.do_classifier_free_guidance
        embeds = embeds.repeat_interleave(n, dim=0).to(device=device, dtype=dtype)
        negative = negative.repeat_interleave(n, dim=0).to(device=device, dtype=dtype)
        condition = torch.cat([negative, embeds]) if guided else embeds
        tensors: dict[str, Any] = {"image_embeds": condition, "negative_image_embeds": negative}
        if hint is not None:
            hint = hint.repeat_interleave(n, dim=0).to(device=device, dtype=dtype)
            tensors["hint"] = torch.cat([hint, hint]) if guided else hint

        self.scheduler.set_timesteps(num_inference_steps, device=device)
        timesteps = self.scheduler.timesteps
        after_step = None
        if mask_image is not None:
            keep, image_latents = self._inpaint_inputs(image, mask_image, height, width, batch, device, dtype)
            keep = keep.repeat_interleave(n, dim=0)
            image_latents = image_latents.repeat_interleave(n, dim=0)
            masked = image_latents * keep
            tensors["mask_image"] = torch.cat([keep, keep]) if guided else keep
            tensors["masked_image"] = torch.cat([masked, masked]) if guided else masked
            shape = (batch * n, self.movq.config.latent_channels, *latent_size)
            latents = noise_latents(shape, self.scheduler, generator, device, dtype, latents)
            after_step = _keep_known_region(self.scheduler, timesteps, image_latents, keep, noise=latents.clone())
        elif image is not None:
            timesteps = timesteps_for_strength(self.scheduler, num_inference_steps, strength)
            image_latents = self.movq.encode(image.to(device=device, dtype=dtype))["latents"]
            image_latents = _broadcast(image_latents, batch).repeat_interleave(n, dim=0)
            latents = noised_image_latents(image_latents, self.scheduler, timesteps[:1], generator)
        else:
            shape = (batch * n, self.movq.config.latent_channels, *latent_size)
            latents = noise_latents(shape, self.scheduler, generator, device, dtype, latents)

        def predict(model_input, t, tensors):
            if "mask_image" in tensors:
                model_input = torch.cat([model_input, tensors["masked_image"], tensors["mask_image"]], dim=1)
            added = {"image_embeds": tensors["image_embeds"]}
            if "hint" in tensors:
                added["hint"] = tensors["hint"]
            return self.unet(sample=model_input, timestep=t, encoder_hidden_states=None,
                             added_cond_kwargs=added, return_dict=False)[0]

        latents = denoise(self, latents, timesteps, predict, guidance_scale, guided, generator=generator,
                          after_step=after_step, callback_on_step_end=callback_on_step_end,
                          callback_on_step_end_tensor_inputs=callback_on_step_end_tensor_inputs or ["latents"],
                          tensors=tensors)
        if mask_image is not None:
            latents = keep * image_latents + (1 - keep) * latents
        if output_type == "latent":
            images = latents
        else:
            decoded = self.movq.decode(latents, force_not_quantize=True)["sample"]
            images = postprocess(decoded, output_type, denormalize_pt=self.pt_output_in_unit_range)
        self.maybe_free_model_hooks()
        return ImagePipelineOutput(images=images) if return_dict else (images,)

    def _inpaint_inputs(self, image, mask_image, height, width, batch, device, dtype):
        """Kept-region mask (1 = keep) at latent size, and the picture's latents, one per sample."""
        keep, image = prepare_mask_and_masked_image(image, mask_image, height, width)
        checks.batch_matches("image", image.shape[0], batch)
        checks.batch_matches("mask_image", keep.shape[0], batch)
        if keep.shape[-2:] != image.shape[-2:]:
            raise ValueError(
                f"mask_image has size {tuple(keep.shape[-2:])} (height, width), but image has "
                f"{tuple(image.shape[-2:])}; they must be the same size"
            )
        if tuple(image.shape[-2:]) != (height, width):
            raise ValueError(
                f"image has size {tuple(image.shape[-2:])} (height, width), but height and width ask for "
                f"{(height, width)}; pass a picture of that size or PIL images (which are resized)"
            )
        image_latents = self.movq.encode(image.to(device=device, dtype=dtype))["latents"]
        keep = kandinsky_latent_mask(keep.to(device=device, dtype=dtype), image_latents.shape[-2:])
        return _broadcast(keep, batch), _broadcast(image_latents, batch)


def _broadcast(tensor: torch.Tensor, batch: int) -> torch.Tensor:
    """One picture (or mask) for every prompt: repeat a batch of 1 to ``batch``."""
    return tensor.expand(batch, *tensor.shape[1:]) if tensor.shape[0] == 1 and batch > 1 else tensor


def _keep_known_region(scheduler, timesteps, image_latents, keep, noise):
    """After each step, put back the kept region, noised to the level of the next step."""

    def blend(latents: torch.Tensor, i: int, t: torch.Tensor) -> torch.Tensor:
        known = image_latents
        if i < len(timesteps) - 1:
            known = scheduler.add_noise(image_latents, noise, torch.tensor([timesteps[i + 1]]))
        return keep * known + (1 - keep) * latents

    return blend


class KandinskyV22Pipeline(KandinskyV22Decoder):
    """Text-to-image decoder of Kandinsky 2.2: image embeddings (from the prior) -> pictures."""

    def __call__(self, image_embeds, negative_image_embeds, height: int = 512, width: int = 512,
                 num_inference_steps: int = 100, guidance_scale: float = 4.0, num_images_per_prompt: int = 1,
                 generator=None, latents=None, output_type: str | None = "pil", return_dict: bool = True,
                 callback_on_step_end=None, callback_on_step_end_tensor_inputs: list[str] = ["latents"], **kwargs):
        return self.generate(image_embeds, negative_image_embeds, height, width, num_inference_steps, guidance_scale,
                             num_images_per_prompt, generator, latents, output_type, return_dict,
                             callback_on_step_end, callback_on_step_end_tensor_inputs, **kwargs)


class KandinskyV22Img2ImgPipeline(KandinskyV22Decoder):
    """Image-to-image: the picture is noised to ``strength`` and denoised towards the embeddings."""

    pt_output_in_unit_range = True

    def __call__(self, image_embeds, image, negative_image_embeds, height: int = 512, width: int = 512,
                 num_inference_steps: int = 100, guidance_scale: float = 4.0, strength: float = 0.3,
                 num_images_per_prompt: int = 1, generator=None, output_type: str | None = "pil",
                 return_dict: bool = True, callback_on_step_end=None,
                 callback_on_step_end_tensor_inputs: list[str] = ["latents"], **kwargs):
        return self.generate(image_embeds, negative_image_embeds, height, width, num_inference_steps, guidance_scale,
                             num_images_per_prompt, generator, None, output_type, return_dict,
                             callback_on_step_end, callback_on_step_end_tensor_inputs,
                             image=checks.required("image", image), strength=strength, **kwargs)


class KandinskyV22InpaintPipeline(KandinskyV22Decoder):
    """Inpainting: repaint where ``mask_image`` is white (1), keep the rest of ``image``."""

    _callback_tensor_inputs = ["latents", "image_embeds", "negative_image_embeds", "masked_image", "mask_image"]

    def __call__(self, image_embeds, image, mask_image, negative_image_embeds, height: int = 512, width: int = 512,
                 num_inference_steps: int = 100, guidance_scale: float = 4.0, num_images_per_prompt: int = 1,
                 generator=None, latents=None, output_type: str | None = "pil", return_dict: bool = True,
                 callback_on_step_end=None, callback_on_step_end_tensor_inputs: list[str] = ["latents"], **kwargs):
        return self.generate(image_embeds, negative_image_embeds, height, width, num_inference_steps, guidance_scale,
                             num_images_per_prompt, generator, latents, output_type, return_dict,
                             callback_on_step_end, callback_on_step_end_tensor_inputs,
                             image=checks.required("image", image),
                             mask_image=checks.required("mask_image", mask_image), **kwargs)


class KandinskyV22ControlnetPipeline(KandinskyV22Decoder):
    """ControlNet text-to-image: the ``hint`` (e.g. a depth map, N3HW in [0, 1]) steers the layout."""

    def __call__(self, image_embeds, negative_image_embeds, hint, height: int = 512, width: int = 512,
                 num_inference_steps: int = 100, guidance_scale: float = 4.0, num_images_per_prompt: int = 1,
                 generator=None, latents=None, output_type: str | None = "pil", callback=None,
                 callback_steps: int = 1, return_dict: bool = True, callback_on_step_end=None,
                 callback_on_step_end_tensor_inputs: list[str] = ["latents"]):
        return self.generate(image_embeds, negative_image_embeds, height, width, num_inference_steps, guidance_scale,
                             num_images_per_prompt, generator, latents, output_type, return_dict,
                             callback_on_step_end, callback_on_step_end_tensor_inputs,
                             hint=checks.required("hint", hint), callback=callback, callback_steps=callback_steps)


class KandinskyV22ControlnetImg2ImgPipeline(KandinskyV22Decoder):
    """ControlNet image-to-image: a picture noised to ``strength``, steered by the ``hint``."""

    pt_output_in_unit_range = True

    def __call__(self, image_embeds, image, negative_image_embeds, hint, height: int = 512, width: int = 512,
                 num_inference_steps: int = 100, guidance_scale: float = 4.0, strength: float = 0.3,
                 num_images_per_prompt: int = 1, generator=None, output_type: str | None = "pil", callback=None,
                 callback_steps: int = 1, return_dict: bool = True, callback_on_step_end=None,
                 callback_on_step_end_tensor_inputs: list[str] = ["latents"]):
        return self.generate(image_embeds, negative_image_embeds, height, width, num_inference_steps, guidance_scale,
                             num_images_per_prompt, generator, None, output_type, return_dict,
                             callback_on_step_end, callback_on_step_end_tensor_inputs,
                             image=checks.required("image", image), strength=strength,
                             hint=checks.required("hint", hint), callback=callback, callback_steps=callback_steps)
