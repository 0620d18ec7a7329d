"""The shared schedule math, against the reference's helpers and against known values."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import diffusers
import sfumato
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


# -- the posterior and the learned variance: one formula for the samplers and for training ------------


def test_learned_range_variance_is_the_one_ddpm_and_unclip_step_with():
    fraction = torch.linspace(-1, 1, 7)
    ddpm = sfumato.DDPMScheduler(variance_type="learned_range")
    ddpm.set_timesteps(10)
    t = ddpm.timesteps[3]
    alpha_prod_t, alpha_prod_prev = ddpm.alphas_cumprod[t], ddpm.alphas_cumprod[ddpm.previous_timestep(t)]
    beta_t = 1 - alpha_prod_t / alpha_prod_prev
    variance = schedules.posterior_variance(alpha_prod_t, alpha_prod_prev, beta_t).clamp(min=1e-20)
    expected = schedules.learned_range_log_variance(fraction, beta_t.log(), variance.log())
    torch.testing.assert_close(ddpm._get_variance(t, predicted_variance=fraction), expected, rtol=0, atol=0)
    # and it is diffusers' formula
    reference = diffusers.DDPMScheduler(variance_type="learned_range")
    reference.set_timesteps(10)
    torch.testing.assert_close(reference._get_variance(t, predicted_variance=fraction), expected, rtol=0, atol=0)

    unclip = sfumato.UnCLIPScheduler(variance_type="learned_range")
    alpha_prod_t, alpha_prod_prev = unclip.alphas_cumprod[600], unclip.alphas_cumprod[400]
    beta = 1 - alpha_prod_t / alpha_prod_prev
    expected = schedules.learned_range_log_variance(
        fraction, beta.log(), schedules.posterior_variance(alpha_prod_t, alpha_prod_prev, beta).log())
    torch.testing.assert_close(unclip._get_variance(600, 400, predicted_variance=fraction), expected, rtol=0, atol=0)
    # the two ends: the posterior variance and beta themselves
    ends = schedules.learned_range_log_variance(torch.tensor([-1.0, 1.0]), beta.log(), torch.tensor(0.25).log())
    torch.testing.assert_close(ends, torch.stack([torch.tensor(0.25).log(), beta.log()]), rtol=0, atol=0)


def test_posterior_tables_hold_each_training_steps_posterior():
    scheduler = sfumato.DDPMScheduler(beta_start=0.00085, beta_end=0.012)
    betas, alphas_cumprod = scheduler.betas.double(), scheduler.alphas_cumprod.double()
    tables = schedules.posterior_tables(betas, alphas_cumprod)
    assert tables.variance.dtype == torch.float64 and tables.variance[0] == 0
    assert tables.log_variance[0] == tables.log_variance[1]  # log 0 is clipped to the next step's
    for t in (1, 10, 999):
        torch.testing.assert_close(tables.variance[t], schedules.posterior_variance(
            alphas_cumprod[t], alphas_cumprod[t - 1], betas[t]), rtol=0, atol=0)
        torch.testing.assert_close(tables.log_variance[t], tables.variance[t].log(), rtol=0, atol=0)
        x0, xt = torch.tensor(0.3, dtype=torch.float64), torch.tensor(-1.2, dtype=torch.float64)
        mean = schedules.posterior_mean(x0, xt, alphas_cumprod[t], alphas_cumprod[t - 1], 1 - betas[t], betas[t])
        torch.testing.assert_close(tables.original_coeff[t] * x0 + tables.sample_coeff[t] * xt, mean, rtol=0, atol=0)
    # a DDPM step over one training step lands on that mean plus that variance's noise (float32, and
    # its beta comes from the ratio of alpha_bars, so equal to rounding)
    scheduler.set_timesteps(1000)
    sample, noise = torch.randn(2, 1, 2, 2, generator=torch.Generator().manual_seed(0)).unbind(0)
    t = 500
    stepped = scheduler.step(noise, t, sample, generator=torch.Generator().manual_seed(1))
    drawn = torch.randn(noise.shape, generator=torch.Generator().manual_seed(1))
    expected = (tables.original_coeff[t] * stepped.pred_original_sample + tables.sample_coeff[t] * sample
                + tables.variance[t].sqrt() * drawn)
    torch.testing.assert_close(stepped.prev_sample, expected.float(), rtol=1e-5, atol=1e-6)


def test_add_noise_is_the_schedulers():
    scheduler = sfumato.DDPMScheduler()
    original, noise = torch.randn(2, 3, 2, 4, 4, generator=torch.Generator().manual_seed(0)).unbind(0)
    timesteps = torch.tensor([0, 500, 999])
    torch.testing.assert_close(schedules.add_noise(scheduler.alphas_cumprod, original, noise, timesteps),
                               scheduler.add_noise(original, noise, timesteps), rtol=0, atol=0)


@pytest.mark.parametrize("name", ["EulerDiscreteScheduler", "EulerAncestralDiscreteScheduler",
                                  "DPMSolverMultistepScheduler", "DDPMScheduler", "DDIMScheduler"])
def test_zero_terminal_snr_clamp_matches_diffusers(name):
    config = dict(rescale_betas_zero_snr=True, beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    if name == "DPMSolverMultistepScheduler":
        config["final_sigmas_type"] = "sigma_min"
    mine, reference = getattr(sfumato, name)(**config), getattr(diffusers, name)(**config)
    torch.testing.assert_close(mine.alphas_cumprod, reference.alphas_cumprod, rtol=0, atol=0)
    # only the sigma-based schedulers need a finite last sigma
    sigma_based = name != "DDPMScheduler" and name != "DDIMScheduler"
    assert mine.alphas_cumprod[-1].item() == (schedules.ZERO_SNR_ALPHA_CUMPROD if sigma_based else 0.0)
