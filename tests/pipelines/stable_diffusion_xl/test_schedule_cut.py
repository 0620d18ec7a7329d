"""The schedule cut behind the base -> refiner hand-off (``denoising_end`` / ``denoising_start``)."""

from types import SimpleNamespace

import pytest
import torch

import sfumato
from sfumato.pipelines.loop import timesteps_from, timesteps_until

SCHEDULER = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, steps_offset=1,
                 timestep_spacing="leading")


@pytest.mark.parametrize("name", ["EulerDiscreteScheduler", "DDIMScheduler", "DPMSolverMultistepScheduler",
                                  "EulerAncestralDiscreteScheduler"])
@pytest.mark.parametrize("steps,fraction", [(10, 0.8), (7, 0.5), (25, 0.33)])
def test_base_and_refiner_run_complementary_steps(name, steps, fraction):
    scheduler = getattr(sfumato, name).from_config(SCHEDULER)
    scheduler.set_timesteps(steps)
    base = timesteps_until(scheduler, scheduler.timesteps, fraction)
    refiner = timesteps_from(scheduler, fraction)
    assert torch.equal(torch.cat([base, refiner]), scheduler.timesteps)
    cutoff = round(1000 - fraction * 1000)
    assert bool((base >= cutoff).all()) and bool((refiner < cutoff).all())


def test_no_cut_keeps_every_step():
    timesteps = torch.tensor([900, 600, 300])
    assert timesteps_until(SimpleNamespace(config=SimpleNamespace(num_train_timesteps=1000)), timesteps, None) \
        is timesteps


def test_second_order_schedulers_are_not_cut_between_the_two_evaluations_of_a_step():
    """A second-order scheduler evaluates each timestep but the first twice; where the count below the cut is
    even, the refiner takes one evaluation more (as the reference does)."""
    begun = []
    scheduler = SimpleNamespace(order=2, config=SimpleNamespace(num_train_timesteps=1000),
                                timesteps=torch.tensor([999, 800, 800, 600, 600, 400, 400]),
                                set_begin_index=begun.append)
    assert timesteps_from(scheduler, 0.5).tolist() == [600, 400, 400]
    assert timesteps_from(scheduler, 0.3).tolist() == [800, 600, 600, 400, 400]
    assert begun == [4, 2]
    scheduler.order = 1
    assert timesteps_from(scheduler, 0.5).tolist() == [400, 400]
