"""DDPMScheduler: parity with diffusers over schedules, prediction types, spacings, variance types."""

from __future__ import annotations

import pytest
import torch

from sfumato.schedulers import DDPMScheduler, DDPMSchedulerOutput

from .parity import check_loop_parity, pair

SD_LIKE = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False)


@pytest.mark.parametrize(
    ("config", "steps"),
    [
        (dict(), 10),
        (dict(beta_schedule="scaled_linear", prediction_type="v_prediction", timestep_spacing="trailing"), 7),
        (dict(beta_schedule="squaredcos_cap_v2", prediction_type="sample", timestep_spacing="linspace"), 13),
        (dict(SD_LIKE, timestep_spacing="leading", steps_offset=1), 25),
        (dict(thresholding=True, sample_max_value=1.5, prediction_type="sample"), 9),
        (dict(clip_sample=False, rescale_betas_zero_snr=True, timestep_spacing="trailing",
              prediction_type="v_prediction"), 9),
        (dict(beta_schedule="sigmoid", variance_type="fixed_large"), 6),
        (dict(beta_schedule="laplace", variance_type="fixed_small_log"), 6),
        (dict(trained_betas=[0.001 * i + 0.0001 for i in range(100)], num_train_timesteps=100), 9),
    ],
)
def test_sampling_loop_matches_diffusers(config, steps):
    check_loop_parity("DDPMScheduler", config, steps)


def test_learned_range_variance_matches_diffusers():
    # Kandinsky's UNets predict noise and a variance interpolation in one 2x-channel output
    check_loop_parity("DDPMScheduler", dict(variance_type="learned_range", beta_schedule="squaredcos_cap_v2"), 9,
                      out_channels=2 * 4)


def test_custom_timesteps_match_diffusers():
    check_loop_parity("DDPMScheduler", dict(), None, set_timesteps_kwargs=dict(timesteps=[999, 800, 601, 300, 20, 0]))


def test_image_to_image_matches_diffusers():
    check_loop_parity("DDPMScheduler", dict(SD_LIKE), 20, strength=0.45)


def test_step_returns_both_samples_and_tuple():
    mine, reference = pair("DDPMScheduler")
    mine.set_timesteps(5)
    sample = torch.ones(1, 2, 3, 3)
    out = mine.step(torch.zeros_like(sample), mine.timesteps[-1], sample)
    assert isinstance(out, DDPMSchedulerOutput)
    as_tuple = mine.step(torch.zeros_like(sample), mine.timesteps[-1], sample, return_dict=False)
    assert len(as_tuple) == 2
    torch.testing.assert_close(as_tuple[0], out.prev_sample)
    torch.testing.assert_close(out[1], out.pred_original_sample)


def test_previous_timestep_follows_the_schedule():
    scheduler = DDPMScheduler()
    assert scheduler.previous_timestep(500) == 499  # before set_timesteps: every training step
    scheduler.set_timesteps(4)
    assert scheduler.timesteps.tolist() == [750, 500, 250, 0]
    assert scheduler.previous_timestep(torch.tensor(500)) == 250
    assert scheduler.previous_timestep(torch.tensor(0)) == -1


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(num_inference_steps=5, timesteps=[3, 2, 1]), "not both"),
        (dict(timesteps=[3, 5, 1]), "descending"),
        (dict(timesteps=[1000, 5]), "num_train_timesteps"),
        (dict(), "num_inference_steps or timesteps"),
    ],
)
def test_bad_custom_timesteps_are_rejected(kwargs, message):
    with pytest.raises(ValueError, match=message):
        DDPMScheduler().set_timesteps(**kwargs)


def test_unknown_variance_type_is_rejected():
    with pytest.raises(ValueError, match="variance_type.*'tiny'"):
        DDPMScheduler(variance_type="tiny")
