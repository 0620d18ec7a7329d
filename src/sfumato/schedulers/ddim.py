"""DDIM (Song et al. 2021): the non-Markovian sampler, deterministic at ``eta=0``.

Each step predicts x0 and the noise, then re-noises x0 to the previous
timestep along the predicted noise direction (eq. 12). ``eta`` blends in
fresh noise: ``eta=1`` gives DDPM's variance.
"""

from __future__ import annotations

import torch

from ..random import randn_tensor
from . import schedules
from .base import (
    KARRAS_COMPATIBLE,
    THRESHOLDING_FIELDS,
    TRAINING_SCHEDULE_FIELDS,
    DenoisingSchedulerOutput,
    DiscreteTimeScheduler,
)


class DDIMSchedulerOutput(DenoisingSchedulerOutput):
    """``prev_sample`` (x_{t-1}) and ``pred_original_sample`` (the step's x0 estimate)."""


class DDIMScheduler(DiscreteTimeScheduler):
    """Denoising diffusion implicit models: few-step, deterministic sampling for DDPM-trained models."""

    accepts_eta = True

    config_fields = dict(
        **TRAINING_SCHEDULE_FIELDS, clip_sample=True, set_alpha_to_one=True, steps_offset=0, prediction_type="epsilon",
        **THRESHOLDING_FIELDS, timestep_spacing="leading", rescale_betas_zero_snr=False,
    )
    _compatibles = KARRAS_COMPATIBLE

    def _setup(self) -> None:
        super()._setup()
        # alpha_bar after the last step: exactly clean (1.0), or that of step 0 as in the original code
        self.final_alpha_cumprod = torch.tensor(1.0) if self.config.set_alpha_to_one else self.alphas_cumprod[0]
        self.timesteps = schedules.default_timesteps(self.config.num_train_timesteps)

    def set_timesteps(self, num_inference_steps: int, device=None):
        """Choose ``num_inference_steps`` training steps, spaced by ``timestep_spacing``."""
        train_steps = self.config.num_train_timesteps
        self.num_inference_steps = schedules.check_num_inference_steps(num_inference_steps, train_steps,
                                                                       type(self).__name__)
        steps = schedules.spaced_timesteps(self.config.timestep_spacing, train_steps, self.num_inference_steps,
                                           self.config.steps_offset)
        self.timesteps = torch.from_numpy(steps.round().astype("int64")).to(device)

    def _alpha_prods(self, timestep, prev_timestep):
        alpha_prod_t = self.alphas_cumprod[timestep]
        alpha_prod_t_prev = self.alphas_cumprod[prev_timestep] if prev_timestep >= 0 else self.final_alpha_cumprod
        return alpha_prod_t, alpha_prod_t_prev

    def _get_variance(self, timestep, prev_timestep):
        return schedules.posterior_variance(*self._alpha_prods(timestep, prev_timestep))

    def step(self, model_output: torch.Tensor, timestep: int, sample: torch.Tensor, eta: float = 0.0,
             use_clipped_model_output: bool = False, generator: torch.Generator | None = None,
             variance_noise: torch.Tensor | None = None, return_dict: bool = True) -> DDIMSchedulerOutput | tuple:
        """One DDIM step from ``timestep``; ``eta > 0`` adds noise (from ``generator`` or ``variance_noise``)."""
        self._require_timesteps()
        if eta > 0 and variance_noise is not None and generator is not None:
            raise ValueError(f"{type(self).__name__}.step: pass generator or variance_noise, not both")
        # The step size is the same whatever the spacing: the reference's convention.
        prev_timestep = timestep - self.config.num_train_timesteps // self.num_inference_steps
        alpha_prod_t, alpha_prod_t_prev = self._alpha_prods(timestep, prev_timestep)
        beta_prod_t = 1 - alpha_prod_t

        pred_original_sample = self._predicted_original(model_output, sample, alpha_prod_t, beta_prod_t)
        pred_epsilon = self._predicted_noise(model_output, sample, pred_original_sample, alpha_prod_t, beta_prod_t)
        pred_original_sample = self._clip_or_threshold(pred_original_sample, self.config.thresholding)

        std_dev_t = eta * self._get_variance(timestep, prev_timestep) ** (0.5)
        if use_clipped_model_output:  # re-derive the noise from the clipped x0 (as in Glide)
            pred_epsilon = (sample - alpha_prod_t ** (0.5) * pred_original_sample) / beta_prod_t ** (0.5)
        # eq. 12: re-noise x0 along the predicted noise direction
        direction = (1 - alpha_prod_t_prev - std_dev_t**2) ** (0.5) * pred_epsilon
        prev_sample = alpha_prod_t_prev ** (0.5) * pred_original_sample + direction

        if eta > 0:
            if variance_noise is None:
                variance_noise = randn_tensor(model_output.shape, generator=generator, device=model_output.device,
                                              dtype=model_output.dtype)
            prev_sample = prev_sample + std_dev_t * variance_noise

        if not return_dict:
            return (prev_sample, pred_original_sample)
        return DDIMSchedulerOutput(prev_sample=prev_sample, pred_original_sample=pred_original_sample)

    def _predicted_noise(self, model_output, sample, pred_original_sample, alpha_prod_t, beta_prod_t):
        """The noise estimate the unclipped prediction implies, for the configured ``prediction_type``."""
        kind = self.config.prediction_type
        if kind == "epsilon":
            return model_output
        if kind == "sample":
            return (sample - alpha_prod_t ** (0.5) * pred_original_sample) / beta_prod_t ** (0.5)
        return (alpha_prod_t**0.5) * model_output + (beta_prod_t**0.5) * sample  # v_prediction
