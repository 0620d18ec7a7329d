"""Noise schedules: the math every scheduler shares, written once.

A discrete-time diffusion model is trained on ``num_train_timesteps`` noise
levels. Everything here turns a scheduler's config into those levels and
back:

- ``betas`` -> ``alphas_cumprod`` (how much signal is left at each training step),
- ``alphas_cumprod`` -> ``sigmas`` (noise-to-signal ratio, the k-diffusion view),
- which training steps an inference run visits (``timestep_spacing``),
- the forward process and the posterior q(x_{t-1} | x_t, x_0), for the
  samplers and for training losses alike,
- sigma ramps (Karras, exponential, beta, Lu) and the way back from a sigma
  to a fractional training step.

The arithmetic keeps the reference's dtypes step for step (float32 tensors for
the schedule, numpy float64 where it interpolates), because results are
compared with diffusers to 1e-5.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from typing import Sequence

import numpy as np
import torch

BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2", "sigmoid", "laplace")
TIMESTEP_SPACINGS = ("linspace", "leading", "trailing")

# The rho of Karras et al. (2022), eq. 5: how strongly the ramp crowds steps near sigma_min.
KARRAS_RHO = 7.0


def check_choice(argument: str, value, choices: Sequence[str], owner: str) -> None:
    """Raise a ValueError naming ``argument`` if ``value`` is not one of ``choices``."""
    if value not in choices:
        raise ValueError(f"{owner}: {argument} must be one of {list(choices)}, got {value!r}")


def check_num_inference_steps(num_inference_steps, num_train_timesteps: int, owner: str, minimum: int = 1) -> int:
    """The number of inference steps as an int in ``[minimum, num_train_timesteps]``, or a clear error."""
    if isinstance(num_inference_steps, bool) or not isinstance(num_inference_steps, numbers.Integral):
        raise TypeError(
            f"{owner}.set_timesteps: num_inference_steps must be an int, got {type(num_inference_steps).__name__} "
            f"{num_inference_steps!r}"
        )
    steps = int(num_inference_steps)
    if not minimum <= steps <= num_train_timesteps:
        raise ValueError(
            f"{owner}.set_timesteps: num_inference_steps must be between {minimum} and num_train_timesteps="
            f"{num_train_timesteps} (the model was trained on that many noise levels), got {steps}"
        )
    return steps


# ---------------------------------------------------------------------------
# betas and alphas


def _alpha_bar_cosine(t: float) -> float:
    # Nichol & Dhariwal (2021), eq. 17, with their offset s = 0.008
    return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2


def _alpha_bar_laplace(t: float) -> float:
    log_snr = -0.5 * math.copysign(1, 0.5 - t) * math.log(1 - 2 * math.fabs(0.5 - t) + 1e-6)
    snr = math.exp(log_snr)
    return math.sqrt(snr / (1 + snr))


def betas_from_alpha_bar(num_train_timesteps: int, alpha_bar, max_beta: float = 0.999) -> torch.Tensor:
    """Betas whose cumulative product of ``1 - beta`` follows the continuous ``alpha_bar(t)`` on [0, 1]."""
    betas = []
    for step in range(num_train_timesteps):
        here, then = step / num_train_timesteps, (step + 1) / num_train_timesteps
        betas.append(min(1 - alpha_bar(then) / alpha_bar(here), max_beta))
    return torch.tensor(betas, dtype=torch.float32)


def make_betas(
    beta_schedule: str,
    num_train_timesteps: int,
    beta_start: float = 0.0001,
    beta_end: float = 0.02,
    trained_betas=None,
    owner: str = "scheduler",
) -> torch.Tensor:
    """The float32 betas a scheduler config describes (``trained_betas`` wins when given)."""
    if trained_betas is not None:
        return torch.tensor(trained_betas, dtype=torch.float32)
    check_choice("beta_schedule", beta_schedule, BETA_SCHEDULES, owner)
    if beta_schedule == "linear":
        return torch.linspace(beta_start, beta_end, num_train_timesteps, dtype=torch.float32)
    if beta_schedule == "scaled_linear":
        # linear in sqrt(beta): the schedule of latent diffusion (Stable Diffusion, Kandinsky)
        return torch.linspace(beta_start**0.5, beta_end**0.5, num_train_timesteps, dtype=torch.float32) ** 2
    if beta_schedule == "squaredcos_cap_v2":
        return betas_from_alpha_bar(num_train_timesteps, _alpha_bar_cosine)
    if beta_schedule == "laplace":
        return betas_from_alpha_bar(num_train_timesteps, _alpha_bar_laplace)
    ramp = torch.linspace(-6, 6, num_train_timesteps)  # sigmoid
    return torch.sigmoid(ramp) * (beta_end - beta_start) + beta_start


def rescale_zero_terminal_snr(betas: torch.Tensor) -> torch.Tensor:
    """Shift and scale ``sqrt(alphas_cumprod)`` so the last step is pure noise (Lin et al. 2023, Alg. 1).

    The first step keeps its value, so the model still sees clean data at t=0.
    """
    root = torch.cumprod(1.0 - betas, dim=0).sqrt()
    first, last = root[0].clone(), root[-1].clone()
    root = (root - last) * (first / (first - last))
    alphas_cumprod = root**2
    alphas = torch.cat([alphas_cumprod[0:1], alphas_cumprod[1:] / alphas_cumprod[:-1]])
    return 1 - alphas


# The alpha_bar the sigma-based schedulers give the last step of a zero-terminal-SNR schedule: there
# alpha_bar is 0 and sigma infinite, so they keep it finite (sigma ~ 4096), as the reference does.
ZERO_SNR_ALPHA_CUMPROD = 2**-24


def clamp_zero_terminal_snr(alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """``alphas_cumprod`` with its last value raised to ``ZERO_SNR_ALPHA_CUMPROD`` (a finite last sigma)."""
    clamped = alphas_cumprod.clone()
    clamped[-1] = ZERO_SNR_ALPHA_CUMPROD
    return clamped


# ---------------------------------------------------------------------------
# the forward process q(x_t | x_0) and its posterior q(x_{t-1} | x_t, x_0) (Ho et al. 2020)

LEARNED_VARIANCE_TYPES = ("learned", "learned_range")


def noise_scales(alphas_cumprod: torch.Tensor, timesteps: torch.Tensor, like: torch.Tensor):
    """``sqrt(alpha_bar_t)`` and ``sqrt(1 - alpha_bar_t)`` per batch item, shaped to multiply ``like``.

    The arithmetic runs in ``alphas_cumprod``'s dtype and device: the caller chooses them.
    """
    alpha_prod = alphas_cumprod[timesteps]
    return broadcast_to_sample(alpha_prod**0.5, like), broadcast_to_sample((1 - alpha_prod) ** 0.5, like)


def add_noise(alphas_cumprod: torch.Tensor, original: torch.Tensor, noise: torch.Tensor,
              timesteps: torch.Tensor) -> torch.Tensor:
    """The forward process: ``sqrt(alpha_bar_t) * x0 + sqrt(1 - alpha_bar_t) * noise``, one t per batch item."""
    signal, noise_scale = noise_scales(alphas_cumprod, timesteps, original)
    return signal * original + noise_scale * noise


def predicted_original(prediction_type: str, model_output, sample, alpha_prod_t, beta_prod_t):
    """x0 as a model's output implies it, for an ``epsilon``, ``sample`` or ``v_prediction`` model."""
    if prediction_type == "epsilon":
        return (sample - beta_prod_t ** (0.5) * model_output) / alpha_prod_t ** (0.5)
    if prediction_type == "sample":
        return model_output
    return (alpha_prod_t**0.5) * sample - (beta_prod_t**0.5) * model_output  # v_prediction


