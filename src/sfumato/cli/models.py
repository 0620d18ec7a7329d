"""Which checkpoint a command uses, what can be checked about it before loading, and loading it once.

A model is named on the command line as

* ``builtin`` or ``builtin:NAME`` - the built-in demo model shipped with sfumato
  (``NAME`` one of prior, decoder, inpaint, controlnet; plain ``builtin``
  picks the folder that suits the task). The environment variable
  ``SFUMATO_BUILTIN_MODEL`` points at another folder in the same layout,
  e.g. one made with the training script;
* a local checkpoint folder (one with ``model_index.json``);
* a model hub id such as ``kandinsky-community/kandinsky-2-2-decoder``.

Kandinsky 2.1 and 2.2 decoders need a prior. As on the hub, a decoder folder
names its prior in the front matter of its ``README.md`` (``prior: [../prior]``,
relative paths allowed); ``--prior`` overrides that.

What a checkpoint is (its family and task, its size multiple, its prior, its
schedulers' step limits) is asked of the library, from the folder's JSON files,
before any weights load.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from ..demo import BUILTIN_MODELS as BUILTIN_FOLDERS
from ..demo import DEFAULTS_FILE  # per-folder generation defaults (steps, guidance, size), read before loading
from .errors import UsageError

BUILTIN = "builtin"
#: The model families the command line runs (``sfumato.auto``'s names: Kandinsky 2.1 and 2.2).
FAMILIES = ("kandinsky", "kandinsky22")
#: Environment variable naming a folder laid out like the built-in model (prior/, decoder/, ...).
BUILTIN_ENV = "SFUMATO_BUILTIN_MODEL"
#: The built-in folder each task uses when no --model is given.
BUILTIN_FOR_TASK = {"text2image": "decoder", "image2image": "decoder", "interpolate": "decoder",
                    "inpaint": "inpaint", "controlnet": "controlnet"}
# field in sfumato_defaults.json (the pipelines' keyword names) -> job field
_DEFAULT_FIELDS = {"num_inference_steps": "steps", "guidance_scale": "guidance",
                   "prior_num_inference_steps": "prior_steps", "prior_guidance_scale": "prior_guidance",
                   "height": "height", "width": "width", "strength": "strength"}

#: Short scheduler names for --scheduler; full class names are accepted too.
SCHEDULERS = {
    "ddim": "DDIMScheduler",
    "ddpm": "DDPMScheduler",
    "dpm": "DPMSolverMultistepScheduler",
    "euler": "EulerDiscreteScheduler",
    "euler-a": "EulerAncestralDiscreteScheduler",
    "lms": "LMSDiscreteScheduler",
    "pndm": "PNDMScheduler",
}

DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}

_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


# answers about checkpoint files remembered while many jobs are checked (see remembering_checks)
_REMEMBERED: dict | None = None


@contextlib.contextmanager
def remembering_checks() -> Iterator[None]:
    """Within this, what the checks learn from a checkpoint's files (its index, prior, defaults, step
    limits) is read once: a batch of ten thousand jobs on one model checks the model once, not ten
    thousand times. Outside it every check reads the files afresh (a long-lived process sees changes)."""
    global _REMEMBERED
    outer = _REMEMBERED
    _REMEMBERED = {} if outer is None else outer
    try:
        yield
    finally:
        _REMEMBERED = outer


def _remembered(key: Callable[..., Any]):
    """Remember a check's answer under ``key(*arguments)`` inside :func:`remembering_checks`; errors are
    not remembered (their messages name the job)."""
    def decorate(function):
        @functools.wraps(function)
        def wrapper(*args, **kwargs):
            if _REMEMBERED is None:
                return function(*args, **kwargs)
            name = (function.__name__, key(*args, **kwargs))
            if name not in _REMEMBERED:
                _REMEMBERED[name] = function(*args, **kwargs)
            return _REMEMBERED[name]
        return wrapper
    return decorate


def scheduler_class_name(name: str) -> str:
    """The scheduler class for a --scheduler value (short name or class name)."""
    key = name.strip()
    if key.lower() in SCHEDULERS:
        return SCHEDULERS[key.lower()]
    if key in SCHEDULERS.values():
        return key
    raise UsageError(f"--scheduler must be one of {', '.join(SCHEDULERS)} (or a scheduler class name), got {name!r}")


# ---------------------------------------------------------------------------------------------- references


@dataclass(frozen=True)
class ModelRef:
    """A checkpoint as the user named it (``spec``, what PNGs record) and where it is."""

    spec: str
    source: str  # what from_pretrained receives: a folder path or a hub id
    folder: Path | None  # the local folder, None for a hub id (not downloaded yet)

    @property
    def label(self) -> str:
        return self.spec if self.folder is None or self.spec.startswith(BUILTIN) else self.folder.name


def builtin_folder(name: str) -> Path:
    """Folder ``name`` of the built-in model (``SFUMATO_BUILTIN_MODEL`` wins over the installed one)."""
    override = os.environ.get(BUILTIN_ENV)
    if override:
        return Path(override).expanduser() / name
    from ..demo import builtin_model

    try:
        return Path(builtin_model(name))
    except (OSError, ValueError):  # not installed: parse_model says so in the command line's words
        from .. import demo

        return Path(demo.__file__).parent / "model" / name


def parse_model(value: str | None, task: str, argument: str = "--model") -> ModelRef:
    """Resolve a --model value (``None``: the built-in model) for ``task``; nothing is loaded."""
    if value is None or value == BUILTIN or value.startswith(BUILTIN + ":"):
        name = BUILTIN_FOR_TASK[task] if value in (None, BUILTIN) else value.split(":", 1)[1]
        if name not in BUILTIN_FOLDERS:
            raise UsageError(f"{argument} {value!r} names no built-in folder; "
                             f"use builtin:{'|builtin:'.join(BUILTIN_FOLDERS)}")
        folder = builtin_folder(name)
        if not (folder / "model_index.json").is_file():
            where = f"${BUILTIN_ENV}" if os.environ.get(BUILTIN_ENV) else "the sfumato package"
            raise UsageError(f"the built-in model is not installed: {str(folder)!r} (from {where}) has no "
                             f"model_index.json; train it or pass {argument} FOLDER")
        return ModelRef(spec=f"{BUILTIN}:{name}", source=str(folder), folder=folder)
    path = Path(value).expanduser()
    if path.is_dir():
        if not (path / "model_index.json").is_file():
            raise UsageError(f"{argument} {value!r} is not a checkpoint folder: it has no model_index.json")
        folder = path.resolve()
        # the absolute path, so `sfumato reproduce` works from any working directory
        return ModelRef(spec=str(folder), source=str(folder), folder=folder)
    if path.exists():
        raise UsageError(f"{argument} {value!r} is a file; pass the checkpoint folder (the one with "
                         f"model_index.json)")
    if _HUB_ID.fullmatch(value) and not value.startswith((".", "~")):
        return ModelRef(spec=value, source=value, folder=None)
    raise UsageError(f"{argument} {value!r}: no such folder, and it is not a model hub id like 'org/name'")


# ---------------------------------------------------------------------------------------------- checks


@_remembered(lambda ref, argument=None: ref)
def read_index(ref: ModelRef, argument: str = "--model") -> dict[str, Any] | None:
    """The checkpoint's model_index.json (``None`` for a hub id: it is read when loading)."""
    if ref.folder is None:
        return None
    path = ref.folder / "model_index.json"
    try:
        index = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise UsageError(f"{argument} {ref.spec!r}: cannot read {str(path)!r}: {error}") from None
    if not isinstance(index, dict) or not isinstance(index.get("_class_name"), str):
        raise UsageError(f"{argument} {ref.spec!r}: {str(path)!r} has no _class_name naming its pipeline")
    return index


