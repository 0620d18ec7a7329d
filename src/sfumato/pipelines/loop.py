"""The one denoising loop, and the schedule arithmetic around it.

Every pipeline is ``condition -> starting latents -> denoise -> decode``; this
module is the third step. It knows nothing of models or tasks: it gets a
``predict`` function (the family's model call), the named tensors that
function reads, and an optional ``after_step`` (inpainting's blending).
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import torch

from ..nn.batching import stacked_copies
from ..random import randn_tensor

Predict = Callable[[torch.Tensor, torch.Tensor, Mapping[str, Any]], torch.Tensor]
AfterStep = Callable[[torch.Tensor, int, torch.Tensor], torch.Tensor]


def classifier_free_guidance(uncond: torch.Tensor, cond: torch.Tensor, scale: float) -> torch.Tensor:
    """Move the prediction away from the unconditional one by ``scale`` (Ho & Salimans)."""
    return uncond + scale * (cond - uncond)


def guide(output: torch.Tensor, scale: float, latent_channels: int) -> torch.Tensor:
    """Combine a ``[uncond; cond]`` batch of model outputs into one guided prediction.

    Models that also predict their variance (Kandinsky's 8-channel UNets) get
    guidance on the noise channels only; the variance is the conditional one.
    """
    uncond, cond = output.chunk(2)
    if output.shape[1] > latent_channels:
        guided = classifier_free_guidance(uncond[:, :latent_channels], cond[:, :latent_channels], scale)
        return torch.cat([guided, cond[:, latent_channels:]], dim=1)
    return classifier_free_guidance(uncond, cond, scale)


def rescale_guidance(guided: torch.Tensor, cond: torch.Tensor, factor: float) -> torch.Tensor:
    """Pull a guided prediction's spread back towards the conditional one's (Lin et al. 2023, sec. 3.4).

    High guidance scales overexpose; matching the per-sample standard deviation
    of the conditional prediction fixes that, ``factor`` says how much.
    """
    dims = list(range(1, guided.ndim))
    rescaled = guided * (cond.std(dim=dims, keepdim=True) / guided.std(dim=dims, keepdim=True))
    return factor * rescaled + (1 - factor) * guided


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


def _cutoff(scheduler: Any, fraction: float) -> int:
    """The training timestep ``fraction`` of the way from pure noise (t = T) to the clean picture (t = 0)."""
    train_steps = scheduler.config.num_train_timesteps
    return int(round(train_steps - fraction * train_steps))


def timesteps_from(scheduler: Any, denoising_start: float) -> torch.Tensor:
    """The part of the schedule after ``denoising_start`` (a refiner taking over from a base model's latents).

    The split is at a training timestep, so the base (``timesteps_until``
    the same fraction) and the refiner run complementary steps whatever their
    step counts. A second-order scheduler repeats every timestep but the first;
    the cut never falls between the two evaluations of one step.
    """
    count = int((scheduler.timesteps < _cutoff(scheduler, denoising_start)).sum())
    if getattr(scheduler, "order", 1) == 2 and count % 2 == 0:
        count += 1
    start = len(scheduler.timesteps) - count
    if hasattr(scheduler, "set_begin_index"):
        scheduler.set_begin_index(start)
    return scheduler.timesteps[start:]


def timesteps_until(scheduler: Any, timesteps: torch.Tensor, denoising_end: float | None) -> torch.Tensor:
    """``timesteps`` up to ``denoising_end`` of the way through the schedule (all of them for None)."""
    if denoising_end is None:
        return timesteps
    return timesteps[:int((timesteps >= _cutoff(scheduler, denoising_end)).sum())]


def noise_latents(*, shape: Sequence[int], scheduler: Any, generator=None, device=None, dtype=None,
                  latents: torch.Tensor | None = None) -> torch.Tensor:
    """Starting latents for text-to-image: seeded noise (or the caller's), at the scheduler's first sigma."""
    if latents is None:
        latents = randn_tensor(shape, generator=generator, device=device, dtype=dtype)
    else:
        if tuple(latents.shape) != tuple(shape):
            raise ValueError(f"latents has shape {tuple(latents.shape)}, but this call needs {tuple(shape)}")
        latents = latents.to(device)
    return latents * scheduler.init_noise_sigma


def noised_latents(*, clean: torch.Tensor, scheduler: Any, timestep: torch.Tensor, generator=None,
                   noise: torch.Tensor | None = None) -> torch.Tensor:
    """``clean`` latents (a picture's, an embedding) noised to ``timestep``, as image-to-image starts."""
    if noise is None:
        noise = randn_tensor(clean.shape, generator=generator, device=clean.device, dtype=clean.dtype)
    return scheduler.add_noise(clean, noise, timestep.reshape(1).repeat(clean.shape[0]))


def keeps_predicted_variance(scheduler: Any) -> bool:
    """Whether the scheduler uses a model's predicted-variance channels.

    Asked of the scheduler's own ability, not of a ``variance_type`` key its
    config may have inherited from another scheduler (``from_config`` carries
    it along), so any scheduler can be swapped into a learned-variance UNet.
    """
    return bool(getattr(scheduler, "accepts_predicted_variance", False))


def accepts_eta(scheduler: Any) -> bool:
    """Whether the scheduler's ``step`` takes ``eta`` (DDIM's share of fresh noise per step).

    A capability the scheduler states (``accepts_eta = True``), as the reference's
    documentation says: eta applies to DDIM and is ignored by the other schedulers.
    """
    return bool(getattr(scheduler, "accepts_eta", False))


def denoise(
    pipeline: Any,
    *,
    latents: torch.Tensor,
    timesteps: torch.Tensor,
    predict: Predict,
    guidance_scale: float = 1.0,
    guidance_rescale: float = 0.0,
    guided: bool = False,
    tensors: Mapping[str, Any] | None = None,
    generator: torch.Generator | list[torch.Generator] | None = None,
    eta: float = 0.0,
    after_step: AfterStep | None = None,
    callback_on_step_end: Callable | None = None,
    callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
) -> torch.Tensor:
    """Run ``pipeline.scheduler`` from ``latents`` over ``timesteps`` and return the final latents.

    ``predict(model_input, t, tensors)`` runs the model; with ``guided`` it gets the
    latents twice (unconditional half first) and the ``tensors`` it reads are
    doubled the same way; ``guidance_rescale`` tempers strong guidance
    (``rescale_guidance``). ``eta`` goes to schedulers that take it
    (``accepts_eta``). ``after_step(latents, i, t)`` may rewrite the latents
    after each scheduler step (inpainting puts the known region back).
    ``callback_on_step_end(pipeline, i, t, {name: tensor})`` sees the named
    ``tensors`` (``latents`` included) and may return replacements for them.
    """
    scheduler = pipeline.scheduler
    tensors = {**(tensors or {}), "latents": latents}
    latent_channels = latents.shape[1]
    keep_variance = keeps_predicted_variance(scheduler)
    step_options = {"eta": eta} if accepts_eta(scheduler) else {}
    pipeline._num_timesteps = len(timesteps)
    for i, t in enumerate(pipeline.progress_bar(timesteps)):
        latents = tensors["latents"]
        model_input = torch.cat([latents] * 2) if guided else latents
        with stacked_copies(2 if guided else 1, model_input.shape[0]):
            output = predict(scheduler.scale_model_input(model_input, t), t, tensors)
        if guided:
            cond = output.chunk(2)[1]
            output = guide(output, guidance_scale, latent_channels)
            if guidance_rescale > 0:
                output = rescale_guidance(output, cond, guidance_rescale)
        if output.shape[1] > latent_channels and not keep_variance:
            output = output[:, :latent_channels]
        latents = scheduler.step(output, t, latents, generator=generator, **step_options).prev_sample
        if after_step is not None:
            latents = after_step(latents, i, t)
        tensors["latents"] = latents
        if callback_on_step_end is not None:
            visible = {name: tensors[name] for name in callback_on_step_end_tensor_inputs}
            updates = callback_on_step_end(pipeline, i, t, visible) or {}
            tensors.update({k: v for k, v in updates.items() if k in tensors})
    return tensors["latents"]
