"""PNDM (Liu et al. 2022): pseudo numerical methods on the DDIM transfer function.

The transfer ``_get_prev_sample`` moves a sample between two timesteps given a
noise estimate (eq. 9). The noise estimate is combined across model calls:

- PRK warm-up (Runge-Kutta): 4 model calls per step for the first 3 steps,
  at t, t - h/2, t - h/2 and t - h (``skip_prk_steps=False``, the paper's method);
- PLMS (linear multistep): one call per step, Adams-Bashforth over the last
  up to 4 noise estimates. With ``skip_prk_steps=True`` (Stable Diffusion) the
  first step is warmed up by a Heun-like repeat instead.
"""

from __future__ import annotations

import numpy as np
import torch

from . import schedules
from .base import KARRAS_COMPATIBLE, TRAINING_SCHEDULE_FIELDS, DiscreteTimeScheduler, SchedulerOutput

# Runge-Kutta 4 weights of the four model calls of one PRK step
_RK4_WEIGHTS = (1 / 6, 1 / 3, 1 / 3, 1 / 6)


class PNDMScheduler(DiscreteTimeScheduler):
    """Pseudo numerical methods for diffusion models (PRK warm-up + PLMS), as in Stable Diffusion 1.x."""

    config_fields = dict(**TRAINING_SCHEDULE_FIELDS, skip_prk_steps=False, set_alpha_to_one=False,
                         prediction_type="epsilon", timestep_spacing="leading", steps_offset=0)
    prediction_types = ("epsilon", "v_prediction")
    _compatibles = KARRAS_COMPATIBLE

    def _setup(self) -> None:
        super()._setup()
        self.final_alpha_cumprod = torch.tensor(1.0) if self.config.set_alpha_to_one else self.alphas_cumprod[0]
        self.pndm_order = 4  # PLMS combines up to this many noise estimates
        self._timesteps = np.arange(0, self.config.num_train_timesteps)[::-1].copy()
        self.prk_timesteps = None
        self.plms_timesteps = None
        self.timesteps = None
        self._reset_history()

    def _reset_history(self) -> None:
        self.cur_model_output = 0  # running RK4 sum within a PRK step
        self.counter = 0  # model calls seen since set_timesteps
        self.cur_sample = None  # the sample a multi-call step started from
        self.ets = []  # past noise estimates, newest last

    def set_timesteps(self, num_inference_steps: int, device=None):
        """Lay out the PRK warm-up calls (unless skipped) followed by the PLMS steps."""
        owner = type(self).__name__
        train_steps = self.config.num_train_timesteps
        minimum = 1 if self.config.skip_prk_steps else self.pndm_order
        steps = schedules.check_num_inference_steps(num_inference_steps, train_steps, owner, minimum=minimum)
        self.num_inference_steps = steps
        spaced = schedules.spaced_timesteps(self.config.timestep_spacing, train_steps, steps, self.config.steps_offset)
        ascending = spaced.round()[::-1].astype(np.int64)
        self._timesteps = ascending
        if self.config.skip_prk_steps:
            # the second-to-last timestep twice: the Heun-like warm-up of the first step calls the model again there
            self.prk_timesteps = np.array([])
            self.plms_timesteps = np.concatenate([ascending[:-1], ascending[-2:-1], ascending[-1:]])[::-1].copy()
        else:
            # each of the last 4 steps at t and t - h/2, each half point twice, minus the ends: the 12 PRK calls
            half = np.tile(np.array([0, train_steps // steps // 2]), self.pndm_order)
            points = np.array(ascending[-self.pndm_order:]).repeat(2) + half
            self.prk_timesteps = (points[:-1].repeat(2)[1:-1])[::-1].copy()
            self.plms_timesteps = ascending[:-3][::-1].copy()
        timesteps = np.concatenate([self.prk_timesteps, self.plms_timesteps]).astype(np.int64)
        self.timesteps = torch.from_numpy(timesteps).to(device)
        self._reset_history()

    def step(self, model_output: torch.Tensor, timestep: int, sample: torch.Tensor, return_dict: bool = True,
             generator: torch.Generator | None = None) -> SchedulerOutput | tuple:
        """One model call's worth of progress: a PRK stage during warm-up, a PLMS step after.

        ``generator`` is accepted so every scheduler's ``step`` takes it; PNDM
        draws no noise. It comes last to keep diffusers' positional order.
        """
        if self.counter < len(self.prk_timesteps) and not self.config.skip_prk_steps:
            return self.step_prk(model_output=model_output, timestep=timestep, sample=sample, return_dict=return_dict)
        return self.step_plms(model_output=model_output, timestep=timestep, sample=sample, return_dict=return_dict)

    def step_prk(self, model_output: torch.Tensor, timestep: int, sample: torch.Tensor,
                 return_dict: bool = True) -> SchedulerOutput | tuple:
        """One of the four Runge-Kutta stages of a warm-up step."""
        self._require_timesteps()
        half_step = self.config.num_train_timesteps // self.num_inference_steps // 2
        stage = self.counter % 4
        prev_timestep = timestep - (0 if self.counter % 2 else half_step)
        start_timestep = self.prk_timesteps[self.counter // 4 * 4]

        if stage == 0:
            self.cur_model_output += _RK4_WEIGHTS[0] * model_output
            self.ets.append(model_output)
            self.cur_sample = sample
        elif stage in (1, 2):
            self.cur_model_output += _RK4_WEIGHTS[stage] * model_output
        else:  # the last stage moves with the weighted average of all four
            model_output = self.cur_model_output + _RK4_WEIGHTS[3] * model_output
            self.cur_model_output = 0

        start_sample = self.cur_sample if self.cur_sample is not None else sample
        prev_sample = self._get_prev_sample(start_sample, start_timestep, prev_timestep, model_output)
        self.counter += 1
        if not return_dict:
            return (prev_sample,)
        return SchedulerOutput(prev_sample=prev_sample)

    def step_plms(self, model_output: torch.Tensor, timestep: int, sample: torch.Tensor,
                  return_dict: bool = True) -> SchedulerOutput | tuple:
        """A linear multistep step: Adams-Bashforth over the stored noise estimates."""
        self._require_timesteps()
        if not self.config.skip_prk_steps and len(self.ets) < 3:
            raise ValueError(
                f"{type(self).__name__}.step_plms: the PRK warm-up has not run; with skip_prk_steps=False call "
                f"step() for all of scheduler.timesteps in order"
            )
        step_size = self.config.num_train_timesteps // self.num_inference_steps
        prev_timestep = timestep - step_size
        if self.counter != 1:
            self.ets = self.ets[-3:]
            self.ets.append(model_output)
        else:
            # the repeat call of the warm-up: redo the first step, from its start
            prev_timestep = timestep
            timestep = timestep + step_size

        ets = self.ets
        if len(ets) == 1 and self.counter == 0:
            self.cur_sample = sample
        elif len(ets) == 1 and self.counter == 1:
            model_output = (model_output + ets[-1]) / 2
            sample = self.cur_sample
            self.cur_sample = None
        elif len(ets) == 2:
            model_output = (3 * ets[-1] - ets[-2]) / 2
        elif len(ets) == 3:
            model_output = (23 * ets[-1] - 16 * ets[-2] + 5 * ets[-3]) / 12
        else:
            model_output = (1 / 24) * (55 * ets[-1] - 59 * ets[-2] + 37 * ets[-3] - 9 * ets[-4])

        prev_sample = self._get_prev_sample(sample, timestep, prev_timestep, model_output)
        self.counter += 1
        if not return_dict:
            return (prev_sample,)
        return SchedulerOutput(prev_sample=prev_sample)

    def _get_prev_sample(self, sample, timestep, prev_timestep, model_output):
        """The DDIM-like transfer from ``timestep`` to ``prev_timestep`` given a noise estimate (eq. 9)."""
        alpha_prod_t = self.alphas_cumprod[timestep]
        alpha_prod_t_prev = self.alphas_cumprod[prev_timestep] if prev_timestep >= 0 else self.final_alpha_cumprod
        beta_prod_t = 1 - alpha_prod_t
        beta_prod_t_prev = 1 - alpha_prod_t_prev
        if self.config.prediction_type == "v_prediction":
            model_output = (alpha_prod_t**0.5) * model_output + (beta_prod_t**0.5) * sample
        sample_coeff = (alpha_prod_t_prev / alpha_prod_t) ** (0.5)
        denominator = (alpha_prod_t * beta_prod_t_prev ** (0.5)
                       + (alpha_prod_t * beta_prod_t * alpha_prod_t_prev) ** (0.5))
        return sample_coeff * sample - (alpha_prod_t_prev - alpha_prod_t) * model_output / denominator
