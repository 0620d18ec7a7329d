"""DPM-Solver and DPM-Solver++ multistep (Lu et al. 2022a, 2022b), k-diffusion's ``sample_dpmpp_2m``.

The diffusion ODE is solved exactly in its linear part; only the model term
is approximated, by a polynomial in log-SNR ``lambda = log(alpha / sigma)``
through the last 1-3 model outputs. ``dpmsolver++`` works with x0 predictions
(best with guidance), ``dpmsolver`` with noise predictions; the ``sde-``
variants add fresh noise each step (Gonzalez et al.'s SDE-DPM-Solver++).
"""

from __future__ import annotations

import numpy as np
import torch

from ..random import randn_tensor
from . import schedules
from .base import KARRAS_COMPATIBLE, SIGMA_RAMP_FIELDS, TRAINING_SCHEDULE_FIELDS, SchedulerOutput, SigmaScheduler

ALGORITHM_TYPES = ("dpmsolver", "dpmsolver++", "sde-dpmsolver", "sde-dpmsolver++")
SOLVER_TYPES = ("midpoint", "heun")
# Configs of sibling solvers name their own variants; these map onto ours when swapping.
_ALGORITHM_ALIASES = {"deis": "dpmsolver++"}
_SOLVER_ALIASES = {"logrho": "midpoint", "bh1": "midpoint", "bh2": "midpoint"}


