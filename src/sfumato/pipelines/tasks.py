"""Tasks: what the denoising loop starts from, and what it blends after each step.

A task is independent of the model family. It asks the pipeline for latent
space operations (``latent_shape``, ``preprocess_pictures``, ``encode_pictures``,
``inpaint_pixels``, ``inpaint_inputs``, ...) and returns a ``Start`` for the
shared body. ``size`` and ``check`` run before any model; ``start`` after the
conditioning.

Pictures come one for all prompts or one per prompt; every prompt makes
``num_images_per_prompt`` samples. An encoder that draws (a VAE samples its
posterior) draws once per picture from one generator; with a list of
generators (one per sample) each sample's picture is drawn from its own, so
every sample of a batch equals the single run with that generator.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from ..random import randn_tensor
from . import checks
from .generation import Request, Start, broadcast, per_image
from .loop import timesteps_for_strength


def _per_sample(tensor: torch.Tensor, batch: int, request: Request) -> torch.Tensor:
    return per_image(broadcast(tensor, batch), request.num_images_per_prompt)


def _unchanged(tensor: torch.Tensor) -> torch.Tensor:
    return tensor


def _each_sample_draws(request: Request) -> bool:
    """Whether every sample draws from its own generator (a list of them)."""
    return isinstance(request.generator, (list, tuple)) and len(request.generator) > 1


def _sample_steps(request: Request, batch: int) -> tuple[Callable, Callable]:
    """(before, after): what makes per-prompt tensors per-sample, before or after the family encodes them.

    With one generator per sample the pictures are made per sample first, so each is drawn from its
    own generator; otherwise each picture is encoded once and its latents repeated.
    """
    expand = lambda tensor: _per_sample(tensor, batch, request)  # noqa: E731
    return (expand, _unchanged) if _each_sample_draws(request) else (_unchanged, expand)


def _check_latents(pipeline: Any, request: Request, batch: int) -> None:
    if request.latents is not None:
        shape = pipeline.latent_shape(batch * request.num_images_per_prompt, request.height, request.width)
        checks.latents(request.latents, shape)


def _starting_noise(pipeline: Any, request: Request, batch: int) -> torch.Tensor:
    """The caller's ``latents`` or seeded noise, not yet scaled to the scheduler's first sigma."""
    if request.latents is not None:
        return request.latents.to(device=pipeline._execution_device, dtype=pipeline.model_dtype)
    shape = pipeline.latent_shape(batch * request.num_images_per_prompt, request.height, request.width)
    return randn_tensor(shape, generator=request.generator, device=pipeline._execution_device,
                        dtype=pipeline.model_dtype)


class TextToImage:
    """Start from seeded noise (or the caller's ``latents``) and run every step."""

    def size(self, pipeline: Any, request: Request) -> tuple[int | None, int | None]:
        return pipeline.default_size(request.height, request.width)

    def check(self, pipeline: Any, request: Request, batch: int) -> None:
        _check_latents(pipeline, request, batch)

    def start(self, pipeline: Any, request: Request, batch: int) -> Start:
        latents = _starting_noise(pipeline, request, batch) * pipeline.scheduler.init_noise_sigma
        return Start(latents=latents, timesteps=pipeline.scheduler.timesteps)


class ImageToImage:
    """Start from ``image`` noised to ``strength`` and run that last part of the schedule.

    ``image`` may also be latents of the pipeline's own latent space (another
    pipeline's ``output_type="latent"``); they are used as they are.
    """

    def __init__(self, image: Any, strength: float):
        self.image = checks.required("image", image)
        self.strength = strength
        self.pixels: torch.Tensor | None = None

    def size(self, pipeline: Any, request: Request) -> tuple[int | None, int | None]:
        if request.height is not None and request.width is not None:
            return request.height, request.width
        # the picture decides the size the call leaves out
        self.pixels = pipeline.preprocess_pictures(self.image, request.height, request.width)
        return pipeline.picture_size(self.pixels)

    def check(self, pipeline: Any, request: Request, batch: int) -> None:
        checks.strength(self.strength, request.num_inference_steps)
        if self.pixels is None:
            self.pixels = pipeline.preprocess_pictures(self.image, request.height, request.width)
        checks.finite("image", self.pixels)
        checks.batch_matches("image", self.pixels.shape[0], batch)

    def start(self, pipeline: Any, request: Request, batch: int) -> Start:
        timesteps = timesteps_for_strength(pipeline.scheduler, request.num_inference_steps, self.strength)
        before, after = _sample_steps(request, batch)
        clean = after(pipeline.encode_pictures(before(self.pixels), generator=request.generator))
        latents = pipeline.noise_pictures(clean, timesteps=timesteps, strength=self.strength,
                                          generator=request.generator)
        return Start(latents=latents, timesteps=timesteps)


class Inpaint:
    """Repaint where ``mask_image`` is white (1) and keep the rest of ``image``.

    The model sees the family's inpainting inputs (the masked picture and the
    mask) at every step. With ``blend`` the known region is also put back after
    every step, noised to the level of the next one (Kandinsky 2.2 does, and
    Stable Diffusion with a UNet that does not see the mask; Kandinsky 2.1
    leaves it to its UNet); ``blend=None`` lets the pipeline decide.

    ``strength`` below 1 starts from the picture noised that far instead of pure
    noise (None: no strength, the whole schedule from noise). ``masked_image_latents`` replaces the encoded masked picture;
    ``padding_mask_crop`` repaints only a crop around the mask (grown by that
    many pixels), at full size, and pastes it back.
    """

    def __init__(self, image: Any, mask_image: Any, *, strength: float | None = None, blend: bool | None = None,
                 masked_image_latents: torch.Tensor | None = None, padding_mask_crop: int | None = None):
        self.image = checks.required("image", image)
        self.mask_image = checks.required("mask_image", mask_image)
        self.strength = strength
        self.blend = blend
        self.masked_image_latents = masked_image_latents
        self.padding_mask_crop = padding_mask_crop

    def size(self, pipeline: Any, request: Request) -> tuple[int | None, int | None]:
        return pipeline.default_size(request.height, request.width)

    def check(self, pipeline: Any, request: Request, batch: int) -> None:
        if self.strength is not None:
            checks.strength(self.strength, request.num_inference_steps)
        self.crop = None
        if self.padding_mask_crop is not None:
            self.crop = pipeline.inpaint_crop(self.image, self.mask_image, request.height, request.width,
                                              padding=self.padding_mask_crop, output_type=request.output_type)
        self.mask, self.pixels = pipeline.inpaint_pixels(self.image, self.mask_image, request.height,
                                                         request.width, crop=self.crop)
        checks.finite("image", self.pixels)
        checks.finite("mask_image", self.mask)
        checks.batch_matches("image", self.pixels.shape[0], batch)
        checks.batch_matches("mask_image", self.mask.shape[0], batch)
        if self.masked_image_latents is not None:
            given = checks.as_batch("masked_image_latents", self.masked_image_latents, 4)
            checks.batch_matches("masked_image_latents", given.shape[0], batch)
        if self.blend is None:
            self.blend = pipeline.inpaint_blends()
        _check_latents(pipeline, request, batch)

    def start(self, pipeline: Any, request: Request, batch: int) -> Start:
        scheduler, samples = pipeline.scheduler, batch * request.num_images_per_prompt
        before, after = _sample_steps(request, batch)
        mask, pixels = before(self.mask), before(self.pixels)
        masked_image_latents = None if self.masked_image_latents is None else before(self.masked_image_latents)
        from_noise = self.strength is None or self.strength >= 1 or request.latents is not None
        timesteps = (scheduler.timesteps if self.strength is None
                     else timesteps_for_strength(scheduler, request.num_inference_steps, self.strength))

        # draws in the reference's order: the picture (when needed), the noise, the masked picture
        image_latents = None
        if self.blend or not from_noise:
            image_latents = pipeline.encode_pictures(pixels, generator=request.generator)
        noise = _starting_noise(pipeline, request, batch)
        if from_noise:
            latents = noise * scheduler.init_noise_sigma
        else:
            latents = scheduler.add_noise(after(image_latents), noise, timesteps[:1].repeat(samples))
        tensors, keep = pipeline.inpaint_inputs(mask, pixels, image_latents=image_latents,
                                                generator=request.generator,
                                                masked_image_latents=masked_image_latents)

        start = Start(latents=latents, timesteps=timesteps, tensors={k: after(v) for k, v in tensors.items()})
        if self.blend:
            blend_noise = latents.clone() if pipeline.inpaint_noise_from_start_latents else noise
            start.after_step = _keep_known_region(scheduler, timesteps, after(image_latents), after(keep),
                                                  blend_noise)
        if self.crop is not None:
            crop = self.crop
            start.finish_images = lambda images: pipeline.paste_crops(images, self.image, self.mask_image, crop)
        return start


def _keep_known_region(scheduler: Any, timesteps: torch.Tensor, image_latents: torch.Tensor, keep: torch.Tensor,
                       noise: torch.Tensor):
    """After each step, put back the kept region, noised to the level of the next step.

    After the last step it is put back as it is. (The masks are 0 / 1, so
    blending once more at the end would change nothing.)
    """

    def blend(latents: torch.Tensor, i: int, t: torch.Tensor) -> torch.Tensor:
        known = image_latents
        if i < len(timesteps) - 1:
            known = scheduler.add_noise(image_latents, noise, torch.tensor([timesteps[i + 1]]))
        return keep * known + (1 - keep) * latents

    return blend
