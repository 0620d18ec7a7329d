"""Linear multistep sampling, k-diffusion's ``sample_lms``.

The ODE slope ``(x - denoised) / sigma`` of the last up to ``order`` steps is
fitted by a polynomial in sigma (Lagrange form) and integrated exactly over
the next sigma interval.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch

from . import schedules
from .base import (KARRAS_COMPATIBLE, SIGMA_RAMP_FIELDS, TRAINING_SCHEDULE_FIELDS, DenoisingSchedulerOutput,
                   SigmaScheduler)
from .euler import train_sigma_ramp

# Gauss-Legendre with 4 nodes integrates polynomials up to degree 7 exactly;
# the Lagrange basis of an order-4 method has degree 3.
_GAUSS_NODES, _GAUSS_WEIGHTS = np.polynomial.legendre.leggauss(4)


class LMSDiscreteSchedulerOutput(DenoisingSchedulerOutput):
    """``prev_sample`` (x at the next sigma) and ``pred_original_sample`` (the step's x0 estimate)."""


class LMSDiscreteScheduler(SigmaScheduler):
    """Linear multistep sampling for discrete-time (DDPM-trained) models."""

    config_fields = dict(**TRAINING_SCHEDULE_FIELDS, **SIGMA_RAMP_FIELDS, prediction_type="epsilon",
                         timestep_spacing="linspace", steps_offset=0)
    prediction_types = ("epsilon", "v_prediction", "sample")
    _compatibles = KARRAS_COMPATIBLE

    def _setup(self) -> None:
        super()._setup()
        self.use_karras_sigmas = self.config.use_karras_sigmas
        self.set_timesteps(self.config.num_train_timesteps)
        self.is_scale_input_called = False

    def set_timesteps(self, num_inference_steps: int, device=None):
        """Choose ``num_inference_steps`` steps spaced by ``timestep_spacing`` (or a sigma ramp), with their sigmas."""
        timesteps = self._inference_timesteps(num_inference_steps)
        train_sigmas = schedules.sigmas_from_alphas_cumprod(self.alphas_cumprod)
        sigmas = schedules.interpolate_sigmas(timesteps, train_sigmas)
        # LMS takes the ramp's ends from the interpolated sigmas only (no sigma_min / sigma_max fields)
        ramp = train_sigma_ramp(self, sigmas, self.num_inference_steps)
        if ramp is not None:
            sigmas = ramp
            timesteps = schedules.sigma_to_timestep(sigmas, np.log(train_sigmas))
        self._set_sigma_schedule(timesteps, sigmas, device)
        self.derivatives = []

    def get_lms_coefficient(self, order: int, t: int, current_order: int) -> float:
        """Integral over ``[sigmas[t], sigmas[t + 1]]`` of the Lagrange basis polynomial of ``t - current_order``."""
        nodes = [float(self.sigmas[t - k]) for k in range(order)]
        start, end = float(self.sigmas[t]), float(self.sigmas[t + 1])

        def basis(tau: np.ndarray) -> np.ndarray:
            value = np.ones_like(tau)
            for k in range(order):
                if k != current_order:
                    value = value * (tau - nodes[k]) / (nodes[current_order] - nodes[k])
            return value

        half = (end - start) / 2
        taus = start + half * (_GAUSS_NODES + 1)
        return float(half * np.sum(_GAUSS_WEIGHTS * basis(taus)))

    def step(self, model_output: torch.Tensor, timestep: float | torch.Tensor, sample: torch.Tensor, order: int = 4,
             return_dict: bool = True,
             generator: torch.Generator | None = None) -> LMSDiscreteSchedulerOutput | tuple:
        """One linear multistep step of up to ``order`` past slopes.

        ``generator`` is accepted so every scheduler's ``step`` takes it; LMS
        draws no noise. It comes last to keep diffusers' positional order.
        """
        if not self.is_scale_input_called:
            warnings.warn("LMSDiscreteScheduler.step was called before scale_model_input; call "
                          "scale_model_input(sample, t) on the model input first, or the denoising is wrong")
        if self.step_index is None:
            self._init_step_index(timestep)
        sigma = self.sigmas[self.step_index]
        denoised = schedules.denoised_from_sigma_prediction(self.config.prediction_type, model_output, sample, sigma)

        self.derivatives.append((sample - denoised) / sigma)
        if len(self.derivatives) > order:
            self.derivatives.pop(0)
        order = min(self.step_index + 1, order)
        coefficients = [self.get_lms_coefficient(order, self.step_index, k) for k in range(order)]
        prev_sample = sample + sum(c * d for c, d in zip(coefficients, reversed(self.derivatives)))
        self._step_index += 1

        if not return_dict:
            return (prev_sample, denoised)
        return LMSDiscreteSchedulerOutput(prev_sample=prev_sample, pred_original_sample=denoised)
