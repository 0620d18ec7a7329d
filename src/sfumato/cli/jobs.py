"""A job: one picture, described completely enough to make it again.

Every command turns its arguments into :class:`Job` objects, one per
picture. A job is checked as a whole before anything is loaded, in two
passes: :func:`check` reads only files (arguments, checkpoint folders, input
pictures; torch is not even imported, so a typo costs a tenth of a second),
:func:`settle` asks the library's classes (device, size multiple, defaults,
step limits; still no weights). It is then run with a fixed seed
(:func:`run`), and stored in the
written PNG as a flat JSON record (:meth:`Job.to_record`), from which
``sfumato reproduce`` rebuilds the same job (:meth:`Job.from_mapping`).
Chain files are lists of the same records, so the three agree on one set of
names.

An input picture is a file (recorded by absolute path, with a SHA-256 of its
pixels so a changed file is noticed) or the output of another job (recorded
as that job's record, nested), which is how a chain's final PNG still holds
everything needed to regenerate it.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import math
import numbers
import os
import re
from dataclasses import dataclass, field, fields, replace
from typing import Any, Iterator

from .errors import UsageError
from . import models

TASKS = ("text2image", "image2image", "inpaint", "controlnet", "interpolate", "upscale")


def _task_names() -> dict[str, str]:
    """Other ways to name a task in chain files: command names, diffusers words and the pipeline classes
    of the families the command line runs (from the library's tables)."""
    from .. import auto

    names = {
        "text2image": "text2image", "text-to-image": "text2image", "txt2img": "text2image", "generate": "text2image",
        "image2image": "image2image", "image-to-image": "image2image", "img2img": "image2image",
        "inpaint": "inpaint", "inpainting": "inpaint",
        "controlnet": "controlnet",
        "interpolate": "interpolate", "interpolation": "interpolate",
        "upscale": "upscale", "upscaling": "upscale", "upscaler": "upscale",
        "AutoPipelineForText2Image": "text2image", "AutoPipelineForImage2Image": "image2image",
        "AutoPipelineForInpainting": "inpaint",
    }
    for family in models.FAMILIES:
        for table in (auto.FAMILIES, auto.DECODERS):
            names.update({name: task for task, name in table.get(family, {}).items()})
        names.update({f"{name}.interpolate": "interpolate" for name in auto.PRIORS.get(family, ())})
        controlnet = auto.CONTROLNETS.get(family, {}).get(auto.TEXT2IMAGE)
        if controlnet:
            names[controlnet] = "controlnet"
    names.update({name: "upscale" for name in models.UPSCALERS})
    return names


TASK_NAMES = _task_names()

#: What a chain step or record may also call a field (the pipelines' keyword names, the CLI's flag names).
ALIASES = {
    "pipeline": "task", "negative": "negative_prompt", "num_inference_steps": "steps",
    "guidance_scale": "guidance", "prior_num_inference_steps": "prior_steps",
    "prior_guidance_scale": "prior_guidance", "mask_image": "mask", "images_and_prompts": "items",
    "controlnet_conditioning_scale": "controlnet_scale", "control_image": "hint",
    "control_guidance_start": "control_start", "control_guidance_end": "control_end",
}
#: Record keys that describe a picture but do not change it (ignored when a record is read back).
INFORMATIONAL = {"sfumato", "command", "index", "num", "scheduler_class", "input_sha256", "cpu_threads", "preset"}
#: Marks the previous chain step's output in a chain file.
PREVIOUS = "$previous"

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")
_SEED_LIMIT = 2 ** 63  # torch.Generator.manual_seed takes 64-bit seeds; keep them positive and portable
#: Characters of a prompt or negative prompt (the text encoders read a few hundred; this stops megabytes,
#: which would also make the PNG's record too large to read back).
MAX_PROMPT_CHARS = 10_000
#: Steps of one chain, and earlier steps one picture may be made from (a record nests one per step).
MAX_CHAIN_STEPS = 64
#: Characters of a --model / --prior value or an input path (PATH_MAX on Linux).
MAX_NAME_CHARS = 4096


def shown(value: Any, limit: int = 120) -> str:
    """``repr(value)`` for an error message, cut to ``limit`` characters (a chain file's value can be huge)."""
    try:
        text = repr(value) if not isinstance(value, (list, dict)) or len(value) <= limit else \
            f"<a {type(value).__name__} of {len(value)} items>"
    except RecursionError:
        text = f"<a {type(value).__name__} nested too deeply to show>"
    return text if len(text) <= limit else f"{text[:limit - 20]}... ({len(text)} characters)"

# task -> the inputs it requires / the optional fields that make sense for it
_REQUIRED = {
    "text2image": ("prompt",), "image2image": ("prompt", "image"), "inpaint": ("prompt", "image", "mask"),
    "controlnet": ("prompt", "hint"), "interpolate": ("items",), "upscale": ("image",),
}
# controlnet takes an image too (ControlNet image-to-image, which starts from it and follows the hint), and with it
# a mask (ControlNet inpainting, Stable Diffusion)
_ONLY_FOR = {"strength": ("image2image", "controlnet"), "image": ("image2image", "inpaint", "upscale", "controlnet"),
             "mask": ("inpaint", "controlnet"),
             "keep_unmasked": ("inpaint", "controlnet"),
             "hint": ("controlnet",), "items": ("interpolate",), "weights": ("interpolate",),
             "prompt": ("text2image", "image2image", "inpaint", "controlnet", "upscale"),
             "noise_level": ("upscale",), "controlnet": ("controlnet",), "controlnet_scale": ("controlnet",),
             "control_start": ("controlnet",), "control_end": ("controlnet",),
             "depth_model": ("controlnet",), "denoising_end": ("text2image", "image2image", "inpaint"),
             "denoising_start": ("image2image", "inpaint"),
             "output_type": ("text2image", "image2image", "inpaint", "upscale")}
#: What a step's output may be: a picture, or (``latent``) the latents, handed to the next step's ``image``.
OUTPUT_TYPES = ("pil", "latent")


@dataclass
class Source:
    """An input picture: a file (``path``) or the output of another job (``job``)."""

    path: str | None = None
    job: "Job | None" = None
    picture: Any = None  # the PIL image, once loaded or made
    sha256: str | None = None  # of the pixels, for files

    def to_record(self) -> Any:
        return self.job.to_record(nested=True) if self.job is not None else self.path


@dataclass
class Job:
    """Everything that decides one picture. ``None`` fields take the model's defaults when run."""

    task: str
    model: str | None = None  # --model as given; after check(), the recorded spec
    prior: str | None = None
    prompt: str | None = None
    negative_prompt: str | None = None
    seed: int | None = None
    steps: int | None = None
    guidance: float | None = None
    prior_steps: int | None = None
    prior_guidance: float | None = None
    strength: float | None = None
    width: int | None = None
    height: int | None = None
    scheduler: str | None = None
    dtype: str = "fp32"
    device: str | None = None  # None: cuda when there is one, else cpu
    image: Source | None = None
    mask: Source | None = None
    hint: Source | None = None
    items: list[str | Source] | None = None  # interpolate: prompts (str) and pictures
    weights: list[float] | None = None
    # inpaint: paste the picture's own pixels back where the mask is black (None: yes)
    keep_unmasked: bool | None = None
    # prompt weighting syntax, (word:1.3) / (word) / [word], and long CLIP prompts in chunks (None: on)
    weighting: bool | None = None
    # the fast CPU mode (sfumato.optimize): what it does depends on the CPU, so it is recorded
    fast: bool = False
    noise_level: int | None = None  # the x4 upscaler's noise added to the low-resolution picture
    controlnet: str | None = None  # Stable Diffusion: the ControlNetModel folder
    controlnet_scale: float | None = None  # controlnet_conditioning_scale
    # Stable Diffusion: the share of the steps before which / after which the ControlNet does not steer
    control_start: float | None = None  # control_guidance_start
    control_end: float | None = None  # control_guidance_end
    depth_model: str | None = None  # a depth-estimation model folder: HINT is a picture, made into a depth hint
    denoising_end: float | None = None  # stop this share of the way through the schedule (SDXL base)
    denoising_start: float | None = None  # start this share of the way through, from the previous step's latents
    output_type: str | None = None  # "latent": hand the latents, not a picture, to the next chain step
    # a named sampler preset (models.PRESETS): check() writes its values into the fields left open, so a
    # record holds what it chose and the name is only informational
    preset: str | None = None
    # filled by check() / settle() / run(), not recorded as such
    model_ref: models.ModelRef | None = field(default=None, repr=False)
    controlnet_ref: models.ModelRef | None = field(default=None, repr=False)
    prior_ref: models.ModelRef | None = field(default=None, repr=False)
    index: dict | None = field(default=None, repr=False)  # the checkpoint's model_index.json
    scheduler_class: str | None = field(default=None, repr=False)

    @property
    def from_image(self) -> bool:
        """Whether the picture starts from ``image`` partly denoised (image-to-image, ControlNet with an image),
        so that ``strength`` applies."""
        return self.task == "image2image" or (self.task == "controlnet" and self.image is not None)

    @property
    def inpaints(self) -> bool:
        """Whether the picture repaints where ``mask`` is white (inpainting, ControlNet with a mask)."""
        return self.task == "inpaint" or (self.task == "controlnet" and self.mask is not None)

    # -------------------------------------------------------------- records

    def to_record(self, nested: bool = False) -> dict[str, Any]:
        """The JSON object stored in the PNG (``nested``: as the input of another job)."""
        from .. import __version__

        record: dict[str, Any] = {} if nested else {"sfumato": __version__}
        for name in ("task", "model", "prior", "prompt", "negative_prompt", "seed", "steps", "guidance",
                     "prior_steps", "prior_guidance", "strength", "width", "height", "scheduler",
                     "scheduler_class", "dtype", "device", "keep_unmasked", "weighting", "noise_level", "controlnet",
                     "controlnet_scale", "control_start", "control_end", "depth_model", "denoising_end",
                     "denoising_start", "output_type", "preset"):
            value = getattr(self, name)
            if value is not None or name in ("negative_prompt", "scheduler"):
                record[name] = value
        for name in ("image", "mask", "hint"):
            source = getattr(self, name)
            if source is not None:
                record[name] = source.to_record()
        if self.items is not None:
            record["items"] = [{"text": item} if isinstance(item, str) else {"image": item.to_record()}
                               for item in self.items]
            record["weights"] = self.weights
        if self.fast:
            record["fast"] = True
        hashes = {name: source.sha256 for name, source in self._sources() if source.sha256}
        if hashes:
            record["input_sha256"] = hashes
        return record

    def _sources(self) -> list[tuple[str, Source]]:
        named = [(name, getattr(self, name)) for name in ("image", "mask", "hint") if getattr(self, name)]
        named += [(f"items.{i}", item) for i, item in enumerate(self.items or []) if isinstance(item, Source)]
        return named

    @classmethod
    def from_mapping(cls, data: Any, where: str, record: bool = False, defaults: dict | None = None,
                     _depth: int = 0) -> "Job":
        """A job from a chain step or a stored record; ``where`` names it in error messages.

        Chain steps may use the pipelines' keyword names (``guidance_scale``)
        and ``size: WxH``; records carry informational keys, which are skipped.
        A record may nest the records of at most :data:`MAX_CHAIN_STEPS` earlier steps.
        """
        if not isinstance(data, dict):
            raise UsageError(f"{where} must be a mapping of parameters, got {type(data).__name__}")
        if _depth > MAX_CHAIN_STEPS:
            root = where.split(": ", 1)[0]  # not the input's name once per step
            raise UsageError(f"{root}: the picture is made from more than {MAX_CHAIN_STEPS} earlier steps, one "
                             f"nested in the other; a chain has at most {MAX_CHAIN_STEPS} steps")
        values: dict[str, Any] = {}
        known = {f.name for f in fields(cls) if f.name not in ("model_ref", "prior_ref", "controlnet_ref", "index",
                                                               "scheduler_class")}
        for key, value in data.items():
            name = ALIASES.get(key, key)
            if record and name in INFORMATIONAL:
                continue
            if name == "size":
                values["width"], values["height"] = parse_size(value, f"{where}: size")
                continue
            if name not in known:
                raise UsageError(f"{where}: unknown key {shown(key)}; known keys are "
                                 f"{', '.join(sorted(known | {'size'}))}")
            values[name] = value
        if "task" not in values or values["task"] is None:
            raise UsageError(f"{where} names no task; add task: text2image (or image2image, inpaint, controlnet, "
                             f"interpolate, upscale, or a pipeline class name)")
        task = values["task"]
        if not isinstance(task, str) or task not in TASK_NAMES:
            raise UsageError(f"{where}: unknown task {shown(task)}; use one of {', '.join(TASKS)} or one of the "
                             f"pipeline classes {', '.join(k for k in TASK_NAMES if k[0].isupper())}")
        values["task"] = TASK_NAMES[task]
        if record and values["task"] == "inpaint":
            values.setdefault("keep_unmasked", False)  # a picture made before the option existed: it was off
        if record:
            values.setdefault("weighting", False)  # made before prompt weighting: prompts were read as plain text
        for name, value in (defaults or {}).items():
            # a chain-wide default (e.g. strength) applies to the steps it makes sense for
            if name not in values and values["task"] in _ONLY_FOR.get(name, TASKS) \
                    and not (values["task"] == "upscale" and name in ("width", "height")) \
                    and not (name == "strength" and values["task"] == "controlnet" and values.get("image") is None):
                values[name] = value
        hashes = (data.get("input_sha256") or {}) if record else {}
        if not isinstance(hashes, dict) or not all(isinstance(v, str) for v in hashes.values()):
            raise UsageError(f"{where}: input_sha256 must map input names to SHA-256 digests (strings), got "
                             f"{shown(hashes)}")
        for name in ("image", "mask", "hint"):
            if values.get(name) is not None:
                values[name] = _source(values[name], f"{where}: {name}", record, hashes.get(name), _depth)
        if values.get("items") is not None:
            items = values["items"]
            if not isinstance(items, list) or not items:
                raise UsageError(f"{where}: items must be a non-empty list of prompts and pictures, got "
                                 f"{shown(items)}")
            from .. import limits

            if len(items) > limits.max_images():
                raise UsageError(f"{where}: items has {len(items)} prompts and pictures, more than the limit of "
                                 f"{limits.max_images()} (SFUMATO_MAX_IMAGES; each is encoded like a picture)")
            values["items"] = [_item(item, f"{where}: items[{i}]", record, hashes.get(f"items.{i}"), _depth)
                               for i, item in enumerate(items)]
        return cls(**values)


def _source(value: Any, where: str, record: bool, sha256: str | None, depth: int = 0) -> Source:
    if isinstance(value, Source):
        return value
    if isinstance(value, dict):  # the record of the job that made it
        return Source(job=Job.from_mapping(value, where, record=True, _depth=depth + 1))
    if isinstance(value, str) and value:
        _check_name(value, where)
        return Source(path=value, sha256=sha256)
    raise UsageError(f"{where} must be a file path{'' if record else ' or ' + PREVIOUS}, got {shown(value)}")


def _item(value: Any, where: str, record: bool, sha256: str | None, depth: int = 0) -> str | Source:
    if isinstance(value, dict) and set(value) == {"text"} and isinstance(value["text"], str):
        return value["text"]
    if isinstance(value, dict) and set(value) == {"image"}:
        return _source(value["image"], where, record, sha256, depth)
    if isinstance(value, str) and not record:
        return classify_item(value)
    raise UsageError(f"{where} must be a prompt, a picture path, {{text: ...}} or {{image: ...}}, got "
                     f"{shown(value)}")


def _check_name(value: str, where: str) -> None:
    """A file name, folder or hub id: no control characters (a NUL cannot be opened, a newline hides in
    messages) and not longer than a path can be."""
    if len(value) > MAX_NAME_CHARS:
        raise UsageError(f"{where} is {len(value)} characters long, more than a path can be ({MAX_NAME_CHARS}): "
                         f"{shown(value, 60)}")
    bad = next((c for c in value if ord(c) < 32 or ord(c) == 127), None)
    if bad is not None:
        raise UsageError(f"{where} {shown(value)} contains the control character {bad!r}; "
                         f"no file or model name has one")
    longest = max(value.replace(os.sep, "/").split("/"), key=lambda part: len(part.encode("utf-8", "replace")))
    if len(longest.encode("utf-8", "replace")) > 255:
        raise UsageError(f"{where} {shown(value, 60)}: the name {shown(longest, 40)} in it is "
                         f"{len(longest.encode('utf-8', 'replace'))} bytes, longer than the 255 a file system takes")


def classify_item(text: str) -> str | Source:
    """An interpolate item from the command line: a picture if it looks like one, else a prompt.

    Pictures are URLs and names ending in an image suffix (.png, .jpg, ...);
    everything else is a prompt, so a typo in a file name is reported as a
    missing file rather than silently drawn as text.
    """
    lowered = text.strip().lower()
    if text == PREVIOUS or lowered.startswith(("http://", "https://")) or lowered.endswith(IMAGE_SUFFIXES):
        return Source(path=text)
    return text


# ---------------------------------------------------------------------------------------------- checks


def parse_size(value: Any, where: str = "--size") -> tuple[int, int]:
    """``"WxH"`` -> (width, height), positive whole numbers."""
    match = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", value) if isinstance(value, str) else None
    if not match or int(match.group(1)) < 1 or int(match.group(2)) < 1:
        raise UsageError(f"{where} must be WIDTHxHEIGHT with positive whole numbers (e.g. 64x64), got "
                         f"{shown(value)}")
    return int(match.group(1)), int(match.group(2))


def _positive_int(value: Any, where: str) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise UsageError(f"{where} must be a positive whole number, got {shown(value)}")


def _finite(value: Any, where: str) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        finite = "" if isinstance(value, bool) or not isinstance(value, numbers.Real) else " (a finite one)"
        raise UsageError(f"{where} must be a number, got {shown(value)}{finite}")


def check_seed(seed: Any, count: int = 1, where: str = "--seed") -> None:
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or not 0 <= seed <= _SEED_LIMIT - count:
        raise UsageError(f"{where} must be a whole number from 0 to {_SEED_LIMIT - count}, got {shown(seed)}")


def check_values(job: Job, where: str) -> None:
    """Every field on its own and against the task (no files or models touched)."""
    check_fields(job, where)
    _check_task_fields(job, where)


def check_fields(job: Job, where: str) -> None:
    """Every field on its own: types, ranges, lengths (e.g. a chain file's defaults, before any step)."""
    from .. import limits

    for name in ("steps", "prior_steps", "width", "height"):
        if getattr(job, name) is not None:
            _positive_int(getattr(job, name), f"{where}{_flag(name)}")
    for name in ("width", "height"):  # the library's bound, before torch (settle() checks the memory)
        if getattr(job, name) is not None and getattr(job, name) > limits.max_side():
            raise UsageError(f"{where}{_flag(name)} {getattr(job, name)} is larger than the limit of "
                             f"{limits.max_side()} pixels per side (set SFUMATO_MAX_SIDE to raise it)")
    for name in ("guidance", "prior_guidance"):
        if getattr(job, name) is not None:
            _finite(getattr(job, name), f"{where}{_flag(name)}")
    if job.seed is not None:
        check_seed(job.seed, where=f"{where}--seed")
    if job.strength is not None:
        _finite(job.strength, f"{where}--strength")
        if not 0 < job.strength <= 1:
            raise UsageError(f"{where}--strength must be in (0, 1] (the share of the denoising steps that are "
                             f"run; 0 would leave the picture unchanged), got {shown(job.strength)}")
    for name in ("prompt", "negative_prompt", "model", "prior"):
        value = getattr(job, name)
        if value is not None and not isinstance(value, str):
            raise UsageError(f"{where}{_flag(name)} must be a string, got {shown(value)}")
        if name in ("model", "prior") and value is not None:
            _check_name(value, f"{where}{_flag(name)}")
    if isinstance(job.items, list) and len(job.items) > limits.max_images():
        raise UsageError(f"{where}items has {len(job.items)} prompts and pictures, more than the limit of "
                         f"{limits.max_images()} (SFUMATO_MAX_IMAGES; each is encoded like a picture)")
    texts = [(_flag(name), getattr(job, name)) for name in ("prompt", "negative_prompt")]
    texts += [(f"items[{i}]", item) for i, item in enumerate(job.items or []) if isinstance(item, str)]
    for flag, text in texts:
        if text is not None and len(text) > MAX_PROMPT_CHARS:
            raise UsageError(f"{where}{flag} is {len(text)} characters long, more than the limit of "
                             f"{MAX_PROMPT_CHARS} (the text encoder reads only the first few hundred)")
    if job.noise_level is not None and (isinstance(job.noise_level, bool) or not isinstance(job.noise_level,
                                                                                              numbers.Integral)
                                        or job.noise_level < 0):
        raise UsageError(f"{where}--noise-level must be a whole number of at least 0 (the x4 upscaler's noise on the "
                         f"low-resolution picture), got {shown(job.noise_level)}")
    if job.controlnet_scale is not None:
        _finite(job.controlnet_scale, f"{where}--controlnet-scale")
    for name in ("control_start", "control_end"):
        if getattr(job, name) is not None:
            _finite(getattr(job, name), f"{where}{_flag(name)}")
            if not 0 <= getattr(job, name) <= 1:
                raise UsageError(f"{where}{_flag(name)} must be in [0, 1] (a share of the steps), got "
                                 f"{shown(getattr(job, name))}")
    if job.control_start is not None and job.control_end is not None and not job.control_start < job.control_end:
        raise UsageError(f"{where}--control-start {job.control_start} must be below --control-end {job.control_end} "
                         f"(the ControlNet steers between them)")
    for name in ("denoising_end", "denoising_start"):
        value = getattr(job, name)
        if value is not None:
            _finite(value, f"{where}{name}")
            if not 0 < value < 1:
                raise UsageError(f"{where}{name} must be in (0, 1) (the share of the schedule at which the "
                                 f"{'base stops' if name == 'denoising_end' else 'refiner starts'}), got {shown(value)}")
    if job.output_type is not None and job.output_type not in OUTPUT_TYPES:
        raise UsageError(f"{where}output_type must be one of {', '.join(OUTPUT_TYPES)} (latent: hand the latents to "
                         f"the next chain step), got {shown(job.output_type)}")
    for name in ("controlnet", "depth_model"):
        value = getattr(job, name)
        if value is not None:
            if not isinstance(value, str) or not value.strip():
                raise UsageError(f"{where}{_flag(name)} must be a folder, got {shown(value)}")
            _check_name(value, f"{where}{_flag(name)}")
    if job.keep_unmasked is not None and not isinstance(job.keep_unmasked, bool):
        raise UsageError(f"{where}keep_unmasked must be true or false, got {shown(job.keep_unmasked)}")
    if not isinstance(job.fast, bool):
        raise UsageError(f"{where}fast must be true or false, got {shown(job.fast)}")
    if job.weighting is not None and not isinstance(job.weighting, bool):
        raise UsageError(f"{where}weighting must be true or false, got {shown(job.weighting)}")
    if job.weighting is not False:  # the weighting syntax, checked before anything loads
        from ..prompts.syntax import PromptSyntaxError, parse_prompt

        for flag, text in texts[:2]:
            if isinstance(text, str) and len(text) <= MAX_PROMPT_CHARS:
                try:
                    parse_prompt(text, flag)
                except PromptSyntaxError as error:
                    raise UsageError(f"{where}{error} (or pass --no-weighting to read it as plain text)") from None
    if not isinstance(job.dtype, str) or job.dtype not in models.DTYPES:
        raise UsageError(f"{where}--dtype must be one of {', '.join(models.DTYPES)}, got {shown(job.dtype)}")
    if job.device is not None and not isinstance(job.device, str):
        raise UsageError(f"{where}--device must be a torch device such as cpu or cuda, got {shown(job.device)}")
    if job.preset is not None and (not isinstance(job.preset, str) or job.preset not in models.PRESETS):
        raise UsageError(f"{where}--preset must be one of {', '.join(models.PRESETS)}, got {shown(job.preset)}")
    if job.scheduler is not None:
        if not isinstance(job.scheduler, str) or len(job.scheduler) > 100:
            raise UsageError(f"{where}--scheduler must be one of {', '.join(models.SCHEDULERS)} (or a scheduler "
                             f"class name), got {shown(job.scheduler)}")
        try:
            models.scheduler_class_name(job.scheduler)
        except UsageError as error:
            raise UsageError(f"{where}{error}") from None


def _check_task_fields(job: Job, where: str) -> None:
    """The fields against the task: what it needs, what does not apply to it."""
    for name, tasks in _ONLY_FOR.items():
        if getattr(job, name) is not None and job.task not in tasks:
            raise UsageError(f"{where}{_flag(name)} does not apply to {job.task} (only to {', '.join(tasks)})")
    for name in _REQUIRED[job.task]:
        if getattr(job, name) is None:
            raise UsageError(f"{where}{job.task} needs {_flag(name)}")
    if job.task == "controlnet" and job.image is None:
        for name, what in (("strength", "--strength"), ("mask", "--mask")):
            if getattr(job, name) is not None:
                raise UsageError(f"{where}{what} applies to controlnet only with --image (the picture that ControlNet "
                                 f"image-to-image and inpainting start from); without it the picture starts from "
                                 f"noise")
    if job.task == "controlnet" and job.keep_unmasked is not None and job.mask is None:
        raise UsageError(f"{where}--keep-unmasked applies to controlnet only with --mask (ControlNet inpainting)")
    if job.task == "interpolate":
        if job.weights is None:
            job.weights = [1 / len(job.items)] * len(job.items)  # an even mix unless told otherwise
        if not isinstance(job.weights, list) or len(job.weights) != len(job.items):
            raise UsageError(f"{where}--weights needs one weight per item: {len(job.items)} items, got "
                             f"{shown(job.weights)}")
        for number, weight in enumerate(job.weights):
            _finite(weight, f"{where}weights[{number}]")
    if job.prompt is not None and not job.prompt.strip():
        raise UsageError(f"{where}the prompt is empty")


def _flag(name: str) -> str:
    return {"negative_prompt": "--negative", "steps": "--steps", "prior_steps": "--prior-steps",
            "prior_guidance": "--prior-guidance", "width": "--size width", "height": "--size height",
            "mask": "MASK", "hint": "HINT", "image": "IMAGE", "items": "items", "prompt": "PROMPT"}.get(
        name, f"--{name.replace('_', '-')}")


def resolve_device(value: str | None) -> str:
    """``None`` -> cuda when available, else cpu; a named device must exist."""
    import torch

    if value is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(value)
    except (RuntimeError, TypeError):
        raise UsageError(f"--device must be a torch device such as cpu, cuda or cuda:1, got {shown(value)}") from None
    available = {"cpu": True, "cuda": torch.cuda.is_available(),
                 "mps": getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available(),
                 "xpu": getattr(torch, "xpu", None) is not None and torch.xpu.is_available()}
    if device.type not in available:  # meta, and backends pictures cannot be made on, fail only after loading
        raise UsageError(f"--device {shown(value)}: pictures are made on {', '.join(available)} devices, not "
                         f"{device.type}")
    if not available[device.type]:
        raise UsageError(f"--device {value}: no {device.type} device is available here; use --device cpu")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise UsageError(f"--device {value}: there are only {torch.cuda.device_count()} CUDA devices")
    return str(device)


def check(job: Job, where: str = "", previous: Source | None = None) -> Job:
    """Check everything about ``job`` that files alone tell, and open its inputs; torch is not imported.

    Arguments, the checkpoint folders (exist, can do the task, have a prior),
    the checkpoint's own defaults, and the input pictures (exist, decode).
    ``previous`` is the earlier chain step's output, used where the chain
    says ``$previous`` (and, by default, as the image of image-to-image,
    inpainting and upscale steps and the hint of ControlNet steps). Latents
    handed from step to step are checked here too (:func:`_check_handoff`).
    """
    if previous is not None:
        _feed_previous(job, previous)
    check_values(job, where)
    try:
        model_ref = models.parse_model(job.model, job.task, f"{where}--model")
        job.index = models.check_task(model_ref, job.task, f"{where}--model")
        job.prior_ref = models.resolve_prior(model_ref, job.index, job.prior)
    except OSError as error:  # e.g. a folder that cannot be read
        named = f"--model {shown(job.model)}" + ("" if job.prior is None else f" / --prior {shown(job.prior)}")
        raise UsageError(f"{where}{named}: {error.strerror or error}") from None
    if job.prior_ref is None and models.needs_prior(job.index) and model_ref.folder is not None:
        raise UsageError(f"{where}--model {model_ref.spec!r} is a decoder and needs a prior: its README.md names "
                         f"none; pass --prior FOLDER")
    job.model_ref, job.model = model_ref, model_ref.spec
    if job.prior is not None:
        job.prior = job.prior_ref.spec
    kind = models.checkpoint_kind(job.index, model_ref) if job.index is not None else None
    two_stage = _check_family_fields(job, kind, where)
    if job.preset is not None and job.task != "upscale":
        for name, value in models.PRESETS[job.preset].items():
            if getattr(job, name) is None and (name != "prior_steps" or two_stage):
                setattr(job, name, value)
    given = job.image.job if job.image is not None else None
    if given is not None and job.denoising_start is not None and given.output_type is None \
            and given.denoising_end == job.denoising_start:
        given.output_type = "latent"  # the base -> refiner hand-off: latents, not a decoded picture
    latent_input = given is not None and given.output_type == "latent"
    if job.weighting is None:
        job.weighting = True
    if job.inpaints and job.keep_unmasked is None:
        job.keep_unmasked = not latent_input  # latents have no pixels to paste back
    if latent_input and job.keep_unmasked:
        raise UsageError(f"{where}--keep-unmasked needs the picture's pixels, but IMAGE is the latents of the "
                         f"previous step; pass --no-keep-unmasked (keep_unmasked: false)")
    for name, value in models.folder_defaults(model_ref).items():
        if getattr(job, name) is None and (name != "strength" or job.from_image):
            setattr(job, name, value)
    # inputs: files exist and are pictures; earlier jobs are checked the same way
    for name, source in job._sources():
        flag = f"--{name}" if name in ("image", "mask") and job.task == "controlnet" else _flag(name.split(".")[0])
        _open(source, f"{where}{flag}", grayscale=name == "mask")
    _check_handoff(job, kind, where)
    return job


def _check_family_fields(job: Job, kind: str | None, where: str) -> bool:
    """Fields that only some families take (prior settings, a ControlNet folder, a depth model), against the
    checkpoint's kind (``None``: a hub id, known only once downloaded). Returns whether the checkpoint is
    a two-stage Kandinsky 2.1 / 2.2 one (a prior, then a decoder)."""
    from .. import auto

    if kind is None:  # a hub id: what it is shows once it is downloaded
        two_stage = True
    else:
        two_stage = kind != "upscale" and auto.describe(job.index["_class_name"])[0] in ("kandinsky", "kandinsky22")
    if not two_stage:
        for name in ("prior_steps", "prior_guidance"):
            if getattr(job, name) is not None:
                raise UsageError(f"{where}{_flag(name)} applies to the two-stage Kandinsky 2.1 and 2.2 checkpoints "
                                 f"only; --model {job.model_ref.spec!r} has no prior")
    if job.task == "controlnet" and (kind == "stable-diffusion" or (kind is None and job.controlnet is not None)):
        if job.controlnet is None:
            raise UsageError(f"{where}controlnet with the Stable Diffusion checkpoint {job.model_ref.spec!r} needs "
                             f"--controlnet FOLDER, a ControlNetModel folder (e.g. a depth ControlNet)")
        job.controlnet_ref = models.parse_component(job.controlnet, f"{where}--controlnet", ("ControlNetModel",))
        job.controlnet = job.controlnet_ref.spec
        control = models.component_config(job.controlnet_ref, "")
        unet = models.component_config(job.model_ref, "unet")
        if control and unet and control.get("cross_attention_dim") != unet.get("cross_attention_dim"):
            raise UsageError(f"{where}--controlnet {job.controlnet!r} was made for a UNet with cross_attention_dim "
                             f"{control.get('cross_attention_dim')}, but --model {job.model_ref.spec!r} has "
                             f"{unet.get('cross_attention_dim')}; pass a ControlNet of this Stable Diffusion model")
    elif job.task == "controlnet" and kind == "sd-controlnet":
        if job.controlnet is not None:
            raise UsageError(f"{where}--controlnet: --model {job.model_ref.spec!r} is a Stable Diffusion ControlNet "
                             f"pipeline with its own ControlNet; pass its Stable Diffusion folder as --model to use "
                             f"another one")
    elif job.task == "controlnet" and kind is not None:
        if job.mask is not None:
            raise UsageError(f"{where}--mask (ControlNet inpainting) needs a Stable Diffusion checkpoint and a "
                             f"ControlNetModel; --model {job.model_ref.spec!r} is a Kandinsky 2.2 ControlNet decoder, "
                             f"which has no inpainting pipeline (in the reference either)")
        for name in ("controlnet", "controlnet_scale", "control_start", "control_end"):
            if getattr(job, name) is not None:
                raise UsageError(f"{where}{_flag(name)} applies to Stable Diffusion checkpoints (a ControlNetModel "
                                 f"beside the UNet); --model {job.model_ref.spec!r} is a Kandinsky 2.2 ControlNet "
                                 f"decoder, which has its own")
    if job.depth_model is not None:
        folder = os.path.expanduser(job.depth_model)
        if not os.path.isfile(os.path.join(folder, "config.json")):
            raise UsageError(f"{where}--depth-model {shown(job.depth_model)} must be a local folder holding a "
                             f"transformers depth-estimation model (config.json, weights, preprocessor_config.json)")
        job.depth_model = os.path.abspath(folder)
    if job.scheduler is not None and kind == "upscale" and (models.upscaler(job.model_ref) or ("",))[0] == "x2":
        from .. import StableDiffusionLatentUpscalePipeline

        runs = StableDiffusionLatentUpscalePipeline.sigma_space_schedulers
        if models.scheduler_class_name(job.scheduler) not in runs:
            names = [name for name, class_name in models.SCHEDULERS.items() if class_name in runs]
            raise UsageError(f"{where}--scheduler {job.scheduler!r}: the x2 latent upscaler denoises in sigma space "
                             f"and runs only {' or '.join(names)} ({', '.join(runs)})")
    if job.noise_level is not None and kind is not None and kind == "upscale":
        upscaler = models.upscaler(job.model_ref)
        if upscaler is not None and upscaler[0] != "x4":
            raise UsageError(f"{where}--noise-level applies to the x4 upscaler only; --model {job.model_ref.spec!r} "
                             f"is the x2 latent upscaler")
        if upscaler is not None and upscaler[0] == "x4":
            # the pipeline's max_noise_level, and the UNet's noise-level classes
            most = [job.index.get("max_noise_level", 350)]
            classes = (models.component_config(job.model_ref, "unet") or {}).get("num_class_embeds")
            most += [classes - 1] if isinstance(classes, int) else []
            if isinstance(most[0], int) and job.noise_level > min(most):
                raise UsageError(f"{where}--noise-level {job.noise_level} is more than this x4 upscaler takes: 0 to "
                                 f"{min(most)} (its max_noise_level)")
    return two_stage


def _check_handoff(job: Job, kind: str | None, where: str) -> None:
    """Latents handed from an earlier step (``output_type: latent``, or a ``denoising_end`` step before a
    ``denoising_start`` one) go only where they mean the same: an ``image`` of a model in the same latent space."""
    for name, source in job._sources():
        if source.job is not None and source.job.output_type == "latent" and name != "image":
            raise UsageError(f"{where}{_flag(name.split('.')[0])} comes from a step that hands latents "
                             f"(output_type: latent); only an image2image, inpaint or upscale step's image can take "
                             f"latents")
    source = job.image
    given = source.job if source is not None else None
    if job.denoising_start is not None:
        if given is None:
            raise UsageError(f"{where}denoising_start {job.denoising_start} continues the latents of the previous "
                             f"step, but IMAGE is a file; the previous chain step must stop there with denoising_end")
        if given.denoising_end != job.denoising_start:
            stopped = ("ran to the end (no denoising_end)" if given.denoising_end is None
                       else f"stopped at denoising_end {given.denoising_end}")
            raise UsageError(f"{where}denoising_start {job.denoising_start} must continue where the previous step "
                             f"stopped, but it {stopped}; give both steps the same value")
    if given is None or given.output_type != "latent":
        return
    if kind == "upscale" and (models.upscaler(job.model_ref) or ("",))[0] == "x4":
        raise UsageError(f"{where}IMAGE: the x4 upscaler takes pictures, not the latents the previous step hands "
                         f"(output_type: latent); let that step make a picture")
    if kind == "inpaint":
        raise UsageError(f"{where}IMAGE: this inpainting UNet also reads the masked picture, which latents cannot "
                         f"give; let the previous step make a picture (no output_type: latent)")
    if job.model_ref.folder is None or given.model_ref is None or given.model_ref.folder is None:
        return  # hub ids: the library checks the latents' channels once loaded
    mine, theirs = models.latent_space(job.model_ref), models.latent_space(given.model_ref)
    if mine is None or theirs is None:
        who = job.model_ref.spec if mine is None else given.model_ref.spec
        raise UsageError(f"{where}IMAGE: latents are handed only between models with a VAE (Stable Diffusion, SDXL, "
                         f"the x2 latent upscaler); {who!r} has none (Kandinsky's MoVQ latents stay inside its "
                         f"pipelines); let the previous step make a picture")
    different = [f"{key} {theirs[key]!r} -> {mine[key]!r}" for key in mine if mine[key] != theirs[key]]
    if different:
        raise UsageError(f"{where}IMAGE: the previous step hands latents of {given.model_ref.spec!r}, but "
                         f"{job.model_ref.spec!r} has another latent space (its VAE differs: {'; '.join(different)}); "
                         f"latents only go to a model with the same VAE, e.g. SDXL base -> refiner, or Stable "
                         f"Diffusion -> the x2 latent upscaler")


def settle(job: Job, where: str = "", override_device: str | None = None) -> Job:
    """What only the library's classes can tell, still before any weights load: the device, the size
    multiple, the pipelines' own defaults, and the step counts the schedulers can run."""
    for name, source in job._sources():
        if source.job is not None:  # settling twice (a chain's earlier step) changes nothing
            settle(source.job, where=f"{where}{_flag(name.split('.')[0])} (made by an earlier {source.job.task} "
                                     f"step): ", override_device=override_device)
    job.device = resolve_device(override_device or job.device)
    multiple = models.size_multiple(job.model_ref)
    if job.task == "upscale":
        _settle_upscale(job, where, multiple)
    else:
        for name in ("width", "height"):
            value = getattr(job, name)
            if multiple and value is not None and value % multiple:
                lower = max(multiple, value // multiple * multiple)
                raise UsageError(f"{where}--size {job.width}x{job.height}: {name} {value} is not a multiple of "
                                 f"{multiple}, which this model needs (e.g. {lower} or {lower + multiple})")
        if job.width is None and job.height is None and not (job.image or job.hint):
            # a VAE family's pipelines default to the UNet's sample size; recorded, so the PNG says it
            job.width, job.height = models.default_size(job.model_ref) or (None, None)
    classes = _pipeline_classes(job, job.index)
    if classes is not None:
        _fill_defaults(job, *classes, multiple=multiple or 64)
        _check_strength(job, where)
        for name in ("denoising_end", "denoising_start"):
            if getattr(job, name) is not None and name not in inspect.signature(classes[0].__call__).parameters:
                raise UsageError(f"{where}{name} applies to pipelines that cut the schedule (SDXL base and refiner); "
                                 f"{classes[0].__name__} has no {name}")
    _check_steps(job, where)
    if job.width and job.height:  # the library's bounds on a picture (size, memory), before it is loaded
        from .. import limits

        try:
            limits.check_request(pictures=1, height=job.height, width=job.width,
                                 dtype_size=4 if job.dtype == "fp32" else 2, what=f"--size {job.width}x{job.height}")
        except limits.RequestTooLarge as error:
            made = f"the upscale of IMAGE makes {job.width}x{job.height} pixels: " if job.task == "upscale" else ""
            raise UsageError(f"{where}{made}{error}") from None
    return job


def _input_size(source: Source | None) -> tuple[int, int] | None:
    """(width, height) of an input picture: the file's, or the size an earlier step makes (latents: the size
    of the picture they stand for)."""
    if source is None:
        return None
    if _is_picture(source.picture):
        return source.picture.size
    if source.job is not None and source.job.width and source.job.height:
        return source.job.width, source.job.height
    return None


def _settle_upscale(job: Job, where: str, multiple: int | None) -> None:
    """The upscaled size, from the input picture and the upscaler (checked before anything loads)."""
    upscaler = models.upscaler(job.model_ref) if job.model_ref.folder is not None else None
    size = _input_size(job.image)
    if upscaler is None or size is None:
        return  # a hub id: run() records the size it makes
    kind, factor, multiple, minimum = upscaler
    width, height = size
    if width % multiple or height % multiple or min(width, height) < minimum:
        fit = [max(minimum, side // multiple * multiple) for side in size]
        raise UsageError(f"{where}IMAGE is {width}x{height} pixels, but the {kind} upscaler {job.model_ref.spec!r} "
                         f"takes pictures whose sides are multiples of {multiple}, at least {minimum} (e.g. "
                         f"{fit[0]}x{fit[1]})")
    made = (width * factor, height * factor)
    given = (job.width, job.height)
    if given != (None, None) and given != made:
        raise UsageError(f"{where}--size {job.width}x{job.height}: the {kind} upscaler makes {made[0]}x{made[1]} from a "
                         f"{width}x{height} picture; the size of an upscale follows from its input")
    job.width, job.height = made


def _check_steps(job: Job, where: str) -> None:
    decoder = models.scheduler_config(job.model_ref, "scheduler")
    models.check_steps(decoder, job.scheduler, job.steps, f"{where}--steps")
    if job.prior_ref is not None:
        prior = models.scheduler_config(job.prior_ref, "scheduler")
    else:  # a saved combined pipeline carries its prior's scheduler
        prior = models.scheduler_config(job.model_ref, "prior_scheduler")
    models.check_steps(prior, None, job.prior_steps, f"{where}--prior-steps")


def advice(job: Job) -> list[str]:
    """Warnings (not errors) about a job the model will not follow: the built-in model knows only its
    captions' words, at the size it was trained at."""
    if not (job.model or "").startswith(models.BUILTIN):
        return []
    from ..demo import unknown_words, vocabulary_text

    notes = []
    texts = [job.prompt] if job.prompt else [item for item in job.items or [] if isinstance(item, str)]
    unknown = list(dict.fromkeys(word for text in texts for word in unknown_words(text)))
    if unknown:
        shown = ", ".join(repr(word) for word in unknown[:8]) + (", ..." if len(unknown) > 8 else "")
        notes.append(f"the built-in model knows only {vocabulary_text()}; it does not know {shown}, so the "
                     f"picture will not follow the prompt")
    trained = models.folder_defaults(job.model_ref)
    size = (trained.get("width"), trained.get("height"))
    if None not in size and (job.width, job.height) != size:
        notes.append(f"the built-in model was trained on {size[0]}x{size[1]} pictures; at {job.width}x{job.height} "
                     f"the picture will not follow the prompt well")
    return notes


def _feed_previous(job: Job, previous: Source) -> None:
    default = {"image2image": "image", "inpaint": "image", "controlnet": "hint", "upscale": "image"}.get(job.task)
    if default and getattr(job, default) is None:
        setattr(job, default, previous)
    for name in ("image", "mask", "hint"):
        source = getattr(job, name)
        if source is not None and source.path == PREVIOUS:
            setattr(job, name, previous)
    if job.items:
        job.items = [previous if isinstance(i, Source) and i.path == PREVIOUS else i for i in job.items]


def _open(source: Source, where: str, grayscale: bool) -> None:
    if source.job is not None:
        if source.job.model_ref is None:  # a nested record (reproduce), not checked yet: check it now
            check(source.job, where=f"{where} (made by an earlier {source.job.task} step): ")
        return
    if source.path == PREVIOUS:
        raise UsageError(f"{where} is {PREVIOUS}, but there is no previous step")
    from ..image import ImageLoadError, load_image

    import PIL.Image

    from .. import limits

    is_url = source.path.startswith(("http://", "https://"))
    if not is_url:
        path = os.path.expanduser(source.path)
        if os.path.isdir(path):
            raise UsageError(f"{where} {shown(source.path)} is a folder, not a picture")
        if not os.path.isfile(path):
            raise UsageError(f"{where} {shown(source.path)}: no such file")
        # the absolute path, so `sfumato reproduce` works from any working directory
        source.path = os.path.abspath(path)
        _check_picture_size(source.path, where, limits.max_side())
    convert = (lambda picture: picture.convert("L")) if grayscale else None
    try:
        picture = load_image(source.path, convert_method=convert)
    except (ImageLoadError, ValueError, OSError, PIL.Image.DecompressionBombError) as error:
        raise UsageError(f"{where} {shown(source.path)}: {error}") from None
    except Exception as error:  # noqa: BLE001 - a damaged file can fail inside PIL's decoders in many ways
        raise UsageError(f"{where} {shown(source.path)} cannot be decoded as a picture ({type(error).__name__}: "
                         f"{error})") from None
    if max(picture.size) > limits.max_side():  # a URL's picture, known only once downloaded
        raise UsageError(f"{where} {shown(source.path)} is {picture.width}x{picture.height} pixels, larger than the "
                         f"limit of {limits.max_side()} per side (set SFUMATO_MAX_SIDE to raise it)")
    digest = picture_sha256(picture)
    if source.sha256 is not None and source.sha256 != digest:
        raise UsageError(f"{where} {source.path!r} has changed since the picture was made (its pixels' SHA-256 "
                         f"differs), so the same pixels cannot be made again")
    source.picture, source.sha256 = picture, digest


#: The option that lets a chain file name files outside the folder the command runs in.
ALLOW_OUTSIDE = "--allow-outside-paths"


def outside(path: str, folder: str) -> bool:
    """Whether ``path`` (relative ones from the working directory, symbolic links followed) leaves ``folder``."""
    real, base = os.path.realpath(os.path.expanduser(path)), os.path.realpath(folder)
    return os.path.commonpath([real, base]) != base


def check_inside(job: Job, folder: str, where: str = "") -> None:
    """Refuse input pictures of ``job`` (and of the earlier jobs nested in it) that are URLs or files outside
    ``folder``: a chain file, written by someone else, may read only what lies in the folder it runs in."""
    for name, source in job._sources():
        label = f"{where}{_flag(name.split('.')[0])}"
        if source.job is not None:
            check_inside(source.job, folder, f"{label} (made by an earlier step): ")
        elif source.path is not None and source.path != PREVIOUS:
            if source.path.lower().startswith(("http://", "https://")):
                raise UsageError(f"{label} {shown(source.path)} is a URL; a chain file may only read pictures in "
                                 f"the folder it runs in, {folder!r} (pass {ALLOW_OUTSIDE} if you trust this chain "
                                 f"file)")
            if outside(source.path, folder):
                raise UsageError(f"{label} {shown(source.path)} is outside the folder the chain runs in, {folder!r}; "
                                 f"a chain file may only read and write files inside it (pass {ALLOW_OUTSIDE} if "
                                 f"you trust this chain file)")


def _check_picture_size(path: str, where: str, side: int) -> None:
    """Refuse a picture file larger than ``side`` pixels per side from its header, before decoding it (a small
    PNG can hold a huge picture)."""
    import warnings

    import PIL.Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", PIL.Image.DecompressionBombWarning)
            with PIL.Image.open(path) as opened:
                width, height = opened.size
    except PIL.Image.DecompressionBombError as error:
        raise UsageError(f"{where} {shown(path)} is larger than the limit of {side} pixels per side (set "
                         f"SFUMATO_MAX_SIDE to raise it): {error}") from None
    except Exception:  # noqa: BLE001 - not a picture: load_image says so in its words
        return
    if max(width, height) > side:
        raise UsageError(f"{where} {shown(path)} is {width}x{height} pixels, larger than the limit of {side} per "
                         f"side (set SFUMATO_MAX_SIDE to raise it)")


def picture_sha256(picture) -> str:
    """SHA-256 of a picture's decoded pixels (mode and size included), independent of file encoding."""
    digest = hashlib.sha256(f"{picture.mode}:{picture.width}x{picture.height}:".encode())
    digest.update(picture.tobytes())
    return digest.hexdigest()


# ---------------------------------------------------------------------------------------------- running


def run(job: Job, loader: models.Loader, label: str = "", quiet: bool = False):
    """Make the job's picture (a PIL image; with ``output_type: latent`` the latents, a 1 x C x h x w tensor,
    for the next chain step); fills the job's defaults in place so its record is complete."""
    import torch

    from ..prompts import prompt_keywords

    for _, source in job._sources():
        if source.picture is None and source.job is not None:
            source.picture = run(source.job, loader, label=f"{label} (input)".strip(), quiet=quiet)
    if job.seed is None:
        raise ValueError("internal: a job runs only with a seed")
    pipes = loader.get(job.task, job.model_ref, job.prior_ref or job.controlnet_ref)
    # usually all set by settle(); a hub checkpoint's defaults are known only now
    if isinstance(pipes, tuple):
        _fill_defaults(job, pipes[1], pipes[0], _multiple(pipes[1]))
    else:
        _fill_defaults(job, pipes, None, _multiple(pipes))
    _check_strength(job)
    # one CPU generator per picture: the same noise on every device, and each picture of a
    # --num batch can be made again on its own from its recorded seed
    generator = torch.Generator("cpu").manual_seed(job.seed)
    suffix = f" {label}" if label else ""
    if job.task == "controlnet":
        pipes = (pipes[0], _controlnet_pipeline(job, pipes[1])) if isinstance(pipes, tuple) \
            else _controlnet_pipeline(job, pipes)
    if isinstance(pipes, tuple):  # controlnet (Kandinsky 2.2) and interpolate call the two stages themselves
        prior, decoder = pipes
        job.scheduler_class = loader.reset_schedulers(job.model_ref, job.prior_ref, prior, decoder, job.scheduler)
        prior.set_progress_bar_config(disable=quiet, desc=f"prior{suffix}", leave=False)
        decoder.set_progress_bar_config(disable=quiet, desc=f"denoising{suffix}")
        if job.task == "controlnet":
            embeds = prior(**prompt_keywords(prior, job.prompt, job.negative_prompt, weighted=job.weighting),
                           guidance_scale=job.prior_guidance, num_inference_steps=job.prior_steps, generator=generator)
            extra = {"hint": _hint_tensor(_control_picture(job, loader), decoder, job.width, job.height)}
            if job.image is not None:  # ControlNet image-to-image: the picture it starts from
                extra.update(image=job.image.picture, strength=job.strength)
        else:
            items = [item if isinstance(item, str) else item.picture for item in job.items]
            embeds = prior.interpolate(items, job.weights, num_inference_steps=job.prior_steps,
                                       guidance_scale=job.prior_guidance, generator=generator,
                                       negative_prompt=job.negative_prompt or "")
            extra = {}
        if "prompt" in inspect.signature(decoder.__call__).parameters:
            # Kandinsky 2.1 decoders read a prompt too; the guides give them none when the embeddings are mixed
            extra["prompt"] = job.prompt if job.task == "controlnet" else ""
        return decoder(image_embeds=embeds.image_embeds, negative_image_embeds=embeds.negative_image_embeds,
                       height=job.height, width=job.width, num_inference_steps=job.steps,
                       guidance_scale=job.guidance, generator=generator, **extra).images[0]
    pipe = pipes
    job.scheduler_class = loader.reset_schedulers(job.model_ref, job.prior_ref, getattr(pipe, "prior_pipe", None),
                                                  pipe, job.scheduler)
    pipe.set_progress_bar_config(disable=quiet, desc=f"denoising{suffix}")
    if hasattr(pipe, "prior_pipe"):
        pipe.prior_pipe.set_progress_bar_config(disable=quiet, desc=f"prior{suffix}", leave=False)
    arguments = dict(prompt=job.prompt, negative_prompt=job.negative_prompt, num_inference_steps=job.steps,
                     guidance_scale=job.guidance, height=job.height, width=job.width,
                     prior_guidance_scale=job.prior_guidance, prior_num_inference_steps=job.prior_steps,
                     generator=generator, denoising_end=job.denoising_end, denoising_start=job.denoising_start)
    if job.output_type == "latent":
        arguments["output_type"] = "latent"
    if job.task == "upscale":
        arguments.update(prompt=job.prompt or "", image=job.image.picture, noise_level=job.noise_level)
    if job.task in ("image2image", "inpaint"):
        arguments["image"] = job.image.picture
    if job.task == "image2image":
        arguments["strength"] = job.strength
        if "height" not in inspect.signature(pipe.__call__).parameters:
            # pipelines that make the picture's own size (Stable Diffusion, SDXL, Kandinsky 3): give it that size
            arguments["image"] = _sized(job.image.picture, job.width, job.height)
    if job.task == "inpaint":
        arguments["mask_image"] = job.mask.picture
    if job.task == "controlnet":  # Stable Diffusion: the control image has the picture's size
        control = _sized(_control_picture(job, loader).convert("RGB"), job.width, job.height)
        arguments.update(controlnet_conditioning_scale=job.controlnet_scale,
                         control_guidance_start=job.control_start, control_guidance_end=job.control_end)
        if job.image is None:
            arguments["image"] = control
        elif job.mask is None:  # ControlNet image-to-image: image is the picture it starts from, the hint control
            arguments.update(image=_sized(job.image.picture, job.width, job.height), control_image=control,
                             strength=job.strength)
        else:  # ControlNet inpainting: the pipeline sizes picture and mask to height x width, as plain inpainting
            arguments.update(image=job.image.picture, mask_image=job.mask.picture, control_image=control,
                             strength=job.strength)
    text = {"prompt": arguments.pop("prompt"), "negative_prompt": arguments.pop("negative_prompt")}
    arguments.update(prompt_keywords(pipe, **text, weighted=job.weighting) if "prompt" in _accepted(pipe, text) else text)
    output = pipe(**_accepted(pipe, arguments))
    if job.output_type == "latent":
        return output.images[:1]
    picture = output.images[0]
    flagged = getattr(output, "nsfw_content_detected", None)
    if flagged and flagged[0]:
        import logging

        logging.getLogger("sfumato").warning("the checkpoint's safety checker flagged the picture, so it is black "
                                             "(a Stable Diffusion folder's safety_checker decides this)")
    if job.task == "upscale":
        job.width, job.height = picture.size  # known before only for local folders
    if job.inpaints and job.keep_unmasked:
        from ..image import keep_unmasked

        picture = keep_unmasked(picture, job.image.picture, job.mask.picture)
    return picture


def _accepted(pipe: Any, arguments: dict[str, Any]) -> dict[str, Any]:
    """The arguments ``pipe`` takes: prior settings go to two-stage pipelines only, the schedule cut (unset
    where it is not used) to SDXL's, ``height`` / ``width`` to pipelines that name them."""
    parameters = inspect.signature(pipe.__call__).parameters
    return {k: v for k, v in arguments.items()
            if k in parameters and (v is not None or k not in ("denoising_end", "denoising_start", "noise_level",
                                                               "controlnet_conditioning_scale",
                                                               "control_guidance_start", "control_guidance_end"))}


def _is_picture(value: Any) -> bool:
    """Whether ``value`` is a PIL picture (not latents handed by an earlier step)."""
    import PIL.Image

    return isinstance(value, PIL.Image.Image)


def _sized(picture: Any, width: int | None, height: int | None) -> Any:
    """A PIL picture at ``width`` x ``height`` (resized only where it differs; latents pass unchanged)."""
    if not _is_picture(picture) or None in (width, height) or picture.size == (width, height):
        return picture
    import PIL.Image

    return picture.resize((width, height), resample=PIL.Image.Resampling.LANCZOS)


def _control_picture(job: Job, loader: models.Loader) -> Any:
    """The hint picture, or with --depth-model its depth map (near = bright, in all three channels)."""
    if job.depth_model is None:
        return job.hint.picture
    from ..image import estimate_depth

    return estimate_depth(job.hint.picture.convert("RGB"), loader.depth_estimator(job.depth_model))[0].convert("RGB")


def _fill_defaults(job: Job, decoder: Any, prior: Any, multiple: int) -> None:
    """Unset fields (the checkpoint's sfumato_defaults.json is read by check()): the input's size, then the
    pipeline's own defaults.

    ``decoder`` and ``prior`` are pipeline classes (before loading) or loaded
    pipelines; ``prior`` is ``None`` for combined pipelines, whose ``__call__``
    takes the prior's settings as ``prior_*`` keywords.
    """
    main = decoder.__call__
    if prior is not None:
        prior_call = prior.interpolate if job.task == "interpolate" else prior.__call__
        signatures = {"prior_steps": (prior_call, "num_inference_steps"),
                      "prior_guidance": (prior_call, "guidance_scale")}
    else:
        signatures = {"prior_steps": (main, "prior_num_inference_steps"),
                      "prior_guidance": (main, "prior_guidance_scale")}
    signatures.update({"steps": (main, "num_inference_steps"), "guidance": (main, "guidance_scale"),
                       "width": (main, "width"), "height": (main, "height")})
    if job.from_image and job.denoising_start is None:  # the cut, not the strength, says where to start
        signatures["strength"] = (main, "strength")
    if job.task == "upscale":
        signatures = {"steps": signatures["steps"], "guidance": signatures["guidance"],
                      "noise_level": (main, "noise_level")}
    if job.task == "controlnet":
        signatures.update(controlnet_scale=(main, "controlnet_conditioning_scale"),
                          control_start=(main, "control_guidance_start"), control_end=(main, "control_guidance_end"))
    if job.width is None and job.height is None and job.task != "upscale":
        # an earlier chain step's picture (not made yet, or latents) has the size that step records
        size = _input_size(job.image or job.hint)
        if size is not None:
            # a picture given as input sets the size, rounded down to what the model can make
            job.width, job.height = (max(multiple, side // multiple * multiple) for side in size)
    for name, (function, keyword) in signatures.items():
        if getattr(job, name) is None:
            parameter = inspect.signature(function).parameters.get(keyword)
            if parameter is not None and parameter.default is not inspect.Parameter.empty:
                setattr(job, name, parameter.default)
    if job.width is None or job.height is None:  # one side given: a square picture
        job.width = job.width or job.height
        job.height = job.height or job.width


def _check_strength(job: Job, where: str = "") -> None:
    if job.from_image and job.steps is not None and job.strength is not None \
            and job.denoising_start is None and int(job.steps * job.strength) < 1:
        # image-to-image runs only the last strength x steps steps; none would be left
        raise UsageError(f"{where}--strength {job.strength} with --steps {job.steps} leaves no denoising step to run; "
                         f"raise --strength or --steps so that strength x steps is at least 1")


def _pipeline_classes(job: Job, index: dict | None) -> tuple[Any, Any] | None:
    """(decoder, prior) pipeline classes ``run`` will call, known from model_index.json before loading.

    ``None`` when they cannot be known yet (a hub id not downloaded, a family
    the command line does not know); defaults are then filled after loading.
    """
    if index is None:
        return None
    import sfumato
    from .. import auto

    if index["_class_name"] in models.UPSCALERS:
        return getattr(sfumato, index["_class_name"]), None
    try:
        family, _ = auto.family_of(index["_class_name"])
    except ValueError:
        return None
    prior_index = models.read_index(job.prior_ref, "--prior") if job.prior_ref is not None else None
    prior = getattr(sfumato, prior_index["_class_name"], None) if prior_index else None
    if job.task == "controlnet":
        # a ControlNet decoder folder, or a Stable Diffusion folder given a ControlNetModel
        decoder = getattr(sfumato, auto.CONTROLNETS.get(family, {}).get(_controlnet_task(job), ""), None)
        if decoder is None or family in auto.CONTROLNET_COMPONENT_FAMILIES:
            return (decoder, None) if decoder is not None else None
        return (decoder, prior) if prior is not None else None
    combined = getattr(sfumato, auto.FAMILIES[family].get("text2image" if job.task == "interpolate" else job.task, ""),
                       None)
    if combined is None:
        return None
    if job.task == "interpolate":
        return (combined.decoder_class, prior) if prior is not None else None
    return combined, None


def _controlnet_task(job: Job) -> str:
    """The AutoPipeline task of a ControlNet job's pipeline: text-to-image, or image-to-image given an image, or
    inpainting given a mask too."""
    from .. import auto

    if job.image is None:
        return auto.TEXT2IMAGE
    return auto.INPAINT if job.mask is not None else auto.IMAGE2IMAGE


def _controlnet_pipeline(job: Job, pipe: Any) -> Any:
    """A loaded ControlNet pipeline (text-to-image) as the one ``job`` runs: itself, or given an image (and a mask)
    its image-to-image (inpainting) counterpart sharing the same loaded components."""
    if job.image is None:
        return pipe
    import sfumato
    from .. import auto

    family = auto.family_of(type(pipe).__name__)[0]
    return getattr(sfumato, auto.CONTROLNETS[family][_controlnet_task(job)]).from_pipe(pipe)


def _multiple(pipe: Any) -> int:
    target = getattr(pipe, "decoder_pipe", pipe)
    return target.size_multiple() if hasattr(target, "size_multiple") else 64


def _hint_tensor(picture, decoder: Any, width: int, height: int):
    """A hint picture as the N3HW tensor in [0, 1] that the ControlNet UNet takes, at the size it needs."""
    import numpy as np
    import PIL.Image
    import torch

    hint_height, hint_width = decoder.hint_size(height, width)
    size = (hint_width, hint_height)
    if picture.size != size:
        picture = picture.resize(size, resample=PIL.Image.Resampling.BICUBIC)
    array = np.asarray(picture.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(array).permute(2, 0, 1).unsqueeze(0)


def with_seed(job: Job, seed: int) -> Job:
    """A copy of ``job`` with another seed (inputs are shared, not copied)."""
    return replace(job, seed=seed)


# ---------------------------------------------------------------------------------------------- many jobs, one process


def plan(job: Job) -> list[tuple[str, models.ModelRef, models.ModelRef | None]]:
    """Every (task, model, companion) a job needs loaded, the jobs that make its input pictures first; the
    companion is the prior of a two-stage Kandinsky decoder, or a Stable Diffusion ControlNet."""
    needed = []
    for _, source in job._sources():
        if source.job is not None:
            needed.extend(plan(source.job))
    return needed + [(job.task, job.model_ref, job.prior_ref or job.controlnet_ref)]


def picture_record(job: Job, command: str, index: int = 0, count: int = 1) -> dict[str, Any]:
    """The parameters written into a picture's PNG."""
    record = job.to_record()
    record["command"] = command
    if count > 1:
        record.update(index=index, num=count)
    if job.device == "cpu":
        import torch

        # CPU kernels split sums by thread, so the last bit of a pixel can depend on the thread count
        record["cpu_threads"] = torch.get_num_threads()
    return record


@contextlib.contextmanager
def cpu_threads(count: int | None) -> Iterator[None]:
    """Run with ``count`` torch CPU threads (``None``: as is), restoring the count afterwards."""
    import torch

    before = torch.get_num_threads()
    if count:
        torch.set_num_threads(int(count))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def check_final(job: Job, where: str) -> None:
    """Refuse a job whose result would be latents where a picture must come out (a PNG to write)."""
    if job.output_type == "latent":
        raise UsageError(f"{where}output_type: latent hands latents to the next chain step, but this step's result "
                         f"is written as a picture; drop output_type (or add a step after it that takes the latents)")


def from_record(record: Any, where: str, device: str | None = None) -> Job:
    """A checked, settled job from a stored record (a PNG's parameters, a batch job sent to a worker),
    ready for :func:`run`; ``device`` overrides the recorded one (``None``: the record's, else the best here)."""
    job = Job.from_mapping(record, where, record=True)
    if job.seed is None:
        raise UsageError(f"{where} has no seed; the picture cannot be made again")
    check_final(job, f"{where}: ")
    check(job, where=f"{where}: ")
    return settle(job, where=f"{where}: ", override_device=device)


class Runner:
    """Makes pictures job after job on models loaded once: what a long-lived process keeps (a batch
    worker, a server).

    One :class:`models.Loader` per (dtype, device), so a checkpoint loads
    once per process whatever the order of the jobs; each picture still
    starts from fresh schedulers and its own seeded generator (see
    :func:`run`), so it comes out the same as when it is made alone.
    """

    def __init__(self, quiet: bool = True):
        self.quiet = quiet
        self._loaders: dict[tuple[str, str], models.Loader] = {}
        self._loaded: set[tuple] = set()

    def load(self, job: Job) -> models.Loader:
        """The loader for ``job``, with everything the job needs loaded (a no-op the second time)."""
        key = (job.dtype, job.device, job.fast)
        loader = self._loaders.get(key)
        if loader is None:
            loader = self._loaders[key] = models.Loader(job.dtype, job.device, self.quiet, fast=job.fast)
        needed = [step for step in plan(job) if (key, step[0], step[1].spec, step[2] and step[2].spec)
                  not in self._loaded]
        if needed:
            loader.preload(needed)
            self._loaded.update((key, task, model.spec, prior and prior.spec) for task, model, prior in needed)
        return loader

    def make(self, job: Job, command: str, threads: int | None = None, index: int = 0, count: int = 1):
        """(picture, its PNG record); on a CPU with ``threads`` torch threads, which the record states."""
        loader = self.load(job)
        with cpu_threads(threads if job.device == "cpu" else None):
            picture = run(job, loader, quiet=self.quiet)
            return picture, picture_record(job, command, index, count)
