"""LMSDiscreteScheduler: parity with diffusers (the oracle needs scipy; ours integrates exactly without it)."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

from sfumato.schedulers import LMSDiscreteScheduler

from .parity import check_loop_parity, pair

# diffusers' LMS scheduler cannot be built without scipy
pytestmark = pytest.mark.skipif(importlib.util.find_spec("scipy") is None, reason="the diffusers oracle needs scipy")

SD_LIKE = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)


@pytest.mark.parametrize(
    ("config", "steps", "step_kwargs"),
    [
        (dict(), 10, {}),
        (dict(SD_LIKE, timestep_spacing="leading", steps_offset=1), 50, {}),
        (dict(beta_schedule="squaredcos_cap_v2", prediction_type="v_prediction", timestep_spacing="trailing"), 7, {}),
        (dict(SD_LIKE, prediction_type="sample", use_karras_sigmas=True), 13, {}),
        (dict(use_exponential_sigmas=True), 9, {}),
        (dict(use_beta_sigmas=True), 9, {}),
        (dict(), 9, dict(order=2)),
    ],
)
def test_sampling_loop_matches_diffusers(config, steps, step_kwargs):
    check_loop_parity("LMSDiscreteScheduler", config, steps, **step_kwargs)


def test_image_to_image_matches_diffusers():
    check_loop_parity("LMSDiscreteScheduler", dict(SD_LIKE), 20, strength=0.5)


def test_coefficients_match_numerical_integration():
    mine, reference = pair("LMSDiscreteScheduler", **SD_LIKE)
    for scheduler in (mine, reference):
        scheduler.set_timesteps(12)
    for order in (1, 2, 3, 4):
        for t in range(order - 1, 12):
            ours = [mine.get_lms_coefficient(order, t, k) for k in range(order)]
            theirs = [reference.get_lms_coefficient(order, t, k) for k in range(order)]
            np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-7)


def test_first_order_coefficient_is_the_step_length():
    scheduler = LMSDiscreteScheduler()
    scheduler.set_timesteps(5)
    step = float(scheduler.sigmas[3]) - float(scheduler.sigmas[2])
    assert scheduler.get_lms_coefficient(1, 2, 0) == pytest.approx(step, rel=1e-12)
    assert isinstance(scheduler.sigmas, torch.Tensor)