class DPMSolverMultistepScheduler(SigmaScheduler):
    """Fast high-order solver for diffusion ODEs/SDEs; 20-25 steps give good samples."""

    config_fields = dict(
        **TRAINING_SCHEDULE_FIELDS, solver_order=2, prediction_type="epsilon", thresholding=False,
        dynamic_thresholding_ratio=0.995, sample_max_value=1.0, algorithm_type="dpmsolver++", solver_type="midpoint",
        lower_order_final=True, euler_at_final=False, **SIGMA_RAMP_FIELDS, use_lu_lambdas=False,
        use_flow_sigmas=False, flow_shift=1.0, final_sigmas_type="zero", lambda_min_clipped=-float("inf"),
        # only "learned" / "learned_range" matter (the extra channels are dropped); DDPM's fixed_* values,
        # which arrive when swapping from a DDPM config, mean "not learned" here, as in the reference
        variance_type=None,
        timestep_spacing="linspace", steps_offset=0, rescale_betas_zero_snr=False, use_dynamic_shifting=False,
        time_shift_type="exponential",
    )
    prediction_types = ("epsilon", "sample", "v_prediction", "flow_prediction")
    config_choices = {"algorithm_type": ALGORITHM_TYPES, "solver_type": SOLVER_TYPES,
                      "final_sigmas_type": ("zero", "sigma_min"), "solver_order": (1, 2, 3),
                      "time_shift_type": ("exponential",)}
    _compatibles = KARRAS_COMPATIBLE

    def _setup(self) -> None:
        config = self.config
        if config.algorithm_type in _ALGORITHM_ALIASES:
            self.register_to_config(algorithm_type=_ALGORITHM_ALIASES[config.algorithm_type])
        if config.solver_type in _SOLVER_ALIASES:
            self.register_to_config(solver_type=_SOLVER_ALIASES[config.solver_type])
        super()._setup()
        self.alpha_t = torch.sqrt(self.alphas_cumprod)
        self.sigma_t = torch.sqrt(1 - self.alphas_cumprod)
        self.lambda_t = torch.log(self.alpha_t) - torch.log(self.sigma_t)
        self.sigmas = ((1 - self.alphas_cumprod) / self.alphas_cumprod) ** 0.5
        train_steps = self.config.num_train_timesteps
        timesteps = np.linspace(0, train_steps - 1, train_steps, dtype=np.float32)[::-1].copy()
        self.timesteps = torch.from_numpy(timesteps)
        self._reset_solver_state(self.config.solver_order)

    def _check_config(self) -> None:
        super()._check_config()
        owner = type(self).__name__
        algorithm_type, solver_order = self.config.algorithm_type, self.config.solver_order
        if not algorithm_type.endswith("dpmsolver++"):
            if self.config.final_sigmas_type == "zero":
                raise ValueError(f"{owner}: final_sigmas_type='zero' needs algorithm_type 'dpmsolver++' or "
                                 f"'sde-dpmsolver++' (noise predictions are undefined at sigma 0); got "
                                 f"algorithm_type={algorithm_type!r}: use final_sigmas_type='sigma_min'")
            if self.config.prediction_type == "flow_prediction":
                raise ValueError(f"{owner}: prediction_type='flow_prediction' needs algorithm_type 'dpmsolver++' "
                                 f"or 'sde-dpmsolver++', got {algorithm_type!r}")
        if algorithm_type == "sde-dpmsolver" and solver_order == 3:
            raise ValueError(f"{owner}: algorithm_type='sde-dpmsolver' has no third-order update; use "
                             f"solver_order 1 or 2, or algorithm_type='sde-dpmsolver++'")

    def _reset_solver_state(self, solver_order: int) -> None:
        self.model_outputs = [None] * solver_order  # the converted outputs of the last steps, newest last
        self.lower_order_nums = 0  # steps taken so far, capped at solver_order: the order history allows
        self._reset_step_counter()

    # DPM-Solver feeds the model unscaled samples and starts from unit noise
    init_noise_sigma = 1.0

    def scale_model_input(self, sample: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        """The model sees the sample as it is."""
        return sample

    def _missing_timestep_index(self, timestep) -> int:
        return len(self.timesteps) - 1

    def set_timesteps(self, num_inference_steps: int | None = None, device=None, mu: float | None = None,
                      timesteps: list[int] | None = None):
        """Choose the steps: ``num_inference_steps`` spaced by the config (or a ramp), or your own ``timesteps``."""
        owner = type(self).__name__
        config = self.config
        if mu is not None:
            if not (config.use_dynamic_shifting and config.time_shift_type == "exponential"):
                raise ValueError(f"{owner}.set_timesteps: mu needs use_dynamic_shifting=True")
            self.register_to_config(flow_shift=float(np.exp(mu)))
        if (num_inference_steps is None) == (timesteps is None):
            raise ValueError(f"{owner}.set_timesteps: pass exactly one of num_inference_steps or timesteps")
        if timesteps is not None:
            for flag in ("use_karras_sigmas", "use_lu_lambdas", "use_exponential_sigmas", "use_beta_sigmas"):
                if config[flag]:
                    raise ValueError(f"{owner}.set_timesteps: custom timesteps cannot be used with {flag}=True")
            timesteps = np.array(timesteps).astype(np.int64)
            num_steps = len(timesteps)
        else:
            num_steps = schedules.check_num_inference_steps(num_inference_steps, config.num_train_timesteps, owner)
            timesteps = self._spaced_timesteps(num_steps)

        train_sigmas = schedules.sigmas_from_alphas_cumprod(self.alphas_cumprod)
        log_train_sigmas = np.log(train_sigmas)
        flipped = np.flip(train_sigmas).copy()
        ramp_ends = dict(sigma_min=config.get("sigma_min"), sigma_max=config.get("sigma_max"))
        if config.use_karras_sigmas:
            sigmas = schedules.karras_sigmas(flipped, num_steps, **ramp_ends)
            timesteps = self._round_unless_cosine(schedules.sigma_to_timestep(sigmas, log_train_sigmas))
        elif config.use_lu_lambdas:
            sigmas = np.exp(schedules.lu_lambdas(np.flip(log_train_sigmas.copy()), num_steps))
            timesteps = self._round_unless_cosine(schedules.sigma_to_timestep(sigmas, log_train_sigmas))
        elif config.use_exponential_sigmas:
            sigmas = schedules.exponential_sigmas(flipped, num_steps, **ramp_ends)
            timesteps = schedules.sigma_to_timestep(sigmas, log_train_sigmas)
        elif config.use_beta_sigmas:
            sigmas = schedules.beta_sigmas(flipped, num_steps, **ramp_ends)
            timesteps = schedules.sigma_to_timestep(sigmas, log_train_sigmas)
        elif config.use_flow_sigmas:
            alphas = np.linspace(1, 1 / config.num_train_timesteps, num_steps + 1)
            sigmas = 1.0 - alphas
            shift = config.flow_shift
            sigmas = np.flip(shift * sigmas / (1 + (shift - 1) * sigmas))[:-1].copy()
            timesteps = (sigmas * config.num_train_timesteps).copy()
        else:
            sigmas = schedules.interpolate_sigmas(timesteps, train_sigmas)

        if config.final_sigmas_type == "sigma_min":
            final_sigma = ((1 - self.alphas_cumprod[0]) / self.alphas_cumprod[0]) ** 0.5
        else:
            final_sigma = 0
        self.sigmas = torch.from_numpy(np.concatenate([sigmas, [final_sigma]]).astype(np.float32))
        self.timesteps = torch.from_numpy(timesteps).to(device=device, dtype=torch.int64)
        self.num_inference_steps = len(timesteps)
        self._reset_solver_state(config.solver_order)

    def _spaced_timesteps(self, num_steps: int) -> np.ndarray:
        """Spaced timesteps over the usable range: ``lambda_min_clipped`` may cut the noisiest steps off."""
        config = self.config
        clipped = torch.searchsorted(torch.flip(self.lambda_t, [0]), config.lambda_min_clipped)
        usable = int(config.num_train_timesteps - clipped.item())
        if config.timestep_spacing == "trailing":
            timesteps = schedules.spaced_timesteps("trailing", config.num_train_timesteps, num_steps, span=usable)
        else:
            # one step more than asked, then drop the cleanest: the last step lands on sigma 0 instead
            timesteps = schedules.spaced_timesteps(config.timestep_spacing, config.num_train_timesteps,
                                                   num_steps + 1, config.steps_offset, span=usable)[:-1]
        return timesteps.round().astype(np.int64)

    def _round_unless_cosine(self, timesteps: np.ndarray) -> np.ndarray:
        # the cosine schedule keeps fractional timesteps (they are truncated when stored as ints)
        return timesteps if self.config.beta_schedule == "squaredcos_cap_v2" else timesteps.round()

    # -- the solver ---------------------------------------------------------

    def _sigma_to_alpha_sigma_t(self, sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The (alpha_t, sigma_t) of VP diffusion (or of a flow) for a k-diffusion sigma."""
        if self.config.use_flow_sigmas:
            return 1 - sigma, sigma
        alpha_t = 1 / ((sigma**2 + 1) ** 0.5)
        return alpha_t, sigma * alpha_t

    def _alpha_sigma_lambda(self, index: int):
        alpha, sigma = self._sigma_to_alpha_sigma_t(self.sigmas[index])
        return alpha, sigma, torch.log(alpha) - torch.log(sigma)

    def _step_ends(self):
        """(alpha, sigma) where this step lands and where it starts, and its length ``h`` in log-SNR."""
        alpha_t, sigma_t, lambda_t = self._alpha_sigma_lambda(self.step_index + 1)
        alpha_s, sigma_s, lambda_s = self._alpha_sigma_lambda(self.step_index)
        return alpha_t, sigma_t, alpha_s, sigma_s, lambda_t - lambda_s

    def _past_step_length(self, back: int):
        """The log-SNR length of the step taken ``back`` steps ago (what the multistep terms extrapolate over)."""
        _, _, lambda_end = self._alpha_sigma_lambda(self.step_index - back + 1)
        _, _, lambda_start = self._alpha_sigma_lambda(self.step_index - back)
        return lambda_end - lambda_start

    def convert_model_output(self, model_output: torch.Tensor, *args, sample: torch.Tensor | None = None,
                             **kwargs) -> torch.Tensor:
        """What the solver integrates: x0 for the ``++`` algorithms, the noise for the others."""
        if sample is None:
            if len(args) > 1:
                sample = args[1]
            else:
                raise ValueError(f"{type(self).__name__}.convert_model_output: sample is required")
        config = self.config
        kind = config.prediction_type
        if kind == "epsilon" and config.variance_type in ("learned", "learned_range"):
            # the noise is the first half; the reference hard-codes 3 channels (DeepFloyd IF's pixels), which
            # is the same there and wrong for 4-channel latents
            model_output = model_output[:, :sample.shape[1]]
        sigma = self.sigmas[self.step_index]
        alpha_t, sigma_t = self._sigma_to_alpha_sigma_t(sigma)
        if config.algorithm_type.endswith("dpmsolver++"):
            if kind == "epsilon":
                x0 = (sample - sigma_t * model_output) / alpha_t
            elif kind == "sample":
                x0 = model_output
            elif kind == "v_prediction":
                x0 = alpha_t * sample - sigma_t * model_output
            else:  # flow_prediction
                x0 = sample - sigma * model_output
            if config.thresholding:
                x0 = self._threshold(x0)
            return x0
        if kind == "epsilon":
            epsilon = model_output
        elif kind == "sample":
            epsilon = (sample - alpha_t * model_output) / sigma_t
        else:  # v_prediction
            epsilon = alpha_t * model_output + sigma_t * sample
        if config.thresholding:
            x0 = self._threshold((sample - sigma_t * epsilon) / alpha_t)
            epsilon = (sample - alpha_t * x0) / sigma_t
        return epsilon

    def _threshold(self, x0: torch.Tensor) -> torch.Tensor:
        return schedules.threshold_sample(x0, self.config.dynamic_thresholding_ratio, self.config.sample_max_value)

    def dpm_solver_first_order_update(self, model_output: torch.Tensor, *args, sample: torch.Tensor | None = None,
                                      noise: torch.Tensor | None = None, **kwargs) -> torch.Tensor:
        """One first-order step (DDIM in lambda-time) from the current sigma to the next."""
        alpha_t, sigma_t, alpha_s, sigma_s, h = self._step_ends()
        algorithm = self.config.algorithm_type
        if algorithm == "dpmsolver++":
            return (sigma_t / sigma_s) * sample - (alpha_t * (torch.exp(-h) - 1.0)) * model_output
        if algorithm == "dpmsolver":
            return (alpha_t / alpha_s) * sample - (sigma_t * (torch.exp(h) - 1.0)) * model_output
        if algorithm == "sde-dpmsolver++":
            return (
                (sigma_t / sigma_s * torch.exp(-h)) * sample
                + (alpha_t * (1 - torch.exp(-2.0 * h))) * model_output
                + sigma_t * torch.sqrt(1.0 - torch.exp(-2 * h)) * noise
            )
        return (  # sde-dpmsolver
            (alpha_t / alpha_s) * sample
            - 2.0 * (sigma_t * (torch.exp(h) - 1.0)) * model_output
            + sigma_t * torch.sqrt(torch.exp(2 * h) - 1.0) * noise
        )

    def multistep_dpm_solver_second_order_update(self, model_output_list: list[torch.Tensor], *args,
                                                  sample: torch.Tensor | None = None,
                                                  noise: torch.Tensor | None = None, **kwargs) -> torch.Tensor:
        """A second-order step through the last two model outputs (eq. 3.9 / DPM-Solver++ alg. 2)."""
        alpha_t, sigma_t, alpha_s0, sigma_s0, h = self._step_ends()
        h_0 = self._past_step_length(1)
        m0, m1 = model_output_list[-1], model_output_list[-2]
        r0 = h_0 / h
        D0, D1 = m0, (1.0 / r0) * (m0 - m1)
        algorithm, midpoint = self.config.algorithm_type, self.config.solver_type == "midpoint"
        if algorithm == "dpmsolver++":
            base = (sigma_t / sigma_s0) * sample - (alpha_t * (torch.exp(-h) - 1.0)) * D0
            if midpoint:
                return base - 0.5 * (alpha_t * (torch.exp(-h) - 1.0)) * D1
            return base + (alpha_t * ((torch.exp(-h) - 1.0) / h + 1.0)) * D1
        if algorithm == "dpmsolver":
            base = (alpha_t / alpha_s0) * sample - (sigma_t * (torch.exp(h) - 1.0)) * D0
            if midpoint:
                return base - 0.5 * (sigma_t * (torch.exp(h) - 1.0)) * D1
            return base - (sigma_t * ((torch.exp(h) - 1.0) / h - 1.0)) * D1
        if algorithm == "sde-dpmsolver++":
            base = (sigma_t / sigma_s0 * torch.exp(-h)) * sample + (alpha_t * (1 - torch.exp(-2.0 * h))) * D0
            if midpoint:
                correction = 0.5 * (alpha_t * (1 - torch.exp(-2.0 * h))) * D1
            else:
                correction = (alpha_t * ((1.0 - torch.exp(-2.0 * h)) / (-2.0 * h) + 1.0)) * D1
            return base + correction + sigma_t * torch.sqrt(1.0 - torch.exp(-2 * h)) * noise
        base = (alpha_t / alpha_s0) * sample - 2.0 * (sigma_t * (torch.exp(h) - 1.0)) * D0  # sde-dpmsolver
        if midpoint:
            correction = (sigma_t * (torch.exp(h) - 1.0)) * D1
        else:
            correction = 2.0 * (sigma_t * ((torch.exp(h) - 1.0) / h - 1.0)) * D1
        return base - correction + sigma_t * torch.sqrt(torch.exp(2 * h) - 1.0) * noise

    def multistep_dpm_solver_third_order_update(self, model_output_list: list[torch.Tensor], *args,
                                                 sample: torch.Tensor | None = None,
                                                 noise: torch.Tensor | None = None, **kwargs) -> torch.Tensor:
        """A third-order step through the last three model outputs."""
        alpha_t, sigma_t, alpha_s0, sigma_s0, h = self._step_ends()
        h_0, h_1 = self._past_step_length(1), self._past_step_length(2)
        m0, m1, m2 = model_output_list[-1], model_output_list[-2], model_output_list[-3]
        r0, r1 = h_0 / h, h_1 / h
        D0 = m0
        D1_0, D1_1 = (1.0 / r0) * (m0 - m1), (1.0 / r1) * (m1 - m2)
        D1 = D1_0 + (r0 / (r0 + r1)) * (D1_0 - D1_1)
        D2 = (1.0 / (r0 + r1)) * (D1_0 - D1_1)
        algorithm = self.config.algorithm_type
        if algorithm == "dpmsolver++":
            return (
                (sigma_t / sigma_s0) * sample
                - (alpha_t * (torch.exp(-h) - 1.0)) * D0
                + (alpha_t * ((torch.exp(-h) - 1.0) / h + 1.0)) * D1
                - (alpha_t * ((torch.exp(-h) - 1.0 + h) / h**2 - 0.5)) * D2
            )
        if algorithm == "dpmsolver":
            return (
                (alpha_t / alpha_s0) * sample
                - (sigma_t * (torch.exp(h) - 1.0)) * D0
                - (sigma_t * ((torch.exp(h) - 1.0) / h - 1.0)) * D1
                - (sigma_t * ((torch.exp(h) - 1.0 - h) / h**2 - 0.5)) * D2
            )
        return (  # sde-dpmsolver++
            (sigma_t / sigma_s0 * torch.exp(-h)) * sample
            + (alpha_t * (1.0 - torch.exp(-2.0 * h))) * D0
            + (alpha_t * ((1.0 - torch.exp(-2.0 * h)) / (-2.0 * h) + 1.0)) * D1
            + (alpha_t * ((1.0 - torch.exp(-2.0 * h) - 2.0 * h) / (2.0 * h) ** 2 - 0.5)) * D2
            + sigma_t * torch.sqrt(1.0 - torch.exp(-2 * h)) * noise
        )

    def step(self, model_output: torch.Tensor, timestep: int | torch.Tensor, sample: torch.Tensor,
             generator: torch.Generator | None = None, variance_noise: torch.Tensor | None = None,
             return_dict: bool = True) -> SchedulerOutput | tuple:
        """One multistep step; the order rises with the history and drops again near the end."""
        self._require_timesteps()
        if self.step_index is None:
            self._init_step_index(timestep)
        config = self.config
        num_steps = len(self.timesteps)
        # Low-order steps at the end keep few-step runs stable (and sigma 0 allows only first order).
        short_run = config.lower_order_final and num_steps < 15
        final_first_order = self.step_index == num_steps - 1 and (
            config.euler_at_final or short_run or config.final_sigmas_type == "zero")
        final_second_order = self.step_index == num_steps - 2 and short_run

        model_output = self.convert_model_output(model_output, sample=sample)
        self.model_outputs = self.model_outputs[1:] + [model_output]
        sample = sample.to(torch.float32)
        noise = None
        if config.algorithm_type.startswith("sde-"):
            if variance_noise is None:
                noise = randn_tensor(model_output.shape, generator=generator, device=model_output.device,
                                     dtype=torch.float32)
            else:
                noise = variance_noise.to(device=model_output.device, dtype=torch.float32)

        if config.solver_order == 1 or self.lower_order_nums < 1 or final_first_order:
            prev_sample = self.dpm_solver_first_order_update(model_output, sample=sample, noise=noise)
        elif config.solver_order == 2 or self.lower_order_nums < 2 or final_second_order:
            prev_sample = self.multistep_dpm_solver_second_order_update(self.model_outputs, sample=sample, noise=noise)
        else:
            prev_sample = self.multistep_dpm_solver_third_order_update(self.model_outputs, sample=sample, noise=noise)
        self.lower_order_nums = min(self.lower_order_nums + 1, config.solver_order)

        prev_sample = prev_sample.to(model_output.dtype)
        self._step_index += 1
        if not return_dict:
            return (prev_sample,)
        return SchedulerOutput(prev_sample=prev_sample)

    def add_noise(self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """``alpha_t * x0 + sigma_t * noise`` at each batch item's timestep (or at the begin index)."""
        alpha_t, sigma_t = self._sigma_to_alpha_sigma_t(self._noise_sigma(original_samples, timesteps))
        return alpha_t * original_samples + sigma_t * noise

