"""The shared schedule math, against the reference's helpers and against known values."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import diffusers
from diffusers.schedulers import scheduling_ddpm
from sfumato.schedulers import schedules


@pytest.mark.parametrize("beta_schedule", schedules.BETA_SCHEDULES)
def test_betas_match_diffusers(beta_schedule):
    ours = schedules.make_betas(beta_schedule, 1000, 0.00085, 0.012)
    theirs = diffusers.DDPMScheduler(beta_schedule=beta_schedule, beta_start=0.00085, beta_end=0.012).betas
    assert ours.dtype == torch.float32
    torch.testing.assert_close(ours, theirs, rtol=0, atol=0)


def test_zero_terminal_snr_rescale_matches_diffusers():
    betas = schedules.make_betas("scaled_linear", 1000, 0.00085, 0.012)
    rescaled = schedules.rescale_zero_terminal_snr(betas)
    torch.testing.assert_close(rescaled, scheduling_ddpm.rescale_zero_terminal_snr(betas), rtol=0, atol=0)
    alphas_cumprod = torch.cumprod(1 - rescaled, dim=0)
    assert alphas_cumprod[-1].item() == pytest.approx(0.0, abs=1e-12)  # the last step is pure noise
    assert alphas_cumprod[0].item() == pytest.approx(1 - betas[0].item(), rel=1e-6)


@pytest.mark.parametrize(
    ("spacing", "steps", "offset", "expected"),
    [
        ("linspace", 4, 0, [999, 666, 333, 0]),
        ("leading", 4, 1, [751, 501, 251, 1]),
        ("trailing", 4, 0, [999, 749, 499, 249]),
        ("trailing", 3, 0, [999, 666, 332]),
    ],
)
def test_spacings(spacing, steps, offset, expected):
    assert schedules.spaced_timesteps(spacing, 1000, steps, offset).round().astype(int).tolist() == expected


def test_unknown_spacing_is_rejected():
    with pytest.raises(ValueError, match="timestep_spacing must be one of"):
        schedules.spaced_timesteps("random", 1000, 4)


def test_sigma_to_timestep_matches_diffusers_and_inverts_interpolation():
    reference = diffusers.EulerDiscreteScheduler()
    train_sigmas = schedules.sigmas_from_alphas_cumprod(reference.alphas_cumprod)
    log_sigmas = np.log(train_sigmas)
    timesteps = np.array([0.0, 10.25, 500.5, 998.0, 999.0])
    sigmas = schedules.interpolate_sigmas(timesteps, train_sigmas)
    ours = schedules.sigma_to_timestep(sigmas, log_sigmas)
    theirs = np.array([reference._sigma_to_t(sigma, log_sigmas) for sigma in sigmas])
    np.testing.assert_array_equal(ours, theirs)
    np.testing.assert_allclose(ours, timesteps, atol=0.05)  # log-linear vs linear interpolation


def test_karras_ramp_hits_both_ends():
    sigmas = schedules.karras_sigmas(np.array([14.6, 0.03]), 10)
    assert sigmas[0] == pytest.approx(14.6) and sigmas[-1] == pytest.approx(0.03)
    assert np.all(np.diff(sigmas) < 0)


def test_threshold_sample_matches_diffusers():
    sample = 3 * torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    reference = diffusers.DDPMScheduler(thresholding=True, sample_max_value=2.0, dynamic_thresholding_ratio=0.9)
    torch.testing.assert_close(schedules.threshold_sample(sample, 0.9, 2.0), reference._threshold_sample(sample),
                               rtol=0, atol=0)
    half = schedules.threshold_sample(sample.half(), 0.9, 2.0)
    assert half.dtype == torch.float16


@pytest.mark.parametrize("steps", [True, 3.0, None])
def test_step_count_must_be_an_int(steps):
    with pytest.raises(TypeError, match="num_inference_steps must be an int"):
        schedules.check_num_inference_steps(steps, 1000, "X")


def test_numpy_ints_are_step_counts():
    assert schedules.check_num_inference_steps(np.int64(7), 1000, "X") == 7
