"""DPMSolverMultistepScheduler: parity with diffusers over algorithms, orders, solver types and sigma ramps."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from sfumato.schedulers import DPMSolverMultistepScheduler

from .parity import check_loop_parity, pair

SD_LIKE = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
needs_scipy = pytest.mark.skipif(importlib.util.find_spec("scipy") is None, reason="beta sigmas need scipy")


@pytest.mark.parametrize(
    ("config", "steps"),
    [
        (dict(), 10),
        (dict(SD_LIKE, timestep_spacing="leading", steps_offset=1, use_karras_sigmas=True), 25),
        (dict(beta_schedule="squaredcos_cap_v2", prediction_type="v_prediction", timestep_spacing="trailing"), 7),
        (dict(SD_LIKE, prediction_type="sample", solver_order=3, solver_type="heun"), 20),
        (dict(solver_type="heun"), 9),
        (dict(algorithm_type="dpmsolver", final_sigmas_type="sigma_min", solver_order=3), 11),
        (dict(algorithm_type="dpmsolver", solver_type="heun", final_sigmas_type="sigma_min",
              prediction_type="v_prediction"), 8),
        (dict(algorithm_type="sde-dpmsolver++", solver_type="heun"), 9),
        (dict(algorithm_type="sde-dpmsolver++", solver_order=3, final_sigmas_type="sigma_min"), 17),
        (dict(algorithm_type="sde-dpmsolver", final_sigmas_type="sigma_min"), 9),
        (dict(algorithm_type="sde-dpmsolver", solver_type="heun", final_sigmas_type="sigma_min"), 9),
        (dict(solver_order=1), 5),
        (dict(euler_at_final=True, final_sigmas_type="sigma_min"), 20),
        (dict(lower_order_final=False, solver_order=3, final_sigmas_type="sigma_min"), 8),
        (dict(thresholding=True, prediction_type="sample", sample_max_value=1.2), 9),
        (dict(thresholding=True, algorithm_type="dpmsolver", final_sigmas_type="sigma_min"), 9),
        (dict(beta_schedule="squaredcos_cap_v2", lambda_min_clipped=-5.1, timestep_spacing="trailing"), 9),
        (dict(beta_schedule="squaredcos_cap_v2", lambda_min_clipped=-5.1, steps_offset=1,
              timestep_spacing="leading"), 9),
        (dict(use_lu_lambdas=True), 9),
        (dict(use_exponential_sigmas=True), 9),
        (dict(rescale_betas_zero_snr=True, timestep_spacing="trailing", prediction_type="v_prediction"), 9),
        pytest.param(dict(use_beta_sigmas=True), 9, marks=needs_scipy),
    ],
)
def test_sampling_loop_matches_diffusers(config, steps):
    check_loop_parity("DPMSolverMultistepScheduler", config, steps)


def test_learned_variance_output_matches_diffusers():
    check_loop_parity("DPMSolverMultistepScheduler", dict(variance_type="learned_range"), 9, shape=(2, 3, 5, 5),
                      out_channels=6)


def test_custom_timesteps_match_diffusers():
    check_loop_parity("DPMSolverMultistepScheduler", dict(), None,
                      set_timesteps_kwargs=dict(timesteps=[999, 800, 600, 301, 20]))


@pytest.mark.parametrize("config", [dict(SD_LIKE), dict(SD_LIKE, use_karras_sigmas=True)])
def test_image_to_image_matches_diffusers(config):
    check_loop_parity("DPMSolverMultistepScheduler", config, 20, strength=0.4)


def test_given_sde_noise_matches_diffusers():
    mine, reference = pair("DPMSolverMultistepScheduler", algorithm_type="sde-dpmsolver++")
    sample = torch.randn(1, 2, 4, 4, generator=torch.Generator().manual_seed(0))
    for scheduler in (mine, reference):
        scheduler.set_timesteps(6)
    for i, t in enumerate(mine.timesteps):
        noise = torch.randn(1, 2, 4, 4, generator=torch.Generator().manual_seed(i + 1))
        output = torch.tanh(sample)
        got = mine.step(output, t, sample, variance_noise=noise).prev_sample
        expected = reference.step(output, t, sample, variance_noise=noise).prev_sample
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
        sample = expected


def test_sibling_solver_names_map_onto_ours():
    # DEIS and UniPC configs name their own variants; swapping them in must still work
    scheduler = DPMSolverMultistepScheduler(algorithm_type="deis", solver_type="bh2")
    assert (scheduler.config.algorithm_type, scheduler.config.solver_type) == ("dpmsolver++", "midpoint")


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (dict(algorithm_type="dpmsolver"), "final_sigmas_type"),
        (dict(algorithm_type="dpmsolver", final_sigmas_type="sigma_min", prediction_type="flow_prediction"),
         "flow_prediction"),
        (dict(algorithm_type="sde-dpmsolver", final_sigmas_type="sigma_min", solver_order=3), "third-order"),
        (dict(algorithm_type="magic"), "algorithm_type"),
        (dict(solver_type="rk4"), "solver_type"),
        (dict(solver_order=4), "solver_order"),
    ],
)
def test_bad_configs_are_rejected(config, message):
    with pytest.raises(ValueError, match=message):
        DPMSolverMultistepScheduler(**config)


def test_custom_timesteps_with_karras_sigmas_are_rejected():
    with pytest.raises(ValueError, match="use_karras_sigmas"):
        DPMSolverMultistepScheduler(use_karras_sigmas=True).set_timesteps(timesteps=[999, 500, 1])
