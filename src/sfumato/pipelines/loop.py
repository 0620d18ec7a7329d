"""The one denoising loop, and the starting latents it runs from.

Every pipeline is ``condition -> starting latents -> denoise -> decode``.
Text-to-image starts from noise; image-to-image and inpainting start from a
noised image, at a step chosen by ``strength``; inpainting also blends the
known region back after each step. Those differences are arguments here, so
the loop itself is written once.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, Mapping, Sequence

import torch

from ..random import randn_tensor

Predict = Callable[[torch.Tensor, torch.Tensor, Mapping[str, Any]], torch.Tensor]
Combine = Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor]
AfterStep = Callable[[torch.Tensor, int, torch.Tensor], torch.Tensor]


def classifier_free_guidance(uncond: torch.Tensor, cond: torch.Tensor, scale: float) -> torch.Tensor:
    """Move the prediction away from the unconditional one by ``scale`` (Ho & Salimans)."""
    return uncond + scale * (cond - uncond)


def guide(output: torch.Tensor, scale: float, latent_channels: int,
          combine: Combine = classifier_free_guidance) -> torch.Tensor:
    """Combine a ``[uncond; cond]`` batch of model outputs into one guided prediction.

    Models that also predict their variance (Kandinsky's 8-channel UNets) get
    guidance on the noise channels only; the variance is the conditional one.
    """
    uncond, cond = output.chunk(2)
    if output.shape[1] > latent_channels:
        guided = combine(uncond[:, :latent_channels], cond[:, :latent_channels], scale)
        return torch.cat([guided, cond[:, latent_channels:]], dim=1)
    return combine(uncond, cond, scale)


def learns_variance(scheduler: Any) -> bool:
    return getattr(scheduler.config, "variance_type", None) in ("learned", "learned_range")


def timesteps_for_strength(scheduler: Any, num_inference_steps: int, strength: float) -> torch.Tensor:
    """The tail of the schedule that image-to-image runs: ``strength`` of ``num_inference_steps``.

    ``strength=1`` runs every step from pure noise; ``strength=0.3`` runs the
    last 30% of the steps, starting from the image noised to that level.
    """
    kept = min(int(num_inference_steps * strength), num_inference_steps)
    start = max(num_inference_steps - kept, 0) * getattr(scheduler, "order", 1)
    if hasattr(scheduler, "set_begin_index"):
        scheduler.set_begin_index(start)
    return scheduler.timesteps[start:]


def noise_latents(shape: Sequence[int], scheduler: Any, generator=None, device=None, dtype=None,
                  latents: torch.Tensor | None = None) -> torch.Tensor:
    """Starting latents for text-to-image: seeded noise (or the caller's), at the scheduler's first sigma."""
    if latents is None:
        latents = randn_tensor(shape, generator=generator, device=device, dtype=dtype)
    else:
        if tuple(latents.shape) != tuple(shape):
            raise ValueError(f"latents has shape {tuple(latents.shape)}, but this call needs {tuple(shape)}")
        latents = latents.to(device)
    return latents * scheduler.init_noise_sigma


def noised_image_latents(image_latents: torch.Tensor, scheduler: Any, first_timestep: torch.Tensor,
                         generator=None, noise: torch.Tensor | None = None) -> torch.Tensor:
    """Starting latents for image-to-image: the image's latents noised to ``first_timestep``."""
    if noise is None:
        noise = randn_tensor(image_latents.shape, generator=generator, device=image_latents.device,
                             dtype=image_latents.dtype)
    timesteps = first_timestep.reshape(1).repeat(image_latents.shape[0])
    return scheduler.add_noise(image_latents, noise, timesteps)


def denoise(
    pipeline: Any,
    latents: torch.Tensor,
    timesteps: torch.Tensor,
    predict: Predict,
    guidance_scale: float = 1.0,
    do_guidance: bool | None = None,
    combine: Combine = classifier_free_guidance,
    generator: torch.Generator | list[torch.Generator] | None = None,
    after_step: AfterStep | None = None,
    callback_on_step_end: Callable | None = None,
    callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
    tensors: dict[str, Any] | None = None,
    step_kwargs: Callable[[int, torch.Tensor], Mapping[str, Any]] | None = None,
) -> torch.Tensor:
    """Run the scheduler from ``latents`` over ``timesteps`` and return the final latents.

    ``predict(model_input, t, tensors)`` runs the model; with guidance on it gets the
    latents twice (unconditional half first) and must condition them the same way.
    ``after_step(latents, i, t)`` may rewrite the latents after each scheduler step
    (inpainting puts the known region back). ``callback_on_step_end(pipeline, i, t,
    {name: tensor})`` sees the named ``tensors`` (always including ``latents``) and may
    return replacements for them. ``step_kwargs(i, t)`` gives extra scheduler.step
    arguments (the UnCLIP scheduler wants ``prev_timestep``).
    """
    scheduler = pipeline.scheduler
    takes_generator = "generator" in inspect.signature(scheduler.step).parameters  # PNDM and LMS draw no noise
    if do_guidance is None:
        do_guidance = guidance_scale > 1.0
    tensors = dict(tensors or {})
    tensors["latents"] = latents
    latent_channels = latents.shape[1]
    pipeline._num_timesteps = len(timesteps)
    for i, t in enumerate(pipeline.progress_bar(timesteps)):
        latents = tensors["latents"]
        model_input = torch.cat([latents] * 2) if do_guidance else latents
        model_input = scheduler.scale_model_input(model_input, t)
        output = predict(model_input, t, tensors)
        if do_guidance:
            output = guide(output, guidance_scale, latent_channels, combine)
        if output.shape[1] > latent_channels and not learns_variance(scheduler):
            output = output[:, :latent_channels]
        extra = dict(step_kwargs(i, t)) if step_kwargs else {}
        if takes_generator:
            extra["generator"] = generator
        latents = scheduler.step(output, t, latents, **extra).prev_sample
        if after_step is not None:
            latents = after_step(latents, i, t)
        tensors["latents"] = latents
        if callback_on_step_end is not None:
            visible = {name: tensors[name] for name in callback_on_step_end_tensor_inputs}
            updates = callback_on_step_end(pipeline, i, t, visible) or {}
            tensors.update({k: v for k, v in updates.items() if k in tensors})
    return tensors["latents"]


def check_callback_inputs(pipeline: Any, names: Sequence[str] | None) -> None:
    allowed = getattr(pipeline, "_callback_tensor_inputs", ["latents"])
    wrong = [n for n in (names or []) if n not in allowed]
    if wrong:
        raise ValueError(
            f"callback_on_step_end_tensor_inputs has {wrong}, but {type(pipeline).__name__} offers {allowed}"
        )
