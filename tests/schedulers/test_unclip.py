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


def _prior_loop(scheduler, steps, pass_prev: bool, out_channels=None, shape=EMBEDDINGS):
    """The Kandinsky prior loop: with ``pass_prev`` it hands over the next timestep as the reference does."""
    scheduler.set_timesteps(steps)
    generator = torch.Generator().manual_seed(0)
    sample = torch.randn(shape, generator=generator)
    timesteps = scheduler.timesteps
    samples = []
    for i, t in enumerate(timesteps):
        output = torch.tanh(sample) if out_channels is None else torch.cat([torch.tanh(sample), 0.5 * sample.cos()], 1)
        kwargs = {"prev_timestep": timesteps[i + 1] if i + 1 < len(timesteps) else None} if pass_prev else {}
        sample = scheduler.step(output, t, sample, generator=generator, **kwargs).prev_sample
        samples.append(sample)
    return samples


@pytest.mark.parametrize(
    ("config", "steps", "shape", "out_channels"),
    [(dict(), 25, EMBEDDINGS, None), (dict(prediction_type="sample", clip_sample_range=10.0), 7, EMBEDDINGS, None),
     (dict(variance_type="learned_range"), 5, (2, 4, 3, 3), 8)],
)
def test_previous_timestep_comes_from_the_schedule(config, steps, shape, out_channels):
    # a loop that passes nothing gets, bit for bit, what the reference's prior pipelines get by passing it
    derived = _prior_loop(UnCLIPScheduler(**config), steps, False, out_channels, shape)
    passed = _prior_loop(UnCLIPScheduler(**config), steps, True, out_channels, shape)
    for got, expected in zip(derived, passed):
        torch.testing.assert_close(got, expected, rtol=0, atol=0)


def test_previous_timestep_rules():
    scheduler = UnCLIPScheduler()
    assert scheduler.previous_timestep(500) == 499  # before set_timesteps: a step of one
    scheduler.set_timesteps(3)
    assert [int(scheduler.previous_timestep(t)) for t in scheduler.timesteps] == [500, 0, -1]
    assert scheduler.previous_timestep(700) == 699  # not in the schedule: a step of one
    # an explicit prev_timestep still wins
    sample = torch.randn(EMBEDDINGS, generator=torch.Generator().manual_seed(1))
    output = torch.tanh(sample)
    explicit = scheduler.step(output, 999, sample, prev_timestep=998, generator=torch.Generator().manual_seed(2))
    fresh = UnCLIPScheduler()  # no schedule: 999 -> 998 too
    expected = fresh.step(output, 999, sample, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(explicit.prev_sample, expected.prev_sample, rtol=0, atol=0)
