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
from .base import KARRAS_COMPATIBLE, TRAINING_SCHEDULE_FIELDS, DenoisingSchedulerOutput, SigmaScheduler


class EulerAncestralDiscreteSchedulerOutput(DenoisingSchedulerOutput):
    """``prev_sample`` (x at the next sigma) and ``pred_original_sample`` (the step's x0 estimate)."""


def ancestral_sigmas(sigma_from, sigma_to):
    """Split the move ``sigma_from -> sigma_to`` into a deterministic part and a noise part (eta = 1)."""
    sigma_up = (sigma_to**2 * (sigma_from**2 - sigma_to**2) / sigma_from**2) ** 0.5
    sigma_down = (sigma_to**2 - sigma_up**2) ** 0.5
    return sigma_down, sigma_up


class EulerAncestralDiscreteScheduler(SigmaScheduler):
    """Ancestral Euler sampling for discrete-time (DDPM-trained) models."""

    config_fields = dict(**TRAINING_SCHEDULE_FIELDS, prediction_type="epsilon", timestep_spacing="linspace",
                         steps_offset=0, rescale_betas_zero_snr=False)
    prediction_types = ("epsilon", "v_prediction")
    _compatibles = KARRAS_COMPATIBLE

    def _setup(self) -> None:
        super()._setup()
        train_sigmas = schedules.sigmas_from_alphas_cumprod(self.alphas_cumprod)
        self.sigmas = torch.from_numpy(np.concatenate([train_sigmas[::-1], [0.0]]).astype(np.float32))
        self.timesteps = schedules.default_timesteps(self.config.num_train_timesteps, torch.float64)
        self.is_scale_input_called = False
        self._reset_step_counter()

    def set_timesteps(self, num_inference_steps: int, device=None):
        """Choose ``num_inference_steps`` steps spaced by ``timestep_spacing``, with their sigmas."""
        timesteps = self._inference_timesteps(num_inference_steps)
        sigmas = schedules.interpolate_sigmas(timesteps, schedules.sigmas_from_alphas_cumprod(self.alphas_cumprod))
        self._set_sigma_schedule(timesteps, sigmas, device)

    def step(self, model_output: torch.Tensor, timestep: float | torch.Tensor, sample: torch.Tensor,
             generator: torch.Generator | None = None,
             return_dict: bool = True) -> EulerAncestralDiscreteSchedulerOutput | tuple:
        """One ancestral step: Euler down to ``sigma_down``, then noise up to the next sigma."""
        self._start_step(timestep)
        sigma = self.sigmas[self.step_index]
        sample = sample.to(torch.float32)
        denoised = schedules.denoised_from_sigma_prediction(self.config.prediction_type, model_output, sample, sigma)

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
