"""Euler ancestral sampling, k-diffusion's ``sample_euler_ancestral``.

Each step splits the move to the next sigma in two: a deterministic Euler
step down to ``sigma_down``, then fresh noise of size ``sigma_up`` back up to
the next sigma (``sigma_down**2 + sigma_up**2 = sigma_next**2``). Stochastic:
results depend on the generator.
"""

from __future__ import annotations

import numpy as np
import torch

from ..random import randn_tensor
from . import schedules
from .base import (
    KARRAS_COMPATIBLE,
    DenoisingSchedulerOutput,
    SigmaScheduler,
    denoised_from_sigma_prediction,
    register_to_config,
)


class EulerAncestralDiscreteSchedulerOutput(DenoisingSchedulerOutput):
    """``prev_sample`` (x at the next sigma) and ``pred_original_sample`` (the step's x0 estimate)."""


def ancestral_sigmas(sigma_from, sigma_to):
    """Split the move ``sigma_from -> sigma_to`` into a deterministic part and a noise part (eta = 1)."""
    sigma_up = (sigma_to**2 * (sigma_from**2 - sigma_to**2) / sigma_from**2) ** 0.5
    sigma_down = (sigma_to**2 - sigma_up**2) ** 0.5
    return sigma_down, sigma_up


class EulerAncestralDiscreteScheduler(SigmaScheduler):
    """Ancestral Euler sampling for discrete-time (DDPM-trained) models."""

    _compatibles = KARRAS_COMPATIBLE
    order = 1

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: str = "linear",
        trained_betas=None,
        prediction_type: str = "epsilon",
        timestep_spacing: str = "linspace",
        steps_offset: int = 0,
        rescale_betas_zero_snr: bool = False,
    ) -> None:
        owner = type(self).__name__
        self._check_common(owner, ("epsilon", "v_prediction"))
        betas = schedules.make_betas(beta_schedule, num_train_timesteps, beta_start, beta_end, trained_betas, owner)
        self._set_noise_schedule(betas, rescale_betas_zero_snr)
        if rescale_betas_zero_snr:
            self.alphas_cumprod[-1] = 2**-24  # zero SNR means infinite sigma; keep it finite
        train_sigmas = schedules.sigmas_from_alphas_cumprod(self.alphas_cumprod)
        self.sigmas = torch.from_numpy(np.concatenate([train_sigmas[::-1], [0.0]]).astype(np.float32))
        self.num_inference_steps = None
        self.timesteps = schedules.default_timesteps(num_train_timesteps, torch.float64)
        self.is_scale_input_called = False
        self._reset_step_counter()

    def set_timesteps(self, num_inference_steps: int, device=None):
        """Choose ``num_inference_steps`` steps spaced by ``timestep_spacing``, with their sigmas."""
        config = self.config
        self.num_inference_steps = schedules.check_num_inference_steps(
            num_inference_steps, config.num_train_timesteps, type(self).__name__)
        timesteps = schedules.spaced_timesteps(config.timestep_spacing, config.num_train_timesteps,
                                               self.num_inference_steps, config.steps_offset).astype(np.float32)
        sigmas = schedules.interpolate_sigmas(timesteps, schedules.sigmas_from_alphas_cumprod(self.alphas_cumprod))
        sigmas = np.concatenate([sigmas, [0.0]]).astype(np.float32)
        self.timesteps = torch.from_numpy(timesteps).to(device=device)
        self._reset_step_counter()
        self.sigmas = torch.from_numpy(sigmas)  # kept on the host: read every step

    def step(
        self,
        model_output: torch.Tensor,
        timestep: float | torch.Tensor,
        sample: torch.Tensor,
        generator: torch.Generator | None = None,
        return_dict: bool = True,
    ) -> EulerAncestralDiscreteSchedulerOutput | tuple:
        """One ancestral step: Euler down to ``sigma_down``, then noise up to the next sigma."""
        self._reject_integer_timestep(timestep)
        self._warn_if_unscaled()
        if self.step_index is None:
            self._init_step_index(timestep)
        sigma = self.sigmas[self.step_index]
        sample = sample.to(torch.float32)
        denoised = denoised_from_sigma_prediction(self.config.prediction_type, model_output, sample, sigma)

        sigma_down, sigma_up = ancestral_sigmas(sigma, self.sigmas[self.step_index + 1])
        derivative = (sample - denoised) / sigma
        prev_sample = sample + derivative * (sigma_down - sigma)
        noise = randn_tensor(model_output.shape, dtype=model_output.dtype, device=model_output.device,
                             generator=generator)
        prev_sample = (prev_sample + noise * sigma_up).to(model_output.dtype)
        self._step_index += 1

        if not return_dict:
            return (prev_sample, denoised)
        return EulerAncestralDiscreteSchedulerOutput(prev_sample=prev_sample, pred_original_sample=denoised)