def denoised_from_sigma_prediction(prediction_type: str, model_output, sample, sigma, eps_sigma=None):
    """x0 from a model that sees ``sample / sqrt(sigma**2 + 1)`` (k-diffusion's "denoised").

    ``eps_sigma`` is the sigma the noise estimate is scaled by (Euler's churned
    sigma-hat); it defaults to ``sigma``.
    """
    if prediction_type == "epsilon":
        return sample - (sigma if eps_sigma is None else eps_sigma) * model_output
    if prediction_type == "v_prediction":
        return model_output * (-sigma / (sigma**2 + 1) ** 0.5) + (sample / (sigma**2 + 1))
    return model_output  # "sample" / "original_sample"


def posterior_variance(alpha_prod_t, alpha_prod_t_prev, beta_t=None):
    """Variance of q(x_{t-1} | x_t, x_0) (eq. 7); ``beta_t`` defaults to the one the alphas imply."""
    if beta_t is None:
        beta_t = 1 - alpha_prod_t / alpha_prod_t_prev
    return (1 - alpha_prod_t_prev) / (1 - alpha_prod_t) * beta_t


def posterior_mean_coefficients(alpha_prod_t, alpha_prod_t_prev, alpha_t, beta_t):
    """The weights of x0 and of x_t in the mean of q(x_{t-1} | x_t, x_0) (eq. 7)."""
    beta_prod_t = 1 - alpha_prod_t
    original_coeff = (alpha_prod_t_prev ** (0.5) * beta_t) / beta_prod_t
    sample_coeff = alpha_t ** (0.5) * (1 - alpha_prod_t_prev) / beta_prod_t
    return original_coeff, sample_coeff


