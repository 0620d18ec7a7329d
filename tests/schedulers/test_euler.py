"""EulerDiscreteScheduler: parity with diffusers over schedules, sigma ramps and custom schedules."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from sfumato.schedulers import EulerDiscreteScheduler

from .parity import check_loop_parity, pair

SD_LIKE = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
needs_scipy = pytest.mark.skipif(importlib.util.find_spec("scipy") is None, reason="beta sigmas need scipy")


@pytest.mark.parametrize(
    ("config", "steps", "step_kwargs"),
    [
        (dict(), 10, {}),
        (dict(SD_LIKE, timestep_spacing="leading", steps_offset=1), 25, {}),
        (dict(beta_schedule="squaredcos_cap_v2", prediction_type="v_prediction", timestep_spacing="trailing"), 7, {}),
        (dict(SD_LIKE, prediction_type="sample", use_karras_sigmas=True), 13, {}),
        (dict(use_karras_sigmas=True, sigma_min=0.1, sigma_max=10.0), 9, {}),
        (dict(use_exponential_sigmas=True, final_sigmas_type="sigma_min"), 9, {}),
        (dict(interpolation_type="log_linear"), 9, {}),
        (dict(SD_LIKE, timestep_type="continuous", prediction_type="v_prediction"), 9, {}),
        (dict(rescale_betas_zero_snr=True, timestep_spacing="trailing", prediction_type="v_prediction"), 9, {}),
        (dict(), 9, dict(s_churn=2.0, s_tmin=0.5, s_tmax=5.0, s_noise=1.003)),  # stochastic: seeded noise
        pytest.param(dict(use_beta_sigmas=True), 9, {}, marks=needs_scipy),
    ],
)
def test_sampling_loop_matches_diffusers(config, steps, step_kwargs):
    check_loop_parity("EulerDiscreteScheduler", config, steps, **step_kwargs)


@pytest.mark.parametrize(
    "custom",
    [dict(timesteps=[900, 700.5, 400, 100, 3]), dict(sigmas=[14.0, 8.0, 3.0, 1.0, 0.3, 0.0])],
)
def test_custom_schedule_matches_diffusers(custom):
    check_loop_parity("EulerDiscreteScheduler", dict(), None, set_timesteps_kwargs=custom)


@pytest.mark.parametrize("config", [dict(SD_LIKE), dict(SD_LIKE, use_karras_sigmas=True, timestep_spacing="leading")])
def test_image_to_image_matches_diffusers(config):
    check_loop_parity("EulerDiscreteScheduler", config, 20, strength=0.35)


def test_latent_upscaler_use_of_sigmas_matches_diffusers():
    # StableDiffusionLatentUpscalePipeline scales a sigma itself with scale_model_input
    mine, reference = pair("EulerDiscreteScheduler", **SD_LIKE)
    for scheduler in (mine, reference):
        scheduler.set_timesteps(5)
    for i, t in enumerate(reference.timesteps):
        torch.testing.assert_close(mine.scale_model_input(mine.sigmas[i], t),
                                   reference.scale_model_input(reference.sigmas[i], t), rtol=0, atol=0)


def test_integer_timestep_is_rejected():
    scheduler = EulerDiscreteScheduler()
    scheduler.set_timesteps(5)
    with pytest.raises(ValueError, match="enumerate"):
        scheduler.step(torch.zeros(1, 1), 3, torch.zeros(1, 1))


def test_timestep_not_in_schedule_is_rejected():
    scheduler = EulerDiscreteScheduler()
    scheduler.set_timesteps(5)
    with pytest.raises(ValueError, match="not in scheduler.timesteps"):
        scheduler.scale_model_input(torch.zeros(1, 1), torch.tensor(123.25))


@pytest.mark.parametrize(
    ("config", "kwargs", "message"),
    [
        (dict(), dict(num_inference_steps=5, sigmas=[1.0, 0.0]), "exactly one"),
        (dict(), dict(timesteps=[5.0], sigmas=[1.0, 0.0]), "exactly one"),
        (dict(), dict(), "exactly one"),
        (dict(use_karras_sigmas=True), dict(timesteps=[900, 10]), "use_karras_sigmas"),
    ],
)
def test_bad_set_timesteps_arguments_are_rejected(config, kwargs, message):
    with pytest.raises(ValueError, match=message):
        EulerDiscreteScheduler(**config).set_timesteps(**kwargs)


def test_two_sigma_ramps_are_rejected():
    with pytest.raises(ValueError, match="only one of"):
        EulerDiscreteScheduler(use_karras_sigmas=True, use_exponential_sigmas=True)


@pytest.mark.parametrize("field", ["interpolation_type", "timestep_type", "final_sigmas_type"])
def test_unknown_option_is_rejected(field):
    with pytest.raises(ValueError, match=field):
        EulerDiscreteScheduler(**{field: "bogus"})
