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

TASKS = ("text2image", "image2image", "inpaint", "controlnet", "interpolate")


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
        "AutoPipelineForText2Image": "text2image", "AutoPipelineForImage2Image": "image2image",
        "AutoPipelineForInpainting": "inpaint",
    }
    for family in models.FAMILIES:
        for table in (auto.FAMILIES, auto.DECODERS):
            names.update({name: task for task, name in table[family].items()})
        names.update({f"{name}.interpolate": "interpolate" for name in auto.PRIORS[family]})
        controlnet = auto.CONTROLNETS.get(family, {}).get(auto.TEXT2IMAGE)
        if controlnet:
            names[controlnet] = "controlnet"
    return names


TASK_NAMES = _task_names()

#: What a chain step or record may also call a field (the pipelines' keyword names, the CLI's flag names).
ALIASES = {
    "pipeline": "task", "negative": "negative_prompt", "num_inference_steps": "steps",
    "guidance_scale": "guidance", "prior_num_inference_steps": "prior_steps",
    "prior_guidance_scale": "prior_guidance", "mask_image": "mask", "images_and_prompts": "items",
}
#: Record keys that describe a picture but do not change it (ignored when a record is read back).
INFORMATIONAL = {"sfumato", "command", "index", "num", "scheduler_class", "input_sha256", "cpu_threads"}
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
    "controlnet": ("prompt", "hint"), "interpolate": ("items",),
}
_ONLY_FOR = {"strength": ("image2image",), "image": ("image2image", "inpaint"), "mask": ("inpaint",),
             "keep_unmasked": ("inpaint",),
             "hint": ("controlnet",), "items": ("interpolate",), "weights": ("interpolate",),
             "prompt": ("text2image", "image2image", "inpaint", "controlnet")}


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
    # filled by check() / settle() / run(), not recorded as such
    model_ref: models.ModelRef | None = field(default=None, repr=False)
    prior_ref: models.ModelRef | None = field(default=None, repr=False)
    index: dict | None = field(default=None, repr=False)  # the checkpoint's model_index.json
    scheduler_class: str | None = field(default=None, repr=False)

    # -------------------------------------------------------------- records

    def to_record(self, nested: bool = False) -> dict[str, Any]:
        """The JSON object stored in the PNG (``nested``: as the input of another job)."""
        from .. import __version__

        record: dict[str, Any] = {} if nested else {"sfumato": __version__}
        for name in ("task", "model", "prior", "prompt", "negative_prompt", "seed", "steps", "guidance",
                     "prior_steps", "prior_guidance", "strength", "width", "height", "scheduler",
                     "scheduler_class", "dtype", "device", "keep_unmasked"):
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
        known = {f.name for f in fields(cls) if f.name not in ("model_ref", "prior_ref", "index", "scheduler_class")}
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
                             f"interpolate, or a pipeline class name)")
        task = values["task"]
        if not isinstance(task, str) or task not in TASK_NAMES:
            raise UsageError(f"{where}: unknown task {shown(task)}; use one of {', '.join(TASKS)} or one of the "
                             f"pipeline classes {', '.join(k for k in TASK_NAMES if k[0].isupper())}")
        values["task"] = TASK_NAMES[task]
        if record and values["task"] == "inpaint":
            values.setdefault("keep_unmasked", False)  # a picture made before the option existed: it was off
        for name, value in (defaults or {}).items():
            # a chain-wide default (e.g. strength) applies to the steps it makes sense for
            if name not in values and values["task"] in _ONLY_FOR.get(name, TASKS):
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
    if job.keep_unmasked is not None and not isinstance(job.keep_unmasked, bool):
        raise UsageError(f"{where}keep_unmasked must be true or false, got {shown(job.keep_unmasked)}")
    if not isinstance(job.dtype, str) or job.dtype not in models.DTYPES:
        raise UsageError(f"{where}--dtype must be one of {', '.join(models.DTYPES)}, got {shown(job.dtype)}")
    if job.device is not None and not isinstance(job.device, str):
        raise UsageError(f"{where}--device must be a torch device such as cpu or cuda, got {shown(job.device)}")
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
    says ``$previous`` (and, by default, as the image of image-to-image and
    inpainting steps and the hint of ControlNet steps).
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
    if job.task == "inpaint" and job.keep_unmasked is None:
        job.keep_unmasked = True
    for name, value in models.folder_defaults(model_ref).items():
        if getattr(job, name) is None and (name != "strength" or job.task == "image2image"):
            setattr(job, name, value)
    # inputs: files exist and are pictures; earlier jobs are checked the same way
    for name, source in job._sources():
        _open(source, f"{where}{_flag(name.split('.')[0])}", grayscale=name == "mask")
    return job


