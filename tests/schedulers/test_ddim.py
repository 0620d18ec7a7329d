"""DDIMScheduler: parity with diffusers, deterministic and with eta noise."""

from __future__ import annotations

import pytest
import torch

from sfumato.schedulers import DDIMScheduler

from .parity import check_loop_parity, pair

SD_LIKE = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False,
               set_alpha_to_one=False, steps_offset=1)


@pytest.mark.parametrize(
    ("config", "steps", "step_kwargs"),
    [
        (dict(), 10, {}),
        (dict(beta_schedule="scaled_linear", prediction_type="v_prediction", timestep_spacing="trailing"), 7, {}),
        (dict(beta_schedule="squaredcos_cap_v2", prediction_type="sample", timestep_spacing="linspace",
              set_alpha_to_one=False), 13, {}),
        (dict(SD_LIKE), 50, {}),
        (dict(clip_sample=False), 9, dict(eta=1.0, use_clipped_model_output=True)),
        (dict(thresholding=True, prediction_type="sample"), 9, dict(eta=0.5)),
        (dict(rescale_betas_zero_snr=True, timestep_spacing="trailing", prediction_type="v_prediction",
              clip_sample=False), 9, {}),
    ],
)
def test_sampling_loop_matches_diffusers(config, steps, step_kwargs):
    check_loop_parity("DDIMScheduler", config, steps, **step_kwargs)


def test_image_to_image_matches_diffusers():
    check_loop_parity("DDIMScheduler", dict(SD_LIKE), 25, strength=0.6)


def test_given_variance_noise_matches_diffusers():
    mine, reference = pair("DDIMScheduler")
    for scheduler in (mine, reference):
        scheduler.set_timesteps(10)
    sample, output, noise = torch.randn(3, 2, 4, 4, generator=torch.Generator().manual_seed(1)).unbind(0)
    t = mine.timesteps[3]
    got = mine.step(output[None], t, sample[None], eta=0.7, variance_noise=noise[None]).prev_sample
    expected = reference.step(output[None], t, sample[None], eta=0.7, variance_noise=noise[None]).prev_sample
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)


def test_step_before_set_timesteps_is_rejected():
    with pytest.raises(ValueError, match="set_timesteps"):
        DDIMScheduler().step(torch.zeros(1, 1), 10, torch.zeros(1, 1))


def test_generator_and_variance_noise_together_are_rejected():
    scheduler = DDIMScheduler()
    scheduler.set_timesteps(5)
    with pytest.raises(ValueError, match="generator or variance_noise"):
        scheduler.step(torch.zeros(1, 1), 800, torch.zeros(1, 1), eta=1.0, generator=torch.Generator(),
                       variance_noise=torch.zeros(1, 1))
