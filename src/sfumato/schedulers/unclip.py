"""The unCLIP prior's sampler (Ramesh et al. 2022), used by the Kandinsky 2.x prior pipelines.

A DDPM step over a cosine schedule that can jump between any two timesteps:
from one of ``timesteps`` to the next (or to ``prev_timestep`` when given),
and the step's beta is the one implied by the two alpha_bars (or the trained
beta for a jump of one).
"""

from __future__ import annotations

import numpy as np
import torch

from ..random import randn_tensor
from . import schedules
from .base import DenoisingSchedulerOutput, DiscreteTimeScheduler


class UnCLIPSchedulerOutput(DenoisingSchedulerOutput):
    """``prev_sample`` (x_{t-1}) and ``pred_original_sample`` (the step's x0 estimate)."""


class UnCLIPScheduler(DiscreteTimeScheduler):
    """DDPM sampling for the unCLIP / Kandinsky image-embedding prior (cosine schedule, log-std noise)."""

    config_fields = dict(num_train_timesteps=1000, variance_type="fixed_small_log", clip_sample=True,
                         clip_sample_range=1.0, prediction_type="epsilon", beta_schedule="squaredcos_cap_v2")
    prediction_types = ("epsilon", "sample")
    config_choices = {"variance_type": ("fixed_small_log", "learned_range"), "beta_schedule": ("squaredcos_cap_v2",)}
    _compatibles: list[str] = []

    def _setup(self) -> None:
        super()._setup()
        self.one = torch.tensor(1.0)
        self.timesteps = schedules.default_timesteps(self.config.num_train_timesteps)
        self.variance_type = self.config.variance_type

    @property
    def accepts_predicted_variance(self) -> bool:
        return self.config.variance_type in schedules.LEARNED_VARIANCE_TYPES

    def set_timesteps(self, num_inference_steps: int, device=None) -> None:
        """``num_inference_steps`` timesteps evenly spread over the whole schedule, first and last included."""
        train_steps = self.config.num_train_timesteps
        # both ends are kept, so two steps is the least that makes a schedule
        steps = schedules.check_num_inference_steps(num_inference_steps, train_steps, type(self).__name__, minimum=2)
        self.num_inference_steps = steps
        step_ratio = (train_steps - 1) / (steps - 1)
        timesteps = (np.arange(0, steps) * step_ratio).round()[::-1].copy().astype(np.int64)
        self.timesteps = torch.from_numpy(timesteps).to(device)

    def previous_timestep(self, timestep):
        """Where the step from ``timestep`` lands: the next of ``timesteps``, else ``timestep - 1``.

        Before ``set_timesteps``, for a timestep not in the schedule, and after
        the last one (always 0, so -1) it is ``timestep - 1``: what the
        reference's prior pipelines get by passing ``prev_timestep=None`` there.
        """
        if self.num_inference_steps is not None:
            index = (self.timesteps == timestep).nonzero()
            if len(index) and index[0].item() + 1 < len(self.timesteps):
                return self.timesteps[index[0].item() + 1]
        return timestep - 1

    def _step_terms(self, t, prev_timestep):
        """alpha_bar at both ends and the (alpha, beta) of the jump between them."""
        alpha_prod_t = self.alphas_cumprod[t]
        alpha_prod_t_prev = self.alphas_cumprod[prev_timestep] if prev_timestep >= 0 else self.one
        if prev_timestep == t - 1:
            return alpha_prod_t, alpha_prod_t_prev, self.alphas[t], self.betas[t]
        beta = 1 - alpha_prod_t / alpha_prod_t_prev
        return alpha_prod_t, alpha_prod_t_prev, 1 - beta, beta

    def _get_variance(self, t, prev_timestep=None, predicted_variance=None, variance_type=None):
        """The step's noise scale: a standard deviation (``fixed_small_log``) or a log-variance (``learned_range``)."""
        if prev_timestep is None:
            prev_timestep = t - 1
        alpha_prod_t, alpha_prod_t_prev, _, beta = self._step_terms(t, prev_timestep)
        variance = schedules.posterior_variance(alpha_prod_t, alpha_prod_t_prev, beta)
        if (variance_type or self.config.variance_type) == "fixed_small_log":
            return torch.exp(0.5 * torch.log(torch.clamp(variance, min=1e-20)))
        return schedules.learned_range_log_variance(predicted_variance, beta.log(), variance.log())

    def step(self, model_output: torch.Tensor, timestep: int, sample: torch.Tensor, prev_timestep: int | None = None,
             generator: torch.Generator | None = None, return_dict: bool = True) -> UnCLIPSchedulerOutput | tuple:
        """One step from ``timestep`` to ``prev_timestep`` (default: ``previous_timestep(timestep)``)."""
        t = timestep
        predicted_variance = None
        if model_output.shape[1] == sample.shape[1] * 2 and self.accepts_predicted_variance:
            model_output, predicted_variance = torch.split(model_output, sample.shape[1], dim=1)
        if prev_timestep is None:
            prev_timestep = self.previous_timestep(t)

        alpha_prod_t, alpha_prod_t_prev, alpha, beta = self._step_terms(t, prev_timestep)
        pred_original_sample = self._predicted_original(model_output, sample, alpha_prod_t, 1 - alpha_prod_t)
        pred_original_sample = self._clip_or_threshold(pred_original_sample)
        prev_sample = schedules.posterior_mean(pred_original_sample, sample, alpha_prod_t, alpha_prod_t_prev, alpha,
                                               beta)

        if t > 0:
            noise = randn_tensor(model_output.shape, dtype=model_output.dtype, generator=generator,
                                 device=model_output.device)
            scale = self._get_variance(t, prev_timestep=prev_timestep, predicted_variance=predicted_variance)
            if self.variance_type == "learned_range":
                scale = (0.5 * scale).exp()
            prev_sample = prev_sample + scale * noise

        if not return_dict:
            return (prev_sample, pred_original_sample)
        return UnCLIPSchedulerOutput(prev_sample=prev_sample, pred_original_sample=pred_original_sample)
