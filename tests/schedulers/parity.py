"""Shared harness for scheduler parity: the same toy model and seeds through ours and diffusers'."""

from __future__ import annotations

import inspect
import math

import numpy as np
import torch

import diffusers
import sfumato.schedulers as ours

# final samples of a full sampling loop agree to this (max abs difference)
TOLERANCE = 1e-5
SHAPE = (2, 4, 6, 6)


class ToyModel:
    """A deterministic stand-in for a UNet trained on ``alphas_cumprod``.

    It believes the clean sample is ``0.5 * tanh(x)`` and predicts, for the
    scheduler's ``prediction_type``, what a perfect denoiser would for that
    belief, plus a small timestep-dependent error so that the sampler's path
    (its timesteps, sigmas and update rule) shows in the result. Samples stay
    O(1), as real latents do. With ``out_channels`` twice the sample's, the
    extra half is a "predicted variance" in [-1, 1].
    """

    def __init__(self, alphas_cumprod: torch.Tensor, prediction_type: str = "epsilon", out_channels=None):
        self.alphas_cumprod = alphas_cumprod.double().numpy()
        self.prediction_type = prediction_type
        self.out_channels = out_channels

    def __call__(self, sample: torch.Tensor, timestep) -> torch.Tensor:
        t = float(timestep)
        alpha_bar = float(np.interp(t, np.arange(len(self.alphas_cumprod)), self.alphas_cumprod))
        clean = 0.5 * torch.tanh(sample)
        noise = (sample - alpha_bar**0.5 * clean) / max(1 - alpha_bar, 1e-12) ** 0.5
        if self.prediction_type == "epsilon":
            prediction = noise
        elif self.prediction_type == "v_prediction":
            prediction = alpha_bar**0.5 * noise - (1 - alpha_bar) ** 0.5 * clean
        else:  # sample / original_sample
            prediction = clean
        prediction = prediction + 0.05 * math.cos(t / 13.0) * torch.tanh(2 * sample)
        if self.out_channels and self.out_channels > sample.shape[1]:
            prediction = torch.cat([prediction, torch.tanh(0.5 * sample + math.cos(t / 31.0))], dim=1)
        return prediction


def pair(name: str, **config):
    """(ours, reference) schedulers of class ``name`` built from the same config."""
    return getattr(ours, name)(**config), getattr(diffusers, name)(**config)


def sample_loop(scheduler, num_inference_steps, model: ToyModel, seed: int = 0, shape=SHAPE, strength=None,
                set_timesteps_kwargs=None, **step_kwargs) -> torch.Tensor:
    """Run a denoising loop with ``model`` as the diffusers pipelines do; all noise from one seeded generator.

    With ``strength`` it is an image-to-image run: start part way down the
    schedule (``set_begin_index`` where the scheduler has it) from a noised
    "image" (``add_noise``), as StableDiffusionImg2ImgPipeline does.
    """
    scheduler.set_timesteps(num_inference_steps, **(set_timesteps_kwargs or {}))
    generator = torch.Generator().manual_seed(seed)
    timesteps = scheduler.timesteps
    if strength is None:
        sample = torch.randn(shape, generator=generator) * scheduler.init_noise_sigma
    else:
        kept = min(int(num_inference_steps * strength), num_inference_steps)
        start = max(num_inference_steps - kept, 0) * getattr(scheduler, "order", 1)
        timesteps = timesteps[start:]
        if hasattr(scheduler, "set_begin_index"):
            scheduler.set_begin_index(start)
        image = 0.5 * torch.randn(shape, generator=generator)
        noise = torch.randn(shape, generator=generator)
        sample = scheduler.add_noise(image, noise, timesteps[:1].repeat(shape[0]))
    parameters = inspect.signature(scheduler.step).parameters
    timesteps = list(timesteps)
    for index, t in enumerate(timesteps):
        model_input = scheduler.scale_model_input(sample, t)
        output = model(model_input, t)
        kwargs = dict(step_kwargs)
        if "generator" in parameters:
            kwargs["generator"] = generator
        if "prev_timestep" in parameters:  # the Kandinsky prior pipelines pass the next timestep
            kwargs["prev_timestep"] = timesteps[index + 1] if index + 1 < len(timesteps) else None
        sample = scheduler.step(output, t, sample, **kwargs).prev_sample
    return sample


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.double() - b.double()).abs().max().item()


def assert_same_schedule(mine, reference) -> None:
    """Identical timesteps (values and dtype) and sigmas, where the scheduler has them."""
    assert mine.timesteps.dtype == reference.timesteps.dtype, (mine.timesteps.dtype, reference.timesteps.dtype)
    torch.testing.assert_close(mine.timesteps, reference.timesteps, rtol=0, atol=0)
    if hasattr(reference, "sigmas"):
        torch.testing.assert_close(torch.as_tensor(mine.sigmas), torch.as_tensor(reference.sigmas), rtol=0, atol=0)


def check_loop_parity(name: str, config: dict, num_inference_steps: int, seed: int = 0, out_channels=None,
                      **kwargs) -> float:
    """Run both loops and return the max abs difference of the final samples (asserting it is small)."""
    mine, reference = pair(name, **config)
    return check_pair_parity(mine, reference, num_inference_steps, seed, out_channels, **kwargs)


def check_pair_parity(mine, reference, num_inference_steps, seed: int = 0, out_channels=None, **kwargs) -> float:
    """Like ``check_loop_parity`` for two schedulers built by the caller."""
    name = type(reference).__name__
    config = {k: v for k, v in reference.config.items() if not k.startswith("_")}
    model = ToyModel(reference.alphas_cumprod, reference.config.prediction_type, out_channels)
    expected = sample_loop(reference, num_inference_steps, model, seed, **kwargs)
    got = sample_loop(mine, num_inference_steps, model, seed, **kwargs)
    assert_same_schedule(mine, reference)
    assert torch.isfinite(expected).all()
    diff = max_diff(got, expected)
    assert diff <= TOLERANCE, f"{name} {config} steps={num_inference_steps}: max abs diff {diff}"
    return diff
