"""What every scheduler shares: config handling, outputs, and the two ways of indexing noise.

``SchedulerMixin`` gives loading, saving and swapping (``X.from_config(y.config)``)
with the diffusers ``scheduler_config.json`` format, and the constructor: a
scheduler declares its config fields (``config_fields``, names and defaults as
in diffusers) and builds its state from ``self.config`` in ``_setup``.

``DiscreteTimeScheduler`` holds the training noise schedule (``betas`` ->
``alphas_cumprod``) and is the base of the schedulers that step between
training timesteps (DDPM, DDIM, PNDM, UnCLIP).

``SigmaScheduler`` adds the k-diffusion view: a ``sigmas`` array walked by a
step counter, model inputs scaled by ``1 / sqrt(sigma**2 + 1)`` (Euler, Euler
ancestral, LMS; DPM-Solver uses the counter and sigmas but not the scaling).
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import logging
import os
from enum import Enum
from typing import Any, Callable

import numpy as np
import torch

from ..checkpoint import ConfigMixin, read_json, resolve_folder, split_hub_kwargs
from ..checkpoint.config import check_config_values, config_errors_name
from ..checkpoint.errors import CheckpointError
from ..outputs import BaseOutput
from . import schedules

logger = logging.getLogger(__name__)

SCHEDULER_CONFIG_NAME = "scheduler_config.json"

# Config entry listing the fields that were left at their defaults. A scheduler
# built from this config by another class takes that class's own defaults for
# them (so DDIM's "leading" spacing does not leak into an Euler scheduler built
# from a DDIM config that never asked for it). It is never written to disk.
DEFAULTS_KEY = "_use_default_values"


class KarrasDiffusionSchedulers(Enum):
    """The schedulers that can replace each other in Stable Diffusion-style pipelines (diffusers' list)."""

    DDIMScheduler = 1
    DDPMScheduler = 2
    PNDMScheduler = 3
    LMSDiscreteScheduler = 4
    EulerDiscreteScheduler = 5
    HeunDiscreteScheduler = 6
    EulerAncestralDiscreteScheduler = 7
    DPMSolverMultistepScheduler = 8
    DPMSolverSinglestepScheduler = 9
    KDPM2DiscreteScheduler = 10
    KDPM2AncestralDiscreteScheduler = 11
    DEISMultistepScheduler = 12
    UniPCMultistepScheduler = 13
    DPMSolverSDEScheduler = 14
    EDMEulerScheduler = 15


KARRAS_COMPATIBLE = [entry.name for entry in KarrasDiffusionSchedulers]


@dataclasses.dataclass
class SchedulerOutput(BaseOutput):
    """What ``step`` returns: ``prev_sample`` is the sample for the next (less noisy) step."""

    prev_sample: torch.Tensor


@dataclasses.dataclass
class DenoisingSchedulerOutput(SchedulerOutput):
    """A step output that also carries the step's estimate of the clean sample (useful for previews)."""

    pred_original_sample: torch.Tensor | None = None


# Config fields several schedulers share, in the order they appear in diffusers' signatures.
#: The training noise schedule: the first fields of every scheduler but UnCLIP (whose schedule is fixed).
TRAINING_SCHEDULE_FIELDS = dict(num_train_timesteps=1000, beta_start=0.0001, beta_end=0.02, beta_schedule="linear",
                                trained_betas=None)
#: How x0 predictions are kept in range: dynamic thresholding (Imagen) when on, else clipping to the range.
THRESHOLDING_FIELDS = dict(thresholding=False, dynamic_thresholding_ratio=0.995, clip_sample_range=1.0,
                           sample_max_value=1.0)
#: Alternatives to the interpolated training sigmas; at most one may be on.
SIGMA_RAMP_FIELDS = dict(use_karras_sigmas=False, use_exponential_sigmas=False, use_beta_sigmas=False)


def _config_init(cls) -> Callable[..., None]:
    """An ``__init__`` whose signature is ``cls.config_fields``: it records them as the config, then ``_setup``s.

    The signature is a real one (positional arguments in diffusers' order
    included) because ``from_config`` and pipelines read the accepted fields
    and their defaults from ``inspect.signature(cls.__init__)``.
    """
    positional = inspect.Parameter.POSITIONAL_OR_KEYWORD
    signature = inspect.Signature(
        [inspect.Parameter("self", positional)]
        + [inspect.Parameter(name, positional, default=default) for name, default in cls.config_fields.items()]
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        bound = signature.bind(self, *args, **kwargs)
        given = set(bound.arguments)
        bound.apply_defaults()
        config = {name: value for name, value in bound.arguments.items() if name != "self"}
        self.register_to_config(**config, **{DEFAULTS_KEY: [name for name in config if name not in given]})
        self._setup()

    __init__.__signature__ = signature
    __init__.__qualname__ = f"{cls.__qualname__}.__init__"
    __init__.__module__ = cls.__module__
    __init__.__doc__ = f"A {cls.__name__} with these config fields; those not given take their defaults."
    return __init__


class SchedulerMixin(ConfigMixin):
    """Loading, saving and swapping schedulers in the diffusers ``scheduler_config.json`` format."""

    config_name = SCHEDULER_CONFIG_NAME
    _compatibles: list[str] = []
    has_compatibles = True
    order = 1  # model evaluations per step as the pipelines count them
    #: The fields ``__init__`` takes and their defaults, in diffusers' order (so positional arguments agree).
    config_fields: dict[str, Any] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "config_fields" in vars(cls) and "__init__" not in vars(cls):
            cls.__init__ = _config_init(cls)

    def _setup(self) -> None:
        """Build the scheduler's state from ``self.config``; each class adds its own part after ``super()``'s."""

    #: Whether ``step`` takes ``eta`` (DDIM's share of fresh noise); the loop passes it only then.
    accepts_eta = False

    @property
    def accepts_predicted_variance(self) -> bool:
        """Whether ``step`` uses a model's extra predicted-variance channels (else the caller drops them)."""
        return False

    @classmethod
    def from_config(cls, config: dict | None = None, return_unused_kwargs: bool = False, **overrides: Any):
        """Build this scheduler from any scheduler's config; ``overrides`` win over its values.

        Fields the config left at its own class's defaults take this class's
        defaults instead. Fields this class does not take are kept in its config
        (so a later swap back still sees them) and otherwise ignored.
        """
        if config is None:
            config = {}
        if not isinstance(config, dict):
            raise TypeError(
                f"{cls.__name__}.from_config: config must be a dict such as scheduler.config, got "
                f"{type(config).__name__}; to read a folder use {cls.__name__}.from_pretrained(path)"
            )
        defaulted = set(config.get(DEFAULTS_KEY) or ())
        values = {k: v for k, v in config.items() if not k.startswith("_") and k not in defaulted}
        params = cls._init_parameters()
        init_kwargs = {k: v for k, v in values.items() if k in params}
        init_kwargs.update({k: v for k, v in overrides.items() if k in params})
        unused = {k: v for k, v in overrides.items() if k not in params}
        hidden = {k: v for k, v in values.items() if k not in params}
        scheduler = cls(**init_kwargs)
        if hidden:
            scheduler.register_to_config(**hidden)
        if return_unused_kwargs:
            return scheduler, {**unused, **hidden}
        return scheduler

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | os.PathLike | None = None,
        subfolder: str | None = None,
        return_unused_kwargs: bool = False,
        **kwargs: Any,
    ):
        """Load ``scheduler_config.json`` from a folder or hub id: ``from_pretrained(path, subfolder="scheduler")``.

        Other keyword arguments override fields of the file.
        """
        if pretrained_model_name_or_path is None:
            raise ValueError(f"{cls.__name__}.from_pretrained: pretrained_model_name_or_path is required")
        hub_kwargs = split_hub_kwargs(kwargs)
        folder = resolve_folder(pretrained_model_name_or_path, subfolder=subfolder,
                                allow_patterns=[f"{subfolder}/*.json" if subfolder else "*.json"], **hub_kwargs)
        config_file = folder / cls.config_name
        config = read_json(config_file, what=f"{cls.__name__} config")
        check_config_values({**config, **kwargs}, str(config_file))
        with config_errors_name(config_file):
            return cls.from_config(config, return_unused_kwargs=return_unused_kwargs, **kwargs)

    def save_pretrained(self, save_directory: str | os.PathLike, push_to_hub: bool = False, **kwargs: Any) -> None:
        """Write ``<save_directory>/scheduler_config.json`` (atomically: the old file or the new one, never half)."""
        if push_to_hub:
            raise ValueError("save_pretrained: push_to_hub=True is not supported; save locally and upload the folder")
        self.save_config(save_directory)

    def to_json_string(self) -> str:
        saved = json.loads(super().to_json_string())
        saved.pop(DEFAULTS_KEY, None)
        return json.dumps(saved, indent=2, sort_keys=True) + "\n"

    @property
    def compatibles(self) -> list[type]:
        """The scheduler classes that can be built from this one's config (this class included)."""
        return self._get_compatibles()

    @classmethod
    def _get_compatibles(cls) -> list[type]:
        import sfumato

        names = [cls.__name__] + [name for name in cls._compatibles if name != cls.__name__]
        return [getattr(sfumato, name) for name in names if name in sfumato._EXPORTS]

    def __len__(self) -> int:
        return self.config.num_train_timesteps


class DiscreteTimeScheduler(SchedulerMixin):
    """A scheduler over the ``num_train_timesteps`` noise levels of a discrete-time model."""

    init_noise_sigma = 1.0
    #: The ``prediction_type`` values ``step`` understands.
    prediction_types: tuple[str, ...] = ("epsilon", "sample", "v_prediction")
    #: Other config fields limited to a few values: checked on construction, so mistakes fail early.
    config_choices: dict[str, tuple] = {}

    def _setup(self) -> None:
        super()._setup()
        self._check_config()
        config = self.config
        # UnCLIP has no beta range fields: make_betas' defaults stand in for those a class lacks
        given = {name: config[name] for name in ("beta_start", "beta_end", "trained_betas") if name in config}
        betas = schedules.make_betas(config.beta_schedule, config.num_train_timesteps, **given,
                                     owner=type(self).__name__)
        self._set_noise_schedule(betas, config.get("rescale_betas_zero_snr", False))
        self.num_inference_steps = None

    def _check_config(self) -> None:
        config, owner = self.config, type(self).__name__
        try:
            check_config_values(dict(config), owner)
        except CheckpointError as error:  # built in Python, not from a file: a plain argument error
            raise ValueError(str(error)) from None
        schedules.check_choice("prediction_type", config.prediction_type, self.prediction_types, owner)
        if "timestep_spacing" in self.config_fields:
            schedules.check_choice("timestep_spacing", config.timestep_spacing, schedules.TIMESTEP_SPACINGS, owner)
        for argument, allowed in self.config_choices.items():
            schedules.check_choice(argument, config[argument], allowed, owner)

    def _set_noise_schedule(self, betas: torch.Tensor, rescale_betas_zero_snr: bool = False) -> None:
        if rescale_betas_zero_snr:
            betas = schedules.rescale_zero_terminal_snr(betas)
        self.betas = betas
        self.alphas = 1.0 - betas
        self.alphas_cumprod = torch.cumprod(self.alphas, dim=0)

    def _require_timesteps(self) -> None:
        if self.num_inference_steps is None:
            raise ValueError(f"{type(self).__name__}.step: call set_timesteps(num_inference_steps) first")

    def scale_model_input(self, sample: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        """The model sees the sample as it is (only sigma-parameterised schedulers rescale it)."""
        return sample

    def _alphas_cumprod_like(self, like: torch.Tensor) -> torch.Tensor:
        return self.alphas_cumprod.to(device=like.device, dtype=like.dtype)

    def add_noise(self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """The forward process: ``sqrt(alpha_bar_t) * x0 + sqrt(1 - alpha_bar_t) * noise``, one t per batch item."""
        return schedules.add_noise(self._alphas_cumprod_like(original_samples), original_samples, noise,
                                   timesteps.to(original_samples.device))

    def get_velocity(self, sample: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """The v-prediction training target ``sqrt(alpha_bar_t) * noise - sqrt(1 - alpha_bar_t) * x0``."""
        signal, noise_scale = schedules.noise_scales(self._alphas_cumprod_like(sample), timesteps.to(sample.device),
                                                     sample)
        return signal * noise - noise_scale * sample

    def _predicted_original(self, model_output, sample, alpha_prod_t, beta_prod_t):
        """x0 as the model's output implies it, for the configured ``prediction_type``."""
        return schedules.predicted_original(self.config.prediction_type, model_output, sample, alpha_prod_t,
                                            beta_prod_t)

    def _clip_or_threshold(self, pred_original_sample: torch.Tensor, thresholding: bool = False) -> torch.Tensor:
        """Dynamic thresholding when asked for, else clipping to ``clip_sample_range`` when ``clip_sample``."""
        config = self.config
        if thresholding:
            return schedules.threshold_sample(pred_original_sample, config.dynamic_thresholding_ratio,
                                              config.sample_max_value)
        if config.clip_sample:
            return pred_original_sample.clamp(-config.clip_sample_range, config.clip_sample_range)
        return pred_original_sample


class SigmaScheduler(DiscreteTimeScheduler):
    """A scheduler that walks a ``sigmas`` array with a step counter (k-diffusion style).

    ``timesteps[i]`` is what the model is told; ``sigmas[i]`` is the noise
    level there and ``sigmas[i + 1]`` the one the step moves to. The counter
    starts at the position of the first timestep seen, or at ``begin_index``
    when a pipeline set one (image-to-image starts part way down).
    """

    def _check_config(self) -> None:
        schedules.check_sigma_ramp(self.config, type(self).__name__)
        super()._check_config()

    def _set_noise_schedule(self, betas: torch.Tensor, rescale_betas_zero_snr: bool = False) -> None:
        super()._set_noise_schedule(betas, rescale_betas_zero_snr)
        if rescale_betas_zero_snr:
            self.alphas_cumprod = schedules.clamp_zero_terminal_snr(self.alphas_cumprod)

    def _reset_step_counter(self) -> None:
        self._step_index = None
        self._begin_index = None

    def _inference_timesteps(self, num_inference_steps: int) -> np.ndarray:
        """The training steps ``num_inference_steps`` visit under ``timestep_spacing`` (float32); records the count."""
        config = self.config
        self.num_inference_steps = schedules.check_num_inference_steps(
            num_inference_steps, config.num_train_timesteps, type(self).__name__)
        return schedules.spaced_timesteps(config.timestep_spacing, config.num_train_timesteps,
                                          self.num_inference_steps, config.steps_offset).astype(np.float32)

    def _set_sigma_schedule(self, timesteps: np.ndarray, sigmas: np.ndarray, device=None) -> None:
        """Install a schedule: ``sigmas`` get a final 0 and stay on the host (read every step, no device sync)."""
        self.timesteps = torch.from_numpy(timesteps).to(device=device, dtype=torch.float32)
        self.sigmas = torch.from_numpy(np.concatenate([sigmas, [0.0]]).astype(np.float32))
        self._reset_step_counter()

    @property
    def step_index(self) -> int | None:
        """Position in ``timesteps`` of the next step; ``None`` until the first step or model-input scaling."""
        return self._step_index

    @property
    def begin_index(self) -> int | None:
        """Position of the first step, as a pipeline set it with ``set_begin_index``."""
        return self._begin_index

    def set_begin_index(self, begin_index: int = 0) -> None:
        """Start at ``timesteps[begin_index]`` (called by pipelines before the loop)."""
        self._begin_index = begin_index

    @property
    def init_noise_sigma(self):
        """Standard deviation of the starting noise."""
        max_sigma = self.sigmas.max()
        if self.config.timestep_spacing in ("linspace", "trailing"):
            return max_sigma
        return (max_sigma**2 + 1) ** 0.5

    def index_for_timestep(self, timestep, schedule_timesteps: torch.Tensor | None = None) -> int:
        """Position of ``timestep`` in the schedule; the second match if it appears twice.

        A repeated timestep happens when image-to-image starts in the middle:
        taking the second keeps the start from skipping a sigma.
        """
        if schedule_timesteps is None:
            schedule_timesteps = self.timesteps
        matches = (schedule_timesteps == timestep).nonzero()
        if len(matches) == 0:
            return self._missing_timestep_index(timestep)
        return matches[1 if len(matches) > 1 else 0].item()

    def _missing_timestep_index(self, timestep) -> int:
        raise ValueError(
            f"{type(self).__name__}: timestep {float(timestep)} is not in scheduler.timesteps; pass one of "
            f"scheduler.timesteps (after set_timesteps)"
        )

    def _start_step(self, timestep) -> None:
        """What an Euler-type step checks first; on the first step, where the counter starts."""
        self._reject_integer_timestep(timestep)
        self._warn_if_unscaled()
        if self.step_index is None:
            self._init_step_index(timestep)

    def _init_step_index(self, timestep) -> None:
        if self.begin_index is None:
            if isinstance(timestep, torch.Tensor):
                timestep = timestep.to(self.timesteps.device)
            self._step_index = self.index_for_timestep(timestep)
        else:
            self._step_index = self._begin_index

    def _sigma_indices(self, timesteps: torch.Tensor, device) -> list[int]:
        """The sigma index for each batch item's timestep in ``add_noise``."""
        if self.begin_index is None:
            schedule = self.timesteps.to(device)
            return [self.index_for_timestep(t, schedule) for t in timesteps.to(device)]
        start = self.step_index if self.step_index is not None else self.begin_index
        return [start] * timesteps.shape[0]

    def _noise_sigma(self, original_samples: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        sigmas = self.sigmas.to(device=original_samples.device, dtype=original_samples.dtype)
        indices = self._sigma_indices(timesteps, original_samples.device)
        return schedules.broadcast_to_sample(sigmas[indices], original_samples)

    def add_noise(self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """``x0 + sigma * noise`` at each batch item's timestep (or at the begin index, when one is set)."""
        return original_samples + noise * self._noise_sigma(original_samples, timesteps)

    def scale_model_input(self, sample: torch.Tensor, timestep=None) -> torch.Tensor:
        """Divide by ``sqrt(sigma**2 + 1)`` so the model sees unit-variance input, as in training."""
        if self.step_index is None:
            self._init_step_index(timestep)
        sigma = self.sigmas[self.step_index]
        self.is_scale_input_called = True
        return sample / ((sigma**2 + 1) ** 0.5)

    def _warn_if_unscaled(self) -> None:
        if not getattr(self, "is_scale_input_called", True):
            logger.warning(
                "%s.step was called before scale_model_input; call scale_model_input(sample, t) on the model "
                "input first, or the denoising is wrong", type(self).__name__,
            )

    def _reject_integer_timestep(self, timestep) -> None:
        if isinstance(timestep, (int, torch.IntTensor, torch.LongTensor)):
            raise ValueError(
                f"{type(self).__name__}.step: timestep must be one of scheduler.timesteps (a float), got the "
                f"integer {timestep!r}; do not pass the loop index from enumerate(timesteps)"
            )


__all__ = [
    "DenoisingSchedulerOutput", "DiscreteTimeScheduler", "KarrasDiffusionSchedulers",
    "SchedulerMixin", "SchedulerOutput", "SigmaScheduler",
]
