"""Tasks: what the denoising loop starts from, and what it blends after each step.

A task is independent of the model family. It asks the pipeline for latent
space operations (``latent_shape``, ``preprocess_pictures``, ``encode_pictures``,
``inpaint_pixels``, ``inpaint_inputs``, ...) and returns a ``Start`` for the
shared body. ``size`` and ``check`` run before any model; ``start`` after the
conditioning.

Pictures come one for all prompts, one per prompt, or one per sample (a base
model's latents of all its images); every prompt makes
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
from .loop import timesteps_for_strength, timesteps_from, timesteps_until


def _per_sample(tensor: torch.Tensor, batch: int, request: Request) -> torch.Tensor:
    samples = batch * request.num_images_per_prompt
    if tensor.shape[0] == samples != batch:
        return tensor  # already one per sample
    return per_image(broadcast(tensor, batch), request.num_images_per_prompt)


def _check_rows(name: str, rows: int, batch: int, request: Request) -> None:
    samples = batch * request.num_images_per_prompt
    if rows not in (1, batch, samples):
        raise ValueError(f"{name} has batch size {rows}, but there are {batch} prompts making {samples} images; "
                         f"pass one {name} for all, one per prompt or one per image")


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


def _image_schedule(scheduler: Any, request: Request, strength: float | None) -> torch.Tensor:
    """The timesteps an image task runs before any ``denoising_end`` cut: those after ``denoising_start``
    (the latents come from another pipeline, part-denoised; ``strength`` does not count), the last
    ``strength`` of the schedule, or all of it (``strength=None``)."""
    if request.denoising_start is not None:
        return timesteps_from(scheduler, request.denoising_start)
    if strength is None:
        return scheduler.timesteps
    return timesteps_for_strength(scheduler, request.num_inference_steps, strength)


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
        return Start(latents=latents,
                     timesteps=timesteps_until(pipeline.scheduler, pipeline.scheduler.timesteps, request.denoising_end))


class ImageToImage:
    """Start from ``image`` noised to ``strength`` and run that last part of the schedule.

    ``image`` may also be latents of the pipeline's own latent space (another
    pipeline's ``output_type="latent"``); they are used as they are. With
    ``denoising_start`` they are not noised either: they are a base model's
    part-denoised latents, and the schedule continues from that point.
    Caller-given ``latents`` (where a family takes them) replace the noised picture.
    """

    def __init__(self, image: Any, strength: float):
        self.image = checks.required("image", image)
        self.strength = strength
        self.pixels: torch.Tensor | None = None

    def size(self, pipeline: Any, request: Request) -> tuple[int | None, int | None]:
        if request.height is not None and request.width is not None:
            return request.height, request.width
        self.pixels = pipeline.preprocess_pictures(self.image, request.height, request.width)
        return pipeline.picture_size(self.pixels)  # the picture decides the size the call leaves out

    def check(self, pipeline: Any, request: Request, batch: int) -> None:
        if request.denoising_start is None:
            checks.strength(self.strength, request.num_inference_steps)
        if self.pixels is None:
            self.pixels = pipeline.preprocess_pictures(self.image, request.height, request.width)
        checks.finite("image", self.pixels)
        _check_rows("image", self.pixels.shape[0], batch, request)
        _check_latents(pipeline, request, batch)

    def start(self, pipeline: Any, request: Request, batch: int) -> Start:
        timesteps = _image_schedule(pipeline.scheduler, request, self.strength)
        if request.latents is not None:
            latents = request.latents.to(device=pipeline._execution_device, dtype=pipeline.model_dtype)
        else:
            before, after = _sample_steps(request, batch)
            latents = after(pipeline.encode_pictures(before(self.pixels), generator=request.generator))
            if request.denoising_start is None:
                latents = pipeline.noise_pictures(latents, timesteps=timesteps, strength=self.strength,
                                                  generator=request.generator)
        return Start(latents=latents,
                     timesteps=timesteps_until(pipeline.scheduler, timesteps, request.denoising_end))


class Inpaint:
    """Repaint where ``mask_image`` is white (1) and keep the rest of ``image``.

    The model sees the family's inpainting inputs (the masked picture and the
    mask) at every step. With ``blend`` the known region is also put back after
    every step, noised to the level of the next one (Kandinsky 2.2 does, and
    Stable Diffusion with a UNet that does not see the mask; Kandinsky 2.1
    leaves it to its UNet); ``blend=None`` lets the pipeline decide.

    ``strength`` below 1 starts from the picture noised that far instead of pure
    noise (None: no strength, the whole schedule from noise); with
    ``denoising_start`` the picture (a base model's part-denoised latents)
    continues from that point as it is. ``masked_image_latents`` replaces the
    encoded masked picture;
    ``padding_mask_crop`` repaints only a crop around the mask (grown by that
    many pixels), at full size, and pastes it back. The size the call leaves
    out is the model's default, or with ``sized_by_image`` the picture's (the
    reference's ControlNet inpainting).
    """

    def __init__(self, image: Any, mask_image: Any, *, strength: float | None = None, blend: bool | None = None,
                 masked_image_latents: torch.Tensor | None = None, padding_mask_crop: int | None = None,
                 sized_by_image: bool = False):
        self.image = checks.required("image", image)
        self.mask_image = checks.required("mask_image", mask_image)
        self.strength = strength
        self.blend = blend
        self.masked_image_latents = masked_image_latents
        self.padding_mask_crop = padding_mask_crop
        self.sized_by_image = sized_by_image

    def size(self, pipeline: Any, request: Request) -> tuple[int | None, int | None]:
        if self.sized_by_image and (request.height is None or request.width is None):
            return pipeline.picture_size(pipeline.preprocess_pictures(self.image, request.height, request.width))
        return pipeline.default_size(request.height, request.width)

    def check(self, pipeline: Any, request: Request, batch: int) -> None:
        if self.strength is not None and request.denoising_start is None:
            checks.strength(self.strength, request.num_inference_steps)
        self.crop = None
        if self.padding_mask_crop is not None:
            self.crop = pipeline.inpaint_crop(self.image, self.mask_image, request.height, request.width,
                                              padding=self.padding_mask_crop, output_type=request.output_type)
        self.mask, self.pixels = pipeline.inpaint_pixels(self.image, self.mask_image, request.height,
                                                         request.width, crop=self.crop)
        checks.finite("image", self.pixels)
        checks.finite("mask_image", self.mask)
        _check_rows("image", self.pixels.shape[0], batch, request)
        _check_rows("mask_image", self.mask.shape[0], batch, request)
        if self.masked_image_latents is not None:
            given = checks.as_batch("masked_image_latents", self.masked_image_latents, 4)
            _check_rows("masked_image_latents", given.shape[0], batch, request)
        if self.blend is None:
            self.blend = pipeline.inpaint_blends()
        _check_latents(pipeline, request, batch)

    def start(self, pipeline: Any, request: Request, batch: int) -> Start:
        scheduler, samples = pipeline.scheduler, batch * request.num_images_per_prompt
        before, after = _sample_steps(request, batch)
        mask, pixels = before(self.mask), before(self.pixels)
        masked_image_latents = None if self.masked_image_latents is None else before(self.masked_image_latents)
        # latents handed over by a base model (denoising_start) continue as they are
        handed_over = request.denoising_start is not None
        from_noise = not handed_over and (self.strength is None or self.strength >= 1 or request.latents is not None)
        timesteps = _image_schedule(scheduler, request, self.strength)

        # draws in the reference's order: the picture (when needed), the noise, the masked picture
        image_latents = None
        if self.blend or not from_noise:
            image_latents = pipeline.encode_pictures(pixels, generator=request.generator)
        noise = _starting_noise(pipeline, request, batch)
        if handed_over:
            latents = after(image_latents)
        elif from_noise:
            latents = noise * scheduler.init_noise_sigma
        else:
            latents = scheduler.add_noise(after(image_latents), noise, timesteps[:1].repeat(samples))
        tensors, keep = pipeline.inpaint_inputs(mask, pixels, image_latents=image_latents,
                                                generator=request.generator,
                                                masked_image_latents=masked_image_latents)

        timesteps = timesteps_until(scheduler, timesteps, request.denoising_end)
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


class Upscale:
    """Start from seeded noise at the upscaled size; the low-resolution ``image`` rides along as a model input.

    The pipeline says what it takes as the low-resolution picture (``low_res_pixels``, which also checks the
    upscaler's own ``settings``, e.g. the x4 upscaler's ``noise_level``), how large the result is
    (``upscaled_size``) and which named model inputs the picture becomes (``low_res_inputs``, drawn from the
    generator before the starting noise). The request's size is the result's, so the memory and size bounds
    apply to what is made.
    """

    def __init__(self, image: Any, **settings: Any):
        self.image = checks.required("image", image)
        self.settings = settings
        self.pixels: torch.Tensor | None = None

    def size(self, pipeline: Any, request: Request) -> tuple[int, int]:
        self.pixels = pipeline.low_res_pixels(self.image, **self.settings)
        return pipeline.upscaled_size(self.pixels)

    def check(self, pipeline: Any, request: Request, batch: int) -> None:
        checks.finite("image", self.pixels)
        _check_rows("image", self.pixels.shape[0], batch, request)
        _check_latents(pipeline, request, batch)

    def start(self, pipeline: Any, request: Request, batch: int) -> Start:
        before, after = _sample_steps(request, batch)
        inputs = pipeline.low_res_inputs(before(self.pixels), generator=request.generator, **self.settings)
        latents = _starting_noise(pipeline, request, batch) * pipeline.scheduler.init_noise_sigma
        return Start(latents=latents, timesteps=pipeline.scheduler.timesteps,
                     tensors={name: after(value) for name, value in inputs.items()})
