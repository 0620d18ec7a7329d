"""Schedulers: noise schedules and update rules, swappable as in diffusers.

Every scheduler reads the same ``scheduler_config.json`` fields as its
diffusers namesake, so ``DDIMScheduler.from_config(pipe.scheduler.config)``
swaps one for another and checkpoints load unchanged. The schedule math
(betas, spacing, sigmas) lives once in ``schedules``; each scheduler module
holds only its update rule.
"""

from .base import (
    DenoisingSchedulerOutput,
    KarrasDiffusionSchedulers,
    SchedulerMixin,
    SchedulerOutput,
)
from .ddim import DDIMScheduler, DDIMSchedulerOutput
from .ddpm import DDPMScheduler, DDPMSchedulerOutput
from .dpm_solver import DPMSolverMultistepScheduler
from .euler import EulerDiscreteScheduler, EulerDiscreteSchedulerOutput
from .euler_ancestral import EulerAncestralDiscreteScheduler, EulerAncestralDiscreteSchedulerOutput
from .lms import LMSDiscreteScheduler, LMSDiscreteSchedulerOutput
from .pndm import PNDMScheduler
from .unclip import UnCLIPScheduler, UnCLIPSchedulerOutput

__all__ = [
    "DDIMScheduler", "DDIMSchedulerOutput", "DDPMScheduler", "DDPMSchedulerOutput", "DPMSolverMultistepScheduler",
    "DenoisingSchedulerOutput", "EulerAncestralDiscreteScheduler", "EulerAncestralDiscreteSchedulerOutput",
    "EulerDiscreteScheduler", "EulerDiscreteSchedulerOutput", "KarrasDiffusionSchedulers", "LMSDiscreteScheduler",
    "LMSDiscreteSchedulerOutput", "PNDMScheduler", "SchedulerMixin", "SchedulerOutput", "UnCLIPScheduler",
    "UnCLIPSchedulerOutput",
]