def checkpoint_kind(index: dict[str, Any], ref: ModelRef, argument: str = "--model") -> str:
    """What a checkpoint's pipeline is for, as the library's tables say: prior, inpaint, controlnet or
    image (text-to-image and image-to-image: one decoder does both)."""
    from .. import auto

    try:
        family, _, task = auto.describe(index["_class_name"])
    except ValueError:
        family = task = None
    if family not in FAMILIES:
        raise UsageError(f"{argument} {ref.spec!r} holds a {index['_class_name']}, a pipeline the command line "
                         f"cannot run (it runs Kandinsky 2.1 and 2.2 checkpoints)")
    return "image" if task in (auto.TEXT2IMAGE, auto.IMAGE2IMAGE) else task


# task -> the checkpoint kind it needs, and the command that suits each other kind
_TASK_KIND = {"text2image": "image", "image2image": "image", "interpolate": "image", "inpaint": "inpaint",
              "controlnet": "controlnet"}
_COMMAND_FOR_KIND = {"image": "`sfumato generate`, `img2img` or `interpolate`", "inpaint": "`sfumato inpaint`",
                     "controlnet": "`sfumato controlnet`"}
_KIND_NAME = {"image": "text-to-image", "inpaint": "inpainting", "controlnet": "ControlNet"}


