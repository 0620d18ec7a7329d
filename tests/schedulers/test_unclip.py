"""UnCLIPScheduler: parity with diffusers as the Kandinsky prior pipelines drive it."""

from __future__ import annotations

import pytest
import torch

from sfumato.schedulers import UnCLIPScheduler

from .parity import check_loop_parity, pair

EMBEDDINGS = (2, 32)  # the prior denoises image embeddings, not images


@pytest.mark.parametrize(
    ("config", "steps", "shape", "out_channels"),
    [
        (dict(), 25, EMBEDDINGS, None),  # the Kandinsky prior's setting
        (dict(prediction_type="sample"), 5, EMBEDDINGS, None),
        (dict(clip_sample=False), 2, EMBEDDINGS, None),
        (dict(variance_type="learned_range", clip_sample_range=5.0), 7, (2, 4, 5, 5), 8),
    ],
)
def test_sampling_loop_matches_diffusers(config, steps, shape, out_channels):
    check_loop_parity("UnCLIPScheduler", config, steps, shape=shape, out_channels=out_channels)


def test_emb2emb_start_matches_diffusers():
    # KandinskyV22PriorEmb2EmbPipeline: add_noise, then the tail of the schedule
    check_loop_parity("UnCLIPScheduler", dict(), 25, shape=EMBEDDINGS, strength=0.3)


def test_step_by_one_without_prev_timestep_matches_diffusers():
    mine, reference = pair("UnCLIPScheduler")
    sample = torch.randn(2, 8, generator=torch.Generator().manual_seed(3))
    output = torch.tanh(sample)
    for t in (999, 500, 1, 0):
        got = mine.step(output, t, sample, generator=torch.Generator().manual_seed(t)).prev_sample
        expected = reference.step(output, t, sample, generator=torch.Generator().manual_seed(t)).prev_sample
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)


def test_timesteps_cover_both_ends():
    scheduler = UnCLIPScheduler()
    scheduler.set_timesteps(3)
    assert scheduler.timesteps.tolist() == [999, 500, 0]


@pytest.mark.parametrize(
    ("config", "argument"),
    [(dict(beta_schedule="linear"), "beta_schedule"), (dict(variance_type="fixed_small"), "variance_type"),
     (dict(prediction_type="v_prediction"), "prediction_type")],
)
def test_unsupported_options_are_rejected(config, argument):
    with pytest.raises(ValueError, match=argument):
        UnCLIPScheduler(**config)


def test_a_single_step_is_rejected():
    with pytest.raises(ValueError, match="between 2 and"):
        UnCLIPScheduler().set_timesteps(1)
