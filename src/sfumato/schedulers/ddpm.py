"""DDPM (Ho et al. 2020): ancestral sampling from the posterior q(x_{t-1} | x_t, x0).

Each step predicts x0, takes the posterior mean between it and the current
sample, and adds fresh noise with the posterior variance (or the variance the
model predicts, for Kandinsky-style UNets with ``learned_range``).
"""

from __future__ import annotations

import numpy as np
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

VARIANCE_TYPES = ("fixed_small", "fixed_small_log", "fixed_large", "fixed_large_log", "learned", "learned_range")


class DDPMSchedulerOutput(DenoisingSchedulerOutput):
    """``prev_sample`` (x_{t-1}) and ``pred_original_sample`` (the step's x0 estimate)."""


class DDPMScheduler(DiscreteTimeScheduler):
    """Denoising diffusion probabilistic models: the stochastic sampler the models were trained for."""

    config_fields = dict(
        **TRAINING_SCHEDULE_FIELDS, variance_type="fixed_small", clip_sample=True, prediction_type="epsilon",
        **THRESHOLDING_FIELDS, timestep_spacing="leading", steps_offset=0, rescale_betas_zero_snr=False,
    )
    config_choices = {"variance_type": VARIANCE_TYPES}
    _compatibles = KARRAS_COMPATIBLE

    def _setup(self) -> None:
        super()._setup()
        self.one = torch.tensor(1.0)  # alpha_bar "before" the first step
        self.custom_timesteps = False
        self.timesteps = schedules.default_timesteps(self.config.num_train_timesteps)
        self.variance_type = self.config.variance_type

    @property
    def accepts_predicted_variance(self) -> bool:
        return self.config.variance_type in schedules.LEARNED_VARIANCE_TYPES

    def set_timesteps(self, num_inference_steps: int | None = None, device=None, timesteps: list[int] | None = None):
        """Choose the steps: ``num_inference_steps`` spaced by ``timestep_spacing``, or your own ``timesteps``."""
        owner = type(self).__name__
        train_steps = self.config.num_train_timesteps
        if num_inference_steps is not None and timesteps is not None:
            raise ValueError(f"{owner}.set_timesteps: pass num_inference_steps or timesteps, not both")
        if timesteps is not None:
            steps = np.array(timesteps, dtype=np.int64)
            if steps.ndim != 1 or len(steps) == 0 or np.any(steps[1:] >= steps[:-1]):
                raise ValueError(f"{owner}.set_timesteps: timesteps must be a non-empty list in strictly "
                                 f"descending order, got {list(timesteps)}")
            if steps[0] >= train_steps or steps[-1] < 0:
                raise ValueError(f"{owner}.set_timesteps: timesteps must lie in [0, {train_steps - 1}] "
                                 f"(num_train_timesteps={train_steps}), got {list(timesteps)}")
            self.custom_timesteps = True
        else:
            if num_inference_steps is None:
                raise ValueError(f"{owner}.set_timesteps: pass num_inference_steps or timesteps")
            self.num_inference_steps = schedules.check_num_inference_steps(num_inference_steps, train_steps, owner)
            self.custom_timesteps = False
            steps = schedules.spaced_timesteps(self.config.timestep_spacing, train_steps, self.num_inference_steps,
                                               self.config.steps_offset)
            steps = steps.round().astype(np.int64)
        self.timesteps = torch.from_numpy(steps).to(device)

    def previous_timestep(self, timestep):
        """The timestep the step from ``timestep`` lands on (-1 after the last one)."""
        if self.custom_timesteps or self.num_inference_steps:
            index = (self.timesteps == timestep).nonzero(as_tuple=True)[0][0]
            if index == self.timesteps.shape[0] - 1:
                return torch.tensor(-1)
            return self.timesteps[index + 1]
        return timestep - 1

    def _alpha_prods(self, t, prev_t):
        alpha_prod_t = self.alphas_cumprod[t]
        alpha_prod_t_prev = self.alphas_cumprod[prev_t] if prev_t >= 0 else self.one
        return alpha_prod_t, alpha_prod_t_prev

    def _get_variance(self, t, predicted_variance=None, variance_type=None):
        """The noise variance of the step from ``t`` (for ``*_log`` and ``learned_range``: its log or std, see step)."""
        alpha_prod_t, alpha_prod_t_prev = self._alpha_prods(t, self.previous_timestep(t))
        beta_t = 1 - alpha_prod_t / alpha_prod_t_prev
        variance = torch.clamp(schedules.posterior_variance(alpha_prod_t, alpha_prod_t_prev, beta_t), min=1e-20)
        variance_type = variance_type or self.config.variance_type
        if variance_type == "fixed_small_log":
            return torch.exp(0.5 * torch.log(variance))  # a standard deviation
        if variance_type == "fixed_large":
            return beta_t
        if variance_type == "fixed_large_log":
            return torch.log(beta_t)
        if variance_type == "learned":
            return predicted_variance
        if variance_type == "learned_range":
            return schedules.learned_range_log_variance(predicted_variance, torch.log(beta_t), torch.log(variance))
        return variance  # fixed_small

    def step(self, model_output: torch.Tensor, timestep: int, sample: torch.Tensor,
             generator: torch.Generator | None = None, return_dict: bool = True) -> DDPMSchedulerOutput | tuple:
        """One ancestral step from ``timestep`` to the previous one; noise is drawn from ``generator``."""
        t = timestep
        prev_t = self.previous_timestep(t)
        predicted_variance = None
        if model_output.shape[1] == sample.shape[1] * 2 and self.accepts_predicted_variance:
            model_output, predicted_variance = torch.split(model_output, sample.shape[1], dim=1)

        alpha_prod_t, alpha_prod_t_prev = self._alpha_prods(t, prev_t)
        alpha_t = alpha_prod_t / alpha_prod_t_prev
        pred_original_sample = self._predicted_original(model_output, sample, alpha_prod_t, 1 - alpha_prod_t)
        pred_original_sample = self._clip_or_threshold(pred_original_sample, self.config.thresholding)
        prev_sample = schedules.posterior_mean(pred_original_sample, sample, alpha_prod_t, alpha_prod_t_prev,
                                     alpha_t, 1 - alpha_t)

        if t > 0:  # the last step returns the mean itself
            noise = randn_tensor(model_output.shape, generator=generator, device=model_output.device,
                                 dtype=model_output.dtype)
            variance = self._get_variance(t, predicted_variance=predicted_variance)
            if self.variance_type == "fixed_small_log":
                prev_sample = prev_sample + variance * noise
            elif self.variance_type == "learned_range":
                prev_sample = prev_sample + torch.exp(0.5 * variance) * noise
            else:
                prev_sample = prev_sample + (variance**0.5) * noise

        if not return_dict:
            return (prev_sample, pred_original_sample)
        return DDPMSchedulerOutput(prev_sample=prev_sample, pred_original_sample=pred_original_sample)
