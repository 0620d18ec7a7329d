"""PNDMScheduler: parity with diffusers for the PRK warm-up and the PLMS-only (Stable Diffusion) mode."""

from __future__ import annotations

import pytest
import torch

from sfumato.schedulers import PNDMScheduler

from .parity import check_loop_parity

SD_LIKE = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, skip_prk_steps=True,
               set_alpha_to_one=False, steps_offset=1)


@pytest.mark.parametrize(
    ("config", "steps"),
    [
        (dict(), 10),
        (dict(), 4),  # the fewest steps the PRK warm-up allows
        (dict(beta_schedule="scaled_linear", prediction_type="v_prediction", timestep_spacing="trailing"), 7),
        (dict(beta_schedule="squaredcos_cap_v2", timestep_spacing="linspace", skip_prk_steps=True), 13),
        (dict(SD_LIKE), 51),
        (dict(skip_prk_steps=True), 1),
        (dict(skip_prk_steps=True, set_alpha_to_one=True), 2),
    ],
)
def test_sampling_loop_matches_diffusers(config, steps):
    check_loop_parity("PNDMScheduler", config, steps)


@pytest.mark.parametrize("config", [dict(SD_LIKE), dict()])
def test_image_to_image_matches_diffusers(config):
    check_loop_parity("PNDMScheduler", config, 20, strength=0.5)


def test_prk_schedule_repeats_the_half_steps():
    scheduler = PNDMScheduler()
    scheduler.set_timesteps(10)
    # 3 warm-up steps of 4 model calls at t, t - h/2, t - h/2, t - h, then PLMS
    assert scheduler.timesteps[:13].tolist() == [900, 850, 850, 800, 800, 750, 750, 700, 700, 650, 650, 600, 600]
    assert len(scheduler.timesteps) == 13 + 6


def test_too_few_steps_for_prk_are_rejected():
    with pytest.raises(ValueError, match="between 4 and"):
        PNDMScheduler().set_timesteps(3)


def test_plms_without_warm_up_is_rejected():
    scheduler = PNDMScheduler()
    scheduler.set_timesteps(10)
    with pytest.raises(ValueError, match="warm-up"):
        scheduler.step_plms(torch.zeros(1, 1), 500, torch.zeros(1, 1))


def test_prediction_type_sample_is_rejected():
    with pytest.raises(ValueError, match="prediction_type.*'sample'"):
        PNDMScheduler(prediction_type="sample")