def settle(job: Job, where: str = "", override_device: str | None = None) -> Job:
    """What only the library's classes can tell, still before any weights load: the device, the size
    multiple, the pipelines' own defaults, and the step counts the schedulers can run."""
    for name, source in job._sources():
        if source.job is not None:  # settling twice (a chain's earlier step) changes nothing
            settle(source.job, where=f"{where}{_flag(name.split('.')[0])} (made by an earlier {source.job.task} "
                                     f"step): ", override_device=override_device)
    job.device = resolve_device(override_device or job.device)
    multiple = models.size_multiple(job.model_ref)
    for name in ("width", "height"):
        value = getattr(job, name)
        if multiple and value is not None and value % multiple:
            lower = max(multiple, value // multiple * multiple)
            raise UsageError(f"{where}--size {job.width}x{job.height}: {name} {value} is not a multiple of "
                             f"{multiple}, which this model needs (e.g. {lower} or {lower + multiple})")
    classes = _pipeline_classes(job, job.index)
    if classes is not None:
        _fill_defaults(job, *classes, multiple=multiple or 64)
        _check_strength(job, where)
    _check_steps(job, where)
    if job.width and job.height:  # the library's bounds on a picture (size, memory), before it is loaded
        from .. import limits

        try:
            limits.check_request(pictures=1, height=job.height, width=job.width,
                                 dtype_size=4 if job.dtype == "fp32" else 2, what=f"--size {job.width}x{job.height}")
        except limits.RequestTooLarge as error:
            raise UsageError(f"{where}{error}") from None
    return job


def _check_steps(job: Job, where: str) -> None:
    decoder = models.scheduler_config(job.model_ref, "scheduler")
    scheduler = models.scheduler_class_name(job.scheduler) if job.scheduler else None
    models.check_steps(decoder, scheduler, job.steps, f"{where}--steps")
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
    default = {"image2image": "image", "inpaint": "image", "controlnet": "hint"}.get(job.task)
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
    """Make the job's picture (a PIL image); fills the job's defaults in place so its record is complete."""
    import torch

    for _, source in job._sources():
        if source.picture is None and source.job is not None:
            source.picture = run(source.job, loader, label=f"{label} (input)".strip(), quiet=quiet)
    if job.seed is None:
        raise ValueError("internal: a job runs only with a seed")
    pipes = loader.get(job.task, job.model_ref, job.prior_ref)
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
    if job.task in ("controlnet", "interpolate"):
        prior, decoder = pipes
        job.scheduler_class = loader.reset_schedulers(job.model_ref, job.prior_ref, prior, decoder, job.scheduler)
        prior.set_progress_bar_config(disable=quiet, desc=f"prior{suffix}", leave=False)
        decoder.set_progress_bar_config(disable=quiet, desc=f"denoising{suffix}")
        if job.task == "controlnet":
            embeds = prior(prompt=job.prompt, negative_prompt=job.negative_prompt, guidance_scale=job.prior_guidance,
                           num_inference_steps=job.prior_steps, generator=generator)
            extra = {"hint": _hint_tensor(job.hint.picture, decoder, job.width, job.height)}
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
                     generator=generator)
    if job.task in ("image2image", "inpaint"):
        arguments["image"] = job.image.picture
    if job.task == "image2image":
        arguments["strength"] = job.strength
    if job.task == "inpaint":
        arguments["mask_image"] = job.mask.picture
    picture = pipe(**_accepted(pipe, arguments)).images[0]
    if job.task == "inpaint" and job.keep_unmasked:
        from ..image import keep_unmasked

        picture = keep_unmasked(picture, job.image.picture, job.mask.picture)
    return picture


def _accepted(pipe: Any, arguments: dict[str, Any]) -> dict[str, Any]:
    """Drop prior settings a single-stage pipeline (e.g. Stable Diffusion) does not take."""
    parameters = inspect.signature(pipe.__call__).parameters
    return {k: v for k, v in arguments.items() if k in parameters or not k.startswith("prior_")}


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
    if job.task == "image2image":
        signatures["strength"] = (main, "strength")
    if job.width is None and job.height is None:
        given = job.image or job.hint
        size = None
        if given is not None and given.picture is not None:
            size = given.picture.size
        elif given is not None and given.job is not None and given.job.width and given.job.height:
            size = (given.job.width, given.job.height)  # an earlier chain step's picture, not made yet
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
    if job.task == "image2image" and job.steps is not None and job.strength is not None \
            and int(job.steps * job.strength) < 1:
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

    try:
        family, _ = auto.family_of(index["_class_name"])
    except ValueError:
        return None
    prior_index = models.read_index(job.prior_ref, "--prior") if job.prior_ref is not None else None
    prior = getattr(sfumato, prior_index["_class_name"], None) if prior_index else None
    if job.task == "controlnet":
        decoder = getattr(sfumato, index["_class_name"], None)
        return (decoder, prior) if decoder is not None and prior is not None else None
    combined = getattr(sfumato, auto.FAMILIES[family].get("text2image" if job.task == "interpolate" else job.task, ""),
                       None)
    if combined is None:
        return None
    if job.task == "interpolate":
        return (combined.decoder_class, prior) if prior is not None else None
    return combined, None


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
    """Every (task, model, prior) a job needs loaded, the jobs that make its input pictures first."""
    needed = []
    for _, source in job._sources():
        if source.job is not None:
            needed.extend(plan(source.job))
    return needed + [(job.task, job.model_ref, job.prior_ref)]


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


def from_record(record: Any, where: str, device: str | None = None) -> Job:
    """A checked, settled job from a stored record (a PNG's parameters, a batch job sent to a worker),
    ready for :func:`run`; ``device`` overrides the recorded one (``None``: the record's, else the best here)."""
    job = Job.from_mapping(record, where, record=True)
    if job.seed is None:
        raise UsageError(f"{where} has no seed; the picture cannot be made again")
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
        key = (job.dtype, job.device)
        loader = self._loaders.get(key)
        if loader is None:
            loader = self._loaders[key] = models.Loader(job.dtype, job.device, self.quiet)
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
