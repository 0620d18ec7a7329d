"""The safety checker step of pipelines whose checkpoints carry one (Stable Diffusion 1.x, the x4 upscaler).

``safety_checker`` (a ``StableDiffusionSafetyChecker``) looks at each decoded
picture through ``feature_extractor`` (a ``CLIPImageProcessor``) and blackens
the flagged ones; ``safety_checker=None`` turns the step off, with the
reference's warning unless ``requires_safety_checker=False``.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from ..image import postprocess

logger = logging.getLogger("sfumato")

DISABLED_WARNING = (
    "You have disabled the safety checker for {cls} by passing `safety_checker=None`. Ensure that you abide to the "
    "conditions of the Stable Diffusion license and do not expose unfiltered results in services or applications "
    "open to the public. Both the diffusers team and Hugging Face strongly recommend to keep the safety filter "
    "enabled in all public facing circumstances, disabling it only for use-cases that involve analyzing network "
    "behavior or auditing its results. For more information, please have a look at "
    "https://github.com/huggingface/diffusers/pull/254 ."
)


def check_components(pipeline_class: type, safety_checker: Any, feature_extractor: Any,
                     requires_safety_checker: bool) -> None:
    """Warn when the checker is off though the checkpoint asks for it; fail when it has no feature extractor."""
    if safety_checker is None and requires_safety_checker:
        logger.warning(DISABLED_WARNING.format(cls=pipeline_class))
    if safety_checker is not None and feature_extractor is None:
        raise ValueError(f"{pipeline_class.__name__} has a safety_checker but no feature_extractor to feed it; "
                         f"pass feature_extractor=..., or safety_checker=None to turn the checker off")


def check_pictures(safety_checker: Any, feature_extractor: Any, pixels: torch.Tensor, *, device: torch.device,
                   dtype: torch.dtype) -> tuple[torch.Tensor, list[bool] | None]:
    """Decoded pictures (NCHW, [-1, 1]) with the flagged ones blackened, and the flags (None: no checker)."""
    if safety_checker is None:
        return pixels, None
    features = feature_extractor(postprocess(pixels, "pil"), return_tensors="pt").to(device)
    return safety_checker(images=pixels, clip_input=features.pixel_values.to(dtype))