def check_task(ref: ModelRef, task: str, argument: str = "--model") -> dict[str, Any] | None:
    """Refuse a checkpoint that cannot do ``task`` (e.g. an inpainting UNet for text-to-image)."""
    index = read_index(ref, argument)
    if index is None:
        return None
    kind = checkpoint_kind(index, ref, argument)
    if kind == "prior":
        raise UsageError(f"{argument} {ref.spec!r} is a prior ({index['_class_name']}); pass the decoder folder "
                         f"as --model (and this one as --prior)")
    wanted = _TASK_KIND[task]
    if kind != wanted:
        raise UsageError(f"{argument} {ref.spec!r} is {_a(_KIND_NAME[kind])} checkpoint ({index['_class_name']}), "
                         f"but {task} needs {_a(_KIND_NAME[wanted])} one; use it with {_COMMAND_FOR_KIND[kind]}")
    return index


def _a(noun: str) -> str:
    return f"{'an' if noun[0].lower() in 'aeiou' else 'a'} {noun}"


def needs_prior(index: dict[str, Any] | None) -> bool:
    """Whether the checkpoint is a decoder that takes image embeddings from a separate prior."""
    from .. import auto

    if index is None:
        return True  # hub decoders of the two-stage families; decided again once downloaded
    if any(name.startswith("prior_") for name in index):
        return False  # a saved combined pipeline carries its prior
    try:
        return auto.family_of(index["_class_name"])[1]
    except ValueError:  # a prior, or a class no family knows (refused by check_task)
        return False


@_remembered(lambda ref: ref)
def prior_from_readme(ref: ModelRef) -> ModelRef | None:
    """The prior a decoder folder's model card names (the library reads it), resolved like --prior."""
    if ref.folder is None:
        return None
    from ..checkpoint.errors import CheckpointError
    from ..checkpoint.folders import connected_pipeline

    try:
        source = connected_pipeline(ref.folder, "prior")
    except CheckpointError as error:  # a broken model card
        raise UsageError(f"--model {ref.spec!r}: {error}") from None
    if source is None:
        return None
    if isinstance(source, Path):  # a folder beside the decoder: the built-in model records it by name
        if ref.spec.startswith(BUILTIN + ":") and source.resolve().parent == ref.folder.resolve().parent:
            return parse_model(f"{BUILTIN}:{source.name}", "text2image", "--prior")
        return parse_model(str(source), "text2image", "--prior")
    return parse_model(source, "text2image", "--prior")


@_remembered(lambda ref: ref)
def folder_defaults(ref: ModelRef) -> dict[str, Any]:
    """Generation defaults the checkpoint ships in ``sfumato_defaults.json`` (job field names)."""
    if ref.folder is None:
        return {}
    from ..demo import generation_defaults

    try:
        data = generation_defaults(ref.folder)
    except (OSError, ValueError) as error:
        raise UsageError(f"cannot read {str(ref.folder / DEFAULTS_FILE)!r}: {error}") from None
    return {_DEFAULT_FIELDS[k]: v for k, v in data.items() if k in _DEFAULT_FIELDS}


