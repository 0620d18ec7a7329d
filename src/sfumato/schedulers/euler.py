"""Euler's method on the probability-flow ODE (Karras et al. 2022, algorithm 2), k-diffusion's ``sample_euler``.

``dx/dsigma = (x - denoised) / sigma``; one step moves ``x`` from ``sigma`` to
the next sigma along that slope. ``s_churn`` optionally adds noise first
(raising sigma to sigma-hat), which makes the sampler stochastic.
"""

from __future__ import annotations

import numpy as np
import torch

from ..random import randn_tensor
from . import schedules
from .base import (KARRAS_COMPATIBLE, SIGMA_RAMP_FIELDS, TRAINING_SCHEDULE_FIELDS, DenoisingSchedulerOutput,
                   SigmaScheduler)


class EulerDiscreteSchedulerOutput(DenoisingSchedulerOutput):
    """``prev_sample`` (x at the next sigma) and ``pred_original_sample`` (the step's x0 estimate)."""


def train_sigma_ramp(scheduler, in_sigmas: np.ndarray, num_steps: int, sigma_min=None, sigma_max=None):
    """The Karras / exponential / beta sigma ramp the config asks for, or ``None`` for none."""
    config = scheduler.config
    if config.get("use_karras_sigmas"):
        return schedules.karras_sigmas(in_sigmas, num_steps, sigma_min, sigma_max)
    if config.get("use_exponential_sigmas"):
        return schedules.exponential_sigmas(in_sigmas, num_steps, sigma_min, sigma_max)
    if config.get("use_beta_sigmas"):
        return schedules.beta_sigmas(in_sigmas, num_steps, sigma_min, sigma_max)
    return None