def posterior_mean(original, sample, alpha_prod_t, alpha_prod_t_prev, alpha_t, beta_t):
    """Mean of q(x_{t-1} | x_t, x_0) from the (predicted) x0 and the current sample."""
    original_coeff, sample_coeff = posterior_mean_coefficients(alpha_prod_t, alpha_prod_t_prev, alpha_t, beta_t)
    return original_coeff * original + sample_coeff * sample


def learned_range_log_variance(model_value, log_beta, log_posterior_variance):
    """The log-variance a ``learned_range`` model picks (Nichol & Dhariwal 2021, eq. 15).

    ``model_value`` in [-1, 1] interpolates in log space from the posterior
    variance (-1) to beta (+1).
    """
    fraction = (model_value + 1) / 2
    return fraction * log_beta + (1 - fraction) * log_posterior_variance


@dataclasses.dataclass(frozen=True)
class PosteriorTables:
    """q(x_{t-1} | x_t, x_0) for every single training step t, as a training loss needs it."""

    variance: torch.Tensor
    log_variance: torch.Tensor  # at t = 0 (variance 0) it repeats t = 1's, as in Improved DDPM
    original_coeff: torch.Tensor  # weight of x0 in the mean
    sample_coeff: torch.Tensor  # weight of x_t in the mean


def posterior_tables(betas: torch.Tensor, alphas_cumprod: torch.Tensor) -> PosteriorTables:
    """The posterior of each training step, in the dtype of ``betas`` and ``alphas_cumprod``."""
    previous = torch.cat([alphas_cumprod.new_ones(1), alphas_cumprod[:-1]])
    variance = posterior_variance(alphas_cumprod, previous, betas)
    log_variance = torch.log(torch.cat([variance[1:2], variance[1:]]))
    original_coeff, sample_coeff = posterior_mean_coefficients(alphas_cumprod, previous, 1 - betas, betas)
    return PosteriorTables(variance, log_variance, original_coeff, sample_coeff)


# ---------------------------------------------------------------------------
# which training steps an inference run visits