@_remembered(lambda ref: ref)
def size_multiple(ref: ModelRef) -> int | None:
    """What heights and widths must be multiples of, asked of the library from the MoVQ and UNet configs
    (no weights are read); ``None`` when unknown (a hub id, a checkpoint without a MoVQ)."""
    if ref.folder is None:
        return None
    try:
        movq = json.loads((ref.folder / "movq" / "config.json").read_text(encoding="utf-8"))
        unet = json.loads((ref.folder / "unet" / "config.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    from ..pipelines.sizes import movq_size_multiple

    try:
        return movq_size_multiple(movq, unet)
    except (KeyError, TypeError):
        return None


@_remembered(lambda ref, subfolder: (ref, subfolder))
def scheduler_config(ref: ModelRef | None, subfolder: str) -> dict[str, Any] | None:
    """A checkpoint's scheduler config (``None`` when it is not on disk yet)."""
    if ref is None or ref.folder is None:
        return None
    path = ref.folder / subfolder / "scheduler_config.json"
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    return config if isinstance(config, dict) else None


@_remembered(lambda config, class_name, steps, flag: (json.dumps(config, sort_keys=True, default=str), class_name, steps))
def check_steps(config: dict[str, Any] | None, class_name: str | None, steps: int | None, flag: str) -> None:
    """Refuse a step count the scheduler cannot run, by asking a fresh one built from the checkpoint's config.

    The schedulers know their own limits (UnCLIP needs at least 2 steps, PNDM
    with Runge-Kutta warm-up 4, none more than it was trained on); asking
    them before loading turns a failure after minutes into one at once.
    """
    if config is None or steps is None:
        return
    from .. import schedulers

    klass = getattr(schedulers, class_name or str(config.get("_class_name")), None)
    if klass is None:
        return
    try:
        klass.from_config(config).set_timesteps(steps)
    except ValueError as error:
        raise UsageError(f"{flag} {steps}: {error}") from None


# ---------------------------------------------------------------------------------------------- loading


class Loader:
    """Loads checkpoints once per command and hands out pipelines for each task.

    A chain that runs text-to-image and then image-to-image on the same
    folder loads it once (the second pipeline shares the first one's
    components through ``from_pipe``), and decoders that name the same prior
    share one loaded prior.
    """

    def __init__(self, dtype: str, device: str, quiet: bool):
        self.dtype_name = dtype
        self.device = device
        self.quiet = quiet
        self._priors: dict[str, Any] = {}
        self._pipelines: dict[str, Any] = {}  # model spec -> the first pipeline loaded from it
        # spec -> the scheduler the checkpoint came with; never run itself, only copied (see reset_schedulers)
        self._schedulers: dict[str, Any] = {}
        self._bar = None

    # -- progress

    def preload(self, plan: list[tuple[str, ModelRef, ModelRef | None]]) -> None:
        """Load every (task, model, prior) of a command up front, under one progress bar.

        Loading first means a broken checkpoint fails before any picture is made.
        """
        from tqdm.auto import tqdm

        from . import quiet_transformers

        quiet_transformers()
        folders: list[str] = []
        for task, model, prior in plan:
            for ref in ([prior] if prior else []) + [model]:
                if ref.spec not in folders and ref.spec not in self._priors and ref.spec not in self._pipelines:
                    folders.append(ref.spec)
        self._bar = tqdm(total=len(folders), desc="loading model", unit="folder", disable=self.quiet)
        try:
            for task, model, prior in plan:
                self.get(task, model, prior)
        finally:
            self._bar.close()
            self._bar = None

    def _loading(self, ref: ModelRef) -> None:
        if self._bar is not None:
            self._bar.set_postfix_str(ref.label, refresh=True)

    def _loaded(self) -> None:
        if self._bar is not None:
            self._bar.update(1)

    # -- pipelines

    @property
    def torch_dtype(self):
        import torch

        return getattr(torch, DTYPES[self.dtype_name])

    def _place(self, pipe: Any) -> Any:
        pipe.to(self.device)
        # jobs.run labels each picture's bars; until then they follow --quiet
        pipe.set_progress_bar_config(disable=self.quiet)
        return pipe

    def prior(self, ref: ModelRef) -> Any:
        """A loaded prior pipeline (shared by every decoder that names it)."""
        if ref.spec not in self._priors:
            from ..pipelines.base import DiffusionPipeline

            self._loading(ref)
            self._priors[ref.spec] = self._place(DiffusionPipeline.from_pretrained(ref.source,
                                                                                   torch_dtype=self.torch_dtype))
            self._schedulers[ref.spec] = self._priors[ref.spec].scheduler
            self._loaded()
        return self._priors[ref.spec]

    def get(self, task: str, model: ModelRef, prior: ModelRef | None) -> Any:
        """The pipeline(s) for ``task``: a combined pipeline, or ``(prior, decoder)`` for
        ``controlnet`` and ``interpolate``, which call the two stages themselves."""
        if task == "controlnet":
            return self.prior(_required_prior(model, prior)), self._decoder_only(model)
        if task == "interpolate":
            combined = self.get("text2image", model, prior)
            if not hasattr(combined, "prior_pipe"):
                raise UsageError(f"interpolate needs a two-stage (prior + decoder) checkpoint; "
                                 f"{model.spec!r} loads as {type(combined).__name__}")
            return combined.prior_pipe, combined.decoder_pipe
        from .. import auto

        pipeline_for_task = {"text2image": auto.AutoPipelineForText2Image,
                             "image2image": auto.AutoPipelineForImage2Image,
                             "inpaint": auto.AutoPipelineForInpainting}[task]
        first = self._pipelines.get(model.spec)
        if first is not None:
            return pipeline_for_task.from_pipe(first)
        overrides: dict[str, Any] = {}
        if prior is not None:
            # hand over the already loaded prior instead of loading the one the README names again
            overrides = {f"prior_{name}": c for name, c in self.prior(prior).components.items()}
        self._loading(model)
        pipe = self._place(pipeline_for_task.from_pretrained(model.source, torch_dtype=self.torch_dtype,
                                                             **overrides))
        self._loaded()
        self._pipelines[model.spec] = pipe
        self._schedulers[model.spec] = pipe.scheduler
        if hasattr(pipe, "prior_scheduler"):
            self._schedulers.setdefault(_prior_key(model, prior), pipe.prior_scheduler)
        return pipe

    def _decoder_only(self, model: ModelRef) -> Any:
        if model.spec not in self._pipelines:
            from ..pipelines.base import DiffusionPipeline

            self._loading(model)
            self._pipelines[model.spec] = self._place(DiffusionPipeline.from_pretrained(
                model.source, torch_dtype=self.torch_dtype))
            self._schedulers[model.spec] = self._pipelines[model.spec].scheduler
            self._loaded()
        return self._pipelines[model.spec]

    def reset_schedulers(self, model: ModelRef, prior_ref: ModelRef | None, prior: Any, decoder: Any,
                         scheduler: str | None) -> str:
        """Give ``decoder`` (and ``prior``) new schedulers built from the checkpoint's configs.

        Schedulers keep state from step to step, and pipelines made with
        ``from_pipe`` share them, so every picture starts from a fresh copy:
        a picture then comes out the same whether it was made first, tenth
        or alone by ``sfumato reproduce``. ``scheduler`` (a --scheduler name)
        swaps the decoder's class, as ``XScheduler.from_config(pipe.scheduler.config)``
        does in the guides. Returns the decoder scheduler's class name.
        """
        from .. import schedulers

        original = self._schedulers[model.spec]
        klass = getattr(schedulers, scheduler_class_name(scheduler)) if scheduler else type(original)
        decoder.scheduler = klass.from_config(original.config)
        if prior is not None:
            prior_original = self._schedulers.get(_prior_key(model, prior_ref), prior.scheduler)
            fresh = type(prior_original).from_config(prior_original.config)
            if hasattr(decoder, "prior_scheduler"):
                decoder.prior_scheduler = fresh  # a combined pipeline passes it on to its prior
            else:
                prior.scheduler = fresh
        return klass.__name__


def _prior_key(model: ModelRef, prior: ModelRef | None) -> str:
    # a prior loaded on its own is known by its spec; one inside a combined pipeline by the decoder's
    return prior.spec if prior is not None else f"{model.spec}#prior"


def _required_prior(model: ModelRef, prior: ModelRef | None) -> ModelRef:
    if prior is None:
        raise UsageError(f"{model.spec!r} needs a prior: its README.md names none; pass --prior FOLDER")
    return prior


def resolve_prior(model: ModelRef, index: dict[str, Any] | None, explicit: str | None) -> ModelRef | None:
    """The prior to pair with ``model``: --prior, else the one its README names, else none needed."""
    if explicit is not None:
        ref = parse_model(explicit, "text2image", "--prior")
        prior_index = read_index(ref, "--prior")
        if prior_index is not None and checkpoint_kind(prior_index, ref, "--prior") != "prior":
            raise UsageError(f"--prior {explicit!r} is not a prior checkpoint ({prior_index['_class_name']})")
        return ref
    if not needs_prior(index):
        return None
    return prior_from_readme(model)
