"""sfumato: Kandinsky 2.1 / 2.2 / 3 and image-to-image diffusion on PyTorch.

Public names match diffusers, so ``from sfumato import KandinskyV22Pipeline``
works where ``from diffusers import KandinskyV22Pipeline`` did. Every name is
imported on first use, which keeps ``import sfumato`` fast.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> module that defines it; also the registry that maps the
# ``["diffusers", "<ClassName>"]`` entries of model_index.json to our classes.
_EXPORTS: dict[str, str] = {}


def _export(module: str, *names: str) -> None:
    for name in names:
        _EXPORTS[name] = f"sfumato.{module}"


_export("checkpoint.config", "ConfigMixin", "FrozenDict", "register_to_config")
_export("checkpoint.modeling", "ModelMixin")
_export("checkpoint.errors", "CheckpointError")
_export(
    "schedulers",
    "SchedulerMixin",
    "DDPMScheduler",
    "DDIMScheduler",
    "UnCLIPScheduler",
    "PNDMScheduler",
    "EulerDiscreteScheduler",
    "EulerAncestralDiscreteScheduler",
    "DPMSolverMultistepScheduler",
    "LMSDiscreteScheduler",
    "KarrasDiffusionSchedulers",
)
_export("models.unet_2d_condition", "UNet2DConditionModel")
_export("models.controlnet", "ControlNetModel")
_export("models.controlnet", "MultiControlNetModel")
_export("models.unet_kandinsky3", "Kandinsky3UNet")
_export("models.vq_model", "VQModel")
_export("models.autoencoder_kl", "AutoencoderKL")
_export("models.safety_checker", "StableDiffusionSafetyChecker")
_export("models.prior_transformer", "PriorTransformer")
_export("models.multilingual_clip", "MultilingualCLIP", "MCLIPConfig")
_export("pipelines.base", "DiffusionPipeline", "ImagePipelineOutput")
_export(
    "pipelines.kandinsky2_2",
    "KandinskyV22PriorPipeline",
    "KandinskyV22PriorEmb2EmbPipeline",
    "KandinskyV22Pipeline",
    "KandinskyV22Img2ImgPipeline",
    "KandinskyV22InpaintPipeline",
    "KandinskyV22ControlnetPipeline",
    "KandinskyV22ControlnetImg2ImgPipeline",
    "KandinskyV22CombinedPipeline",
    "KandinskyV22Img2ImgCombinedPipeline",
    "KandinskyV22InpaintCombinedPipeline",
)
_export(
    "pipelines.kandinsky2_1",
    "KandinskyPriorPipeline",
    "KandinskyPipeline",
    "KandinskyImg2ImgPipeline",
    "KandinskyInpaintPipeline",
    "KandinskyCombinedPipeline",
    "KandinskyImg2ImgCombinedPipeline",
    "KandinskyInpaintCombinedPipeline",
)
_export("pipelines.prior", "KandinskyPriorPipelineOutput")
_export(
    "pipelines.stable_diffusion",
    "StableDiffusionPipeline",
    "StableDiffusionImg2ImgPipeline",
    "StableDiffusionInpaintPipeline",
    "StableDiffusionPipelineOutput",
    "StableDiffusionControlNetPipeline",
    "StableDiffusionControlNetImg2ImgPipeline",
    "StableDiffusionControlNetInpaintPipeline",
    "StableDiffusionLatentUpscalePipeline",
    "StableDiffusionUpscalePipeline",
)
_export("pipelines.kandinsky3", "Kandinsky3Pipeline", "Kandinsky3Img2ImgPipeline")
_export("pipelines.stable_diffusion_xl", "StableDiffusionXLPipeline", "StableDiffusionXLImg2ImgPipeline",
        "StableDiffusionXLInpaintPipeline", "StableDiffusionXLPipelineOutput")
_export("auto", "AutoPipelineForText2Image", "AutoPipelineForImage2Image", "AutoPipelineForInpainting")
# prompt weighting: (word:1.3), (word), [word] for every family with a text encoder
_export("prompts", "weighted_embeddings", "parse_prompt", "PromptSyntaxError")
# the fast CPU mode: sfumato.optimize(pipe) == pipe.enable_fast_cpu()
_export("fast", "optimize")

_SUBMODULES = {"checkpoint", "nn", "models", "schedulers", "image", "pipelines", "utils", "auto", "cli", "demo", "metadata",
               "prompts", "fast"}

__all__ = sorted(_EXPORTS) + sorted(_SUBMODULES)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    if name in _SUBMODULES:
        return importlib.import_module(f"sfumato.{name}")
    raise AttributeError(f"module 'sfumato' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
