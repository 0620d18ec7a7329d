"""Which checkpoint a command uses, what can be checked about it before loading, and loading it once.

A model is named on the command line as

* ``builtin`` or ``builtin:NAME`` - the built-in demo model shipped with sfumato
  (``NAME`` one of prior, decoder, inpaint, controlnet; plain ``builtin``
  picks the folder that suits the task). The environment variable
  ``SFUMATO_BUILTIN_MODEL`` points at another folder in the same layout,
  e.g. one made with the training script;
* a local checkpoint folder (one with ``model_index.json``);
* a model hub id such as ``kandinsky-community/kandinsky-2-2-decoder``.

Kandinsky 2.2 decoders need a prior. As on the hub, a decoder folder names
its prior in the front matter of its ``README.md`` (``prior: [../prior]``,
relative paths allowed); ``--prior`` overrides that.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import UsageError

BUILTIN = "builtin"
BUILTIN_FOLDERS = ("prior", "decoder", "inpaint", "controlnet")
#: Environment variable naming a folder laid out like the built-in model (prior/, decoder/, ...).
BUILTIN_ENV = "SFUMATO_BUILTIN_MODEL"
#: The built-in folder each task uses when no --model is given.
BUILTIN_FOR_TASK = {"text2image": "decoder", "image2image": "decoder", "interpolate": "decoder",
                    "inpaint": "inpaint", "controlnet": "controlnet"}
#: Per-folder generation defaults (steps, guidance, size) that suit a checkpoint, read before loading.
DEFAULTS_FILE = "sfumato_defaults.json"
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
    from .. import demo

    # where the demo package keeps its weights; used until it provides builtin_model()
    fallback = Path(demo.__file__).parent / "model" / name
    try:
        from ..demo import builtin_model
    except ImportError:
        return fallback
    try:
        return Path(builtin_model(name))
    except (OSError, ValueError):  # not installed: parse_model says so in the command line's words
        return fallback


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


def checkpoint_kind(class_name: str) -> str:
    """What a pipeline class is for: prior, inpaint, controlnet or image (text-to-image and image-to-image)."""
    lowered = class_name.lower()
    if "prior" in lowered and "combined" not in lowered:
        return "prior"
    if "inpaint" in lowered:
        return "inpaint"
    if "controlnet" in lowered:
        return "controlnet"
    return "image"


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
    kind = checkpoint_kind(index["_class_name"])
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
    if index is None:
        return True  # hub decoders of the two-stage families; decided again once downloaded
    if any(name.startswith("prior_") for name in index):
        return False  # a saved combined pipeline carries its prior
    return index["_class_name"].startswith("Kandinsky") and checkpoint_kind(index["_class_name"]) != "prior"


def prior_from_readme(ref: ModelRef) -> ModelRef | None:
    """The prior a decoder folder names in its README front matter, resolved like --prior."""
    if ref.folder is None:
        return None
    readme = ref.folder / "README.md"
    if not readme.is_file():
        return None
    source = _front_matter_value(readme.read_text(encoding="utf-8", errors="replace"), "prior")
    if not source:
        return None
    local = ref.folder / source
    if not Path(source).is_absolute() and local.is_dir():
        if ref.spec.startswith(BUILTIN + ":") and local.resolve().parent == ref.folder.resolve().parent:
            return parse_model(f"{BUILTIN}:{local.name}", "text2image", "--prior")
        return parse_model(str(local), "text2image", "--prior")
    return parse_model(source, "text2image", "--prior")


def _front_matter_value(text: str, key: str) -> str | None:
    """First value of ``key`` in a README's YAML front matter (a string or a list of strings)."""
    match = re.match(r"---\s*\n(.*?)\n---\s*(\n|$)", text, re.S)
    if not match:
        return None
    try:
        import yaml  # huggingface_hub depends on PyYAML, so it is normally there

        data = yaml.safe_load(match.group(1)) or {}
        value = data.get(key) if isinstance(data, dict) else None
    except ImportError:
        value = _simple_yaml_list(match.group(1), key)
    except Exception:  # a broken model card: behave as if it named nothing
        return None
    if isinstance(value, list):
        value = value[0] if value else None
    return str(value) if value else None


def _simple_yaml_list(block: str, key: str) -> list[str] | str | None:
    """Enough YAML for ``key: value`` and ``key:\\n- value`` when PyYAML is missing."""
    lines = block.splitlines()
    for number, line in enumerate(lines):
        if line.startswith(f"{key}:"):
            rest = line[len(key) + 1:].strip()
            if rest:
                return rest.strip("'\"")
            items = []
            for item in lines[number + 1:]:
                if not item.lstrip().startswith("-"):
                    break
                items.append(item.lstrip()[1:].strip().strip("'\""))
            return items
    return None


def folder_defaults(ref: ModelRef) -> dict[str, Any]:
    """Generation defaults the checkpoint ships in ``sfumato_defaults.json`` (job field names)."""
    if ref.folder is None or not (ref.folder / DEFAULTS_FILE).is_file():
        return {}
    try:
        data = json.loads((ref.folder / DEFAULTS_FILE).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise UsageError(f"cannot read {str(ref.folder / DEFAULTS_FILE)!r}: {error}") from None
    return {_DEFAULT_FIELDS[k]: v for k, v in data.items() if k in _DEFAULT_FIELDS} if isinstance(data, dict) else {}


def size_multiple(ref: ModelRef) -> int | None:
    """What heights and widths must be multiples of, from the MoVQ and UNet configs (``None``: unknown).

    The same rule as ``KandinskyV22Decoder.size_multiple``, read from config
    files so a bad --size is refused before gigabytes of weights load.
    """
    if ref.folder is None:
        return None
    try:
        movq = json.loads((ref.folder / "movq" / "config.json").read_text(encoding="utf-8"))
        unet = json.loads((ref.folder / "unet" / "config.json").read_text(encoding="utf-8"))
        scale = 2 ** (len(movq["block_out_channels"]) - 1)
        unet_factor = 2 ** (len(unet["block_out_channels"]) - 1)
    except (OSError, KeyError, TypeError, json.JSONDecodeError):
        return None
    return math.lcm(scale * scale, scale * unet_factor)


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
        if prior_index is not None and checkpoint_kind(prior_index["_class_name"]) != "prior":
            raise UsageError(f"--prior {explicit!r} is not a prior checkpoint ({prior_index['_class_name']})")
        return ref
    if not needs_prior(index):
        return None
    return prior_from_readme(model)
