"""Tasks: what the denoising loop starts from, and what it blends after each step.

A task is independent of the model family. It asks the pipeline for latent
space operations (``latent_shape``, ``encode_pictures``, ``inpaint_latents``,
...) and returns a ``Start`` for the shared body. ``check`` runs before any
model; ``start`` after the conditioning.
"""

from __future__ import annotations

from typing import Any

import torch

from . import checks
from .generation import Request, Start, broadcast, per_image
from .loop import noise_latents, timesteps_for_strength


def _noise(pipeline: Any, request: Request, batch: int) -> torch.Tensor:
    shape = pipeline.latent_shape(batch * request.num_images_per_prompt, request.height, request.width)
    return noise_latents(shape=shape, scheduler=pipeline.scheduler, generator=request.generator,
                         device=pipeline._execution_device, dtype=pipeline.model_dtype, latents=request.latents)


def _per_sample(tensor: torch.Tensor, batch: int, request: Request) -> torch.Tensor:
    return per_image(broadcast(tensor, batch), request.num_images_per_prompt)


class TextToImage:
    """Start from seeded noise (or the caller's ``latents``) and run every step."""

    def check(self, pipeline: Any, request: Request, batch: int) -> None:
        pass

    def start(self, pipeline: Any, request: Request, batch: int) -> Start:
        return Start(latents=_noise(pipeline, request, batch), timesteps=pipeline.scheduler.timesteps)


class ImageToImage:
    """Start from ``image`` noised to ``strength`` and run that last part of the schedule."""

    def __init__(self, image: Any, strength: float):
        self.image = checks.required("image", image)
        self.strength = strength

    def check(self, pipeline: Any, request: Request, batch: int) -> None:
        checks.strength(self.strength, request.num_inference_steps)
        self.pixels = checks.finite("image", pipeline.preprocess_pictures(self.image, request.height, request.width))
        checks.batch_matches("image", self.pixels.shape[0], batch)

    def start(self, pipeline: Any, request: Request, batch: int) -> Start:
        timesteps = timesteps_for_strength(pipeline.scheduler, request.num_inference_steps, self.strength)
        clean = _per_sample(pipeline.encode_pictures(self.pixels), batch, request)
        latents = pipeline.noise_pictures(clean, timesteps=timesteps, strength=self.strength,
                                          generator=request.generator)
        return Start(latents=latents, timesteps=timesteps)


class Inpaint:
    """Repaint where ``mask_image`` is white (1) and keep the rest of ``image``.

    The model sees the kept region (``masked_image``) and the keep mask
    (``mask_image``) at every step. With ``blend`` the known region is also put
    back after every step, noised to the level of the next one, and once more
    at the end (Kandinsky 2.2 does; Kandinsky 2.1 leaves it to its UNet).
    """

    def __init__(self, image: Any, mask_image: Any, blend: bool = True):
        self.image = checks.required("image", image)
        self.mask_image = checks.required("mask_image", mask_image)
        self.blend = blend

    def check(self, pipeline: Any, request: Request, batch: int) -> None:
        self.keep, self.pixels = pipeline.inpaint_pixels(self.image, self.mask_image, request.height, request.width)
        checks.finite("image", self.pixels)
        checks.finite("mask_image", self.keep)
        checks.batch_matches("image", self.pixels.shape[0], batch)
        checks.batch_matches("mask_image", self.keep.shape[0], batch)

    def start(self, pipeline: Any, request: Request, batch: int) -> Start:
        keep, image_latents = pipeline.inpaint_latents(self.keep, self.pixels)
        keep, image_latents = _per_sample(keep, batch, request), _per_sample(image_latents, batch, request)
        latents = _noise(pipeline, request, batch)
        start = Start(latents=latents, timesteps=pipeline.scheduler.timesteps,
                      tensors={"mask_image": keep, "masked_image": image_latents * keep})
        if self.blend:
            start.after_step = _keep_known_region(pipeline.scheduler, start.timesteps, image_latents, keep,
                                                  noise=latents.clone())
            start.finish = lambda final: keep * image_latents + (1 - keep) * final
        return start


def _keep_known_region(scheduler: Any, timesteps: torch.Tensor, image_latents: torch.Tensor, keep: torch.Tensor,
                       noise: torch.Tensor):
    """After each step, put back the kept region, noised to the level of the next step."""

    def blend(latents: torch.Tensor, i: int, t: torch.Tensor) -> torch.Tensor:
        known = image_latents
        if i < len(timesteps) - 1:
            known = scheduler.add_noise(image_latents, noise, torch.tensor([timesteps[i + 1]]))
        return keep * known + (1 - keep) * latents

    return blend
