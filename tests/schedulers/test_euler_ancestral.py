"""EulerAncestralDiscreteScheduler: parity with diffusers (stochastic: same seeded noise on both sides)."""

from __future__ import annotations

import pytest

from sfumato.schedulers import EulerAncestralDiscreteScheduler

from .parity import check_loop_parity

SD_LIKE = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)


@pytest.mark.parametrize(
    ("config", "steps"),
    [
        (dict(), 10),
        (dict(SD_LIKE, timestep_spacing="leading", steps_offset=1), 25),
        (dict(beta_schedule="squaredcos_cap_v2", prediction_type="v_prediction", timestep_spacing="trailing"), 7),
        (dict(rescale_betas_zero_snr=True, timestep_spacing="trailing", prediction_type="v_prediction"), 9),
        (dict(SD_LIKE, timestep_spacing="leading"), 1),
    ],
)
def test_sampling_loop_matches_diffusers(config, steps):
    check_loop_parity("EulerAncestralDiscreteScheduler", config, steps)


def test_image_to_image_matches_diffusers():
    check_loop_parity("EulerAncestralDiscreteScheduler", dict(SD_LIKE), 15, strength=0.6, seed=5)


def test_prediction_type_sample_is_rejected():
    with pytest.raises(ValueError, match="prediction_type.*'sample'"):
        EulerAncestralDiscreteScheduler(prediction_type="sample")