def spaced_timesteps(
    spacing: str,
    num_train_timesteps: int,
    num_steps: int,
    steps_offset: int = 0,
    span: int | None = None,
) -> np.ndarray:
    """``num_steps`` training steps, descending, as float64 (``linspace`` values are not rounded).

    - ``linspace``: evenly from 0 to the last step, both included;
    - ``leading``: multiples of ``num_train_timesteps // num_steps`` from 0, plus ``steps_offset``;
    - ``trailing``: counted back from the last step (Lin et al. 2023, table 2).

    ``span`` is how many training steps are usable (all of them unless a
    scheduler clips the noisiest ones away).
    """
    span = num_train_timesteps if span is None else span
    if spacing == "linspace":
        return np.linspace(0, span - 1, num_steps)[::-1].copy()
    if spacing == "leading":
        return (np.arange(0, num_steps) * (span // num_steps))[::-1].astype(np.float64) + steps_offset
    if spacing == "trailing":
        return np.round(np.arange(span, 0, -num_train_timesteps / num_steps)) - 1
    raise ValueError(f"timestep_spacing must be one of {list(TIMESTEP_SPACINGS)}, got {spacing!r}")


def default_timesteps(num_train_timesteps: int, dtype=torch.int64) -> torch.Tensor:
    """Every training step, noisiest first: the schedule before ``set_timesteps`` is called."""
    return torch.from_numpy(np.arange(0, num_train_timesteps)[::-1].copy()).to(dtype)


# ---------------------------------------------------------------------------
# sigmas: the k-diffusion view of the same schedule


def sigmas_from_alphas_cumprod(alphas_cumprod: torch.Tensor) -> np.ndarray:
    """``sqrt((1 - alpha_bar) / alpha_bar)`` per training step, ascending in t, float32."""
    return (((1 - alphas_cumprod) / alphas_cumprod) ** 0.5).numpy(force=True)


def interpolate_sigmas(timesteps: np.ndarray, train_sigmas: np.ndarray) -> np.ndarray:
    """The sigma at (possibly fractional) training steps, linearly interpolated (float64)."""
    return np.interp(timesteps, np.arange(0, len(train_sigmas)), train_sigmas)


def sigma_to_timestep(sigmas: np.ndarray, log_train_sigmas: np.ndarray) -> np.ndarray:
    """The fractional training step of each sigma: linear interpolation in log-sigma."""
    log_sigmas = np.log(np.maximum(sigmas, 1e-10))
    distances = log_sigmas[np.newaxis, :] - log_train_sigmas[:, np.newaxis]
    low = np.cumsum(distances >= 0, axis=0).argmax(axis=0).clip(max=log_train_sigmas.shape[0] - 2)
    high = low + 1
    low_log, high_log = log_train_sigmas[low], log_train_sigmas[high]
    weight = np.clip((low_log - log_sigmas) / (low_log - high_log), 0, 1)
    return ((1 - weight) * low + weight * high).reshape(np.shape(sigmas))


def _ends(in_sigmas: np.ndarray, sigma_min: float | None, sigma_max: float | None) -> tuple[float, float]:
    low = sigma_min if sigma_min is not None else in_sigmas[-1].item()
    high = sigma_max if sigma_max is not None else in_sigmas[0].item()
    return low, high


def karras_sigmas(in_sigmas: np.ndarray, num_steps: int, sigma_min=None, sigma_max=None,
                  rho: float = KARRAS_RHO) -> np.ndarray:
    """Karras et al. (2022) eq. 5: evenly spaced in ``sigma ** (1 / rho)`` between the ends of ``in_sigmas``."""
    low, high = _ends(in_sigmas, sigma_min, sigma_max)
    ramp = np.linspace(0, 1, num_steps)
    high_inv, low_inv = high ** (1 / rho), low ** (1 / rho)
    return (high_inv + ramp * (low_inv - high_inv)) ** rho


def exponential_sigmas(in_sigmas: np.ndarray, num_steps: int, sigma_min=None, sigma_max=None) -> np.ndarray:
    """Evenly spaced in log-sigma between the ends of ``in_sigmas``."""
    low, high = _ends(in_sigmas, sigma_min, sigma_max)
    return np.exp(np.linspace(math.log(high), math.log(low), num_steps))


def beta_sigmas(in_sigmas: np.ndarray, num_steps: int, sigma_min=None, sigma_max=None,
                alpha: float = 0.6, beta: float = 0.6) -> np.ndarray:
    """Sigmas at the quantiles of a Beta(alpha, beta) distribution (Lee et al. 2024); needs scipy."""
    import scipy.stats

    low, high = _ends(in_sigmas, sigma_min, sigma_max)
    quantiles = [scipy.stats.beta.ppf(q, alpha, beta) for q in 1 - np.linspace(0, 1, num_steps)]
    return np.array([low + q * (high - low) for q in quantiles])


def lu_lambdas(in_lambdas: np.ndarray, num_steps: int) -> np.ndarray:
    """Evenly spaced log-SNR (lambda) values between the ends of ``in_lambdas`` (Lu et al. 2022)."""
    low, high = in_lambdas[-1].item(), in_lambdas[0].item()
    return high + np.linspace(0, 1, num_steps) * (low - high)


def check_sigma_ramp(config, owner: str) -> None:
    """At most one of the sigma ramps may be switched on; the beta ramp needs scipy."""
    chosen = [name for name in ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas") if config.get(name)]
    if len(chosen) > 1:
        raise ValueError(f"{owner}: only one of use_karras_sigmas, use_exponential_sigmas, use_beta_sigmas "
                         f"can be True, got {chosen}")
    if config.get("use_beta_sigmas"):
        try:
            import scipy  # noqa: F401
        except ImportError:
            raise ImportError(f"{owner}: use_beta_sigmas=True needs scipy; `pip install scipy`") from None


# ---------------------------------------------------------------------------
# tensors


def broadcast_to_sample(values: torch.Tensor, sample: torch.Tensor) -> torch.Tensor:
    """One value per batch item, shaped to multiply a sample of any rank."""
    values = values.flatten()
    while values.ndim < sample.ndim:
        values = values.unsqueeze(-1)
    return values


def threshold_sample(sample: torch.Tensor, ratio: float, max_value: float) -> torch.Tensor:
    """Dynamic thresholding (Saharia et al. 2022, Imagen): clip x0 at a per-sample percentile, then rescale.

    The percentile ``s`` of ``|x0|`` is clamped to ``[1, max_value]``; x0 is
    clipped to ``[-s, s]`` and divided by ``s``. With ``s = 1`` this is plain clipping.
    """
    dtype = sample.dtype
    batch, channels, *rest = sample.shape
    if dtype not in (torch.float32, torch.float64):
        sample = sample.float()  # quantile needs float32+, and CPU clamp has no half kernel
    flat = sample.reshape(batch, channels * int(np.prod(rest)))
    s = torch.quantile(flat.abs(), ratio, dim=1)
    s = torch.clamp(s, min=1, max=max_value).unsqueeze(1)
    flat = torch.clamp(flat, -s, s) / s
    return flat.reshape(batch, channels, *rest).to(dtype)