class EulerDiscreteScheduler(SigmaScheduler):
    """The Euler sampler of k-diffusion for discrete-time (DDPM-trained) models."""

    config_fields = dict(
        **TRAINING_SCHEDULE_FIELDS, prediction_type="epsilon", interpolation_type="linear", **SIGMA_RAMP_FIELDS,
        sigma_min=None, sigma_max=None, timestep_spacing="linspace", timestep_type="discrete", steps_offset=0,
        rescale_betas_zero_snr=False, final_sigmas_type="zero",
    )
    prediction_types = ("epsilon", "v_prediction", "sample", "original_sample")
    config_choices = {"interpolation_type": ("linear", "log_linear"), "timestep_type": ("discrete", "continuous"),
                      "final_sigmas_type": ("zero", "sigma_min")}
    _compatibles = KARRAS_COMPATIBLE

    def _setup(self) -> None:
        super()._setup()
        config = self.config
        sigmas = torch.from_numpy(schedules.sigmas_from_alphas_cumprod(self.alphas_cumprod)).flip(0)
        if self._continuous_timesteps:
            self.timesteps = 0.25 * sigmas.log()
        else:
            self.timesteps = schedules.default_timesteps(config.num_train_timesteps, torch.float32)
        self.sigmas = torch.cat([sigmas, torch.zeros(1)])
        self.is_scale_input_called = False
        self.use_karras_sigmas = config.use_karras_sigmas
        self.use_exponential_sigmas = config.use_exponential_sigmas
        self.use_beta_sigmas = config.use_beta_sigmas
        self._reset_step_counter()

    @property
    def _continuous_timesteps(self) -> bool:
        # v-prediction models trained on continuous time (e.g. the SD x4 upscaler's EDM form) see c_noise = log(sigma)/4
        return self.config.timestep_type == "continuous" and self.config.prediction_type == "v_prediction"

    def set_timesteps(self, num_inference_steps: int | None = None, device=None,
                      timesteps: list[int] | None = None, sigmas: list[float] | None = None):
        """Choose the steps: ``num_inference_steps`` spaced by the config, or your own ``timesteps`` or ``sigmas``."""
        owner = type(self).__name__
        config = self.config
        self._check_custom_schedule(num_inference_steps, timesteps, sigmas)
        if num_inference_steps is None:
            num_inference_steps = len(timesteps) if timesteps is not None else len(sigmas) - 1
        else:
            num_inference_steps = schedules.check_num_inference_steps(num_inference_steps,
                                                                      config.num_train_timesteps, owner)
        self.num_inference_steps = num_inference_steps
        train_sigmas = schedules.sigmas_from_alphas_cumprod(self.alphas_cumprod)
        log_train_sigmas = np.log(train_sigmas)

        if sigmas is not None:
            sigmas = np.array(sigmas).astype(np.float32)
            timesteps = schedules.sigma_to_timestep(sigmas[:-1], log_train_sigmas)
        else:
            if timesteps is not None:
                timesteps = np.array(timesteps).astype(np.float32)
            else:
                timesteps = schedules.spaced_timesteps(config.timestep_spacing, config.num_train_timesteps,
                                                       num_inference_steps, config.steps_offset).astype(np.float32)
            if config.interpolation_type == "linear":
                sigmas = schedules.interpolate_sigmas(timesteps, train_sigmas)
            else:  # log_linear: evenly in log-sigma over the whole training range
                sigmas = torch.linspace(np.log(train_sigmas[-1]), np.log(train_sigmas[0]),
                                        num_inference_steps + 1).exp().numpy()
            ramp = train_sigma_ramp(self, sigmas, self.num_inference_steps, config.sigma_min, config.sigma_max)
            if ramp is not None:
                sigmas = ramp
                timesteps = schedules.sigma_to_timestep(sigmas, log_train_sigmas)
            sigmas = np.concatenate([sigmas, [self._final_sigma()]]).astype(np.float32)

        sigmas = torch.from_numpy(sigmas).to(dtype=torch.float32, device=device)
        if self._continuous_timesteps:
            self.timesteps = (0.25 * sigmas[:-1].log()).to(device=device)
        else:
            self.timesteps = torch.from_numpy(timesteps.astype(np.float32)).to(device=device)
        self._reset_step_counter()
        self.sigmas = sigmas.to("cpu")  # read every step on the host; avoids a device sync per step

    def _check_custom_schedule(self, num_inference_steps, timesteps, sigmas) -> None:
        owner = f"{type(self).__name__}.set_timesteps"
        given = [name for name, value in (("num_inference_steps", num_inference_steps), ("timesteps", timesteps),
                                          ("sigmas", sigmas)) if value is not None]
        if len(given) != 1:
            raise ValueError(f"{owner}: pass exactly one of num_inference_steps, timesteps or sigmas, "
                             f"got {given or 'none'}")
        if timesteps is not None:
            for flag in ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas"):
                if self.config[flag]:
                    raise ValueError(f"{owner}: custom timesteps cannot be used with {flag}=True")
            if self._continuous_timesteps:
                raise ValueError(f"{owner}: custom timesteps cannot be used with timestep_type='continuous' "
                                 f"and prediction_type='v_prediction'")
        if sigmas is not None and len(sigmas) < 2:
            raise ValueError(f"{owner}: sigmas must hold at least two values (the last is where sampling ends)")

    def _final_sigma(self):
        """Where the last step lands: 0 (clean), or the smallest training sigma."""
        if self.config.final_sigmas_type == "sigma_min":
            return ((1 - self.alphas_cumprod[0]) / self.alphas_cumprod[0]) ** 0.5
        return 0

    def step(self, model_output: torch.Tensor, timestep: float | torch.Tensor, sample: torch.Tensor,
             s_churn: float = 0.0, s_tmin: float = 0.0, s_tmax: float = float("inf"), s_noise: float = 1.0,
             generator: torch.Generator | None = None,
             return_dict: bool = True) -> EulerDiscreteSchedulerOutput | tuple:
        """One Euler step from the current sigma to the next; ``s_churn > 0`` first adds noise (Karras alg. 2)."""
        self._start_step(timestep)
        sample = sample.to(torch.float32)  # upcast: the update subtracts nearly equal numbers
        sigma = self.sigmas[self.step_index]

        churn = min(s_churn / (len(self.sigmas) - 1), 2**0.5 - 1) if s_tmin <= sigma <= s_tmax else 0.0
        sigma_hat = sigma * (churn + 1)
        if churn > 0:
            noise = randn_tensor(model_output.shape, dtype=model_output.dtype, device=model_output.device,
                                 generator=generator)
            sample = sample + noise * s_noise * (sigma_hat**2 - sigma**2) ** 0.5

        denoised = schedules.denoised_from_sigma_prediction(self.config.prediction_type, model_output, sample, sigma,
                                                            sigma_hat)
        derivative = (sample - denoised) / sigma_hat
        prev_sample = sample + derivative * (self.sigmas[self.step_index + 1] - sigma_hat)
        prev_sample = prev_sample.to(model_output.dtype)
        self._step_index += 1

        if not return_dict:
            return (prev_sample, denoised)
        return EulerDiscreteSchedulerOutput(prev_sample=prev_sample, pred_original_sample=denoised)
