"""Which checkpoint a command uses, what can be checked about it before loading, and loading it once.

A model is named on the command line as

* ``builtin`` or ``builtin:NAME`` - the built-in demo model shipped with sfumato
  (``NAME`` one of prior, decoder, inpaint, controlnet; plain ``builtin``
  picks the folder that suits the task). The environment variable
  ``SFUMATO_BUILTIN_MODEL`` points at another folder in the same layout,
  e.g. one made with the training script;
* a local checkpoint folder (one with ``model_index.json``);
* a model hub id such as ``kandinsky-community/kandinsky-2-2-decoder``.

The command line runs the families of ``sfumato.auto`` (Kandinsky 2.1, 2.2
and 3, Stable Diffusion 1.x / 2.x, SDXL base, refiner and inpainting) and the
Stable Diffusion x2 latent and x4 upscalers; a Stable Diffusion ControlNet is
a ``ControlNetModel`` folder (``config.json``, no ``model_index.json``) named
by ``--controlnet`` beside the Stable Diffusion ``--model``.

Kandinsky 2.1 and 2.2 decoders need a prior. As on the hub, a decoder folder
names its prior in the front matter of its ``README.md`` (``prior: [../prior]``,
relative paths allowed); ``--prior`` overrides that.

What a checkpoint is (its family and the tasks it can do, its size multiple,
its default size, its latent space, its prior, its schedulers' step limits) is
asked of the library, from the folder's JSON files, before any weights load.
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
#: The model families the command line runs (``sfumato.auto``'s names).
FAMILIES = ("kandinsky", "kandinsky22", "kandinsky3", "stable-diffusion", "stable-diffusion-xl")
#: The upscaler pipelines the command line runs (``sfumato upscale``), and what they are.
UPSCALERS = {"StableDiffusionLatentUpscalePipeline": "x2", "StableDiffusionUpscalePipeline": "x4"}
#: Environment variable naming a folder laid out like the built-in model (prior/, decoder/, ...).
BUILTIN_ENV = "SFUMATO_BUILTIN_MODEL"
#: The built-in folder each task uses when no --model is given.
BUILTIN_FOR_TASK = {"text2image": "decoder", "image2image": "decoder", "interpolate": "decoder",
                    "inpaint": "inpaint", "controlnet": "controlnet"}  # the built-in model has no upscaler
# field in sfumato_defaults.json (the pipelines' keyword names) -> job field
_DEFAULT_FIELDS = {"num_inference_steps": "steps", "guidance_scale": "guidance",
                   "prior_num_inference_steps": "prior_steps", "prior_guidance_scale": "prior_guidance",
                   "height": "height", "width": "width", "strength": "strength"}

#: Short scheduler names for --scheduler; full class names are accepted too.
SCHEDULERS = {
    "ddim": "DDIMScheduler",
    "ddpm": "DDPMScheduler",
    "dpm": "DPMSolverMultistepScheduler",
    "dpm++-karras": "DPMSolverMultistepScheduler",
    "euler": "EulerDiscreteScheduler",
    "euler-a": "EulerAncestralDiscreteScheduler",
    "lms": "LMSDiscreteScheduler",
    "pndm": "PNDMScheduler",
}

#: Config values a short scheduler name sets on top of the checkpoint's (A1111's "DPM++ 2M Karras").
SCHEDULER_OPTIONS: dict[str, dict[str, Any]] = {
    "dpm++-karras": {"algorithm_type": "dpmsolver++", "solver_order": 2, "use_karras_sigmas": True},
}

#: Named sampler presets (``--preset``): the fields each sets where the command line and the
#: checkpoint's defaults leave them open. ``prior_steps`` applies to the two-stage Kandinsky models only.
PRESETS: dict[str, dict[str, Any]] = {
    "fast": {"scheduler": "dpm++-karras", "steps": 20, "prior_steps": 10},
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


def scheduler_options(name: str | None) -> dict[str, Any]:
    """The config values a --scheduler name sets besides the class (none for class names)."""
    return dict(SCHEDULER_OPTIONS.get(name.strip().lower(), {})) if name else {}


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
        if value in (None, BUILTIN) and task not in BUILTIN_FOR_TASK:
            raise UsageError(f"the built-in model has no {task} checkpoint; pass {argument} FOLDER (e.g. a Stable "
                             f"Diffusion x2 latent or x4 upscaler folder)")
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


@_remembered(lambda ref, subfolder: (ref, subfolder))
def component_config(ref: ModelRef | None, subfolder: str) -> dict[str, Any] | None:
    """``<subfolder>/config.json`` of a checkpoint folder (``None``: not on disk, or not readable JSON)."""
    if ref is None or ref.folder is None:
        return None
    try:
        config = json.loads((ref.folder / subfolder / "config.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return config if isinstance(config, dict) else None


def checkpoint_kind(index: dict[str, Any], ref: ModelRef, argument: str = "--model") -> str:
    """What a checkpoint's pipeline is for, as the library's tables (and the AutoPipelines) decide it.

    Kandinsky 2.1 / 2.2: prior, inpaint, controlnet or image (one decoder does text-to-image and
    image-to-image). Stable Diffusion and SDXL: ``stable-diffusion`` (a 4-channel UNet: text-to-image,
    image-to-image, the legacy inpainting path, ControlNet), ``inpaint`` (a 9-channel inpainting UNet) or,
    for SDXL, ``refiner`` (no first text encoder, aesthetic score: image-to-image and inpainting).
    Kandinsky 3: ``kandinsky3``. The upscalers: ``upscale``.
    """
    from .. import auto

    class_name = index["_class_name"]
    if class_name in UPSCALERS:
        return "upscale"
    try:
        family, _, task = auto.describe(class_name)
    except ValueError:
        family = task = None
    if family not in FAMILIES:
        raise UsageError(f"{argument} {ref.spec!r} holds a {class_name}, a pipeline the command line cannot run (it "
                         f"runs Kandinsky 2.1, 2.2 and 3, Stable Diffusion 1.x / 2.x and SDXL checkpoints, and the "
                         f"Stable Diffusion x2 and x4 upscalers)")
    if family in ("kandinsky", "kandinsky22"):
        return "image" if task in (auto.TEXT2IMAGE, auto.IMAGE2IMAGE) else task
    if family == "kandinsky3":
        return "kandinsky3"
    if task == auto.CONTROLNET:
        return "sd-controlnet"  # a saved Stable Diffusion ControlNet pipeline: it carries its ControlNetModel
    unet = component_config(ref, "unet") or {}
    vae = component_config(ref, "vae") or {}
    latent = vae.get("latent_channels", 4)
    if isinstance(unet.get("in_channels"), int) and unet["in_channels"] == 2 * latent + 1:
        return "inpaint"  # the UNet also reads the mask and the masked picture: it only inpaints
    if family == "stable-diffusion-xl" and (index.get("requires_aesthetics_score") is True
                                           or list(index.get("text_encoder") or [None])[0] is None):
        return "refiner"
    return "stable-diffusion"


# checkpoint kind -> the tasks it can do
KIND_TASKS = {"image": ("text2image", "image2image", "interpolate"), "inpaint": ("inpaint",),
              "controlnet": ("controlnet",), "prior": (),
              "stable-diffusion": ("text2image", "image2image", "inpaint", "controlnet"),
              "refiner": ("image2image", "inpaint"), "kandinsky3": ("text2image", "image2image"),
              "upscale": ("upscale",), "sd-controlnet": ("controlnet",)}
_COMMAND_FOR_TASK = {"text2image": "generate", "image2image": "img2img", "inpaint": "inpaint",
                     "controlnet": "controlnet", "interpolate": "interpolate", "upscale": "upscale"}
_KIND_NAME = {"image": "text-to-image", "inpaint": "inpainting", "controlnet": "ControlNet",
              "stable-diffusion": "Stable Diffusion text-to-image", "refiner": "SDXL refiner",
              "kandinsky3": "Kandinsky 3", "upscale": "upscaler", "sd-controlnet": "Stable Diffusion ControlNet"}
# what each task needs, in the words of a Kandinsky 2 kind (the messages the command line has always given)
_TASK_KIND = {"text2image": "image", "image2image": "image", "interpolate": "image", "inpaint": "inpaint",
              "controlnet": "controlnet"}
# why a kind cannot do a task, where that is not obvious
_WHY_NOT = {("refiner", "text2image"): "a refiner only refines pictures (it has no first text encoder and reads an "
                                       "aesthetic score)",
            ("kandinsky3", "inpaint"): "Kandinsky 3 has no inpainting pipeline",
            ("kandinsky3", "controlnet"): "Kandinsky 3 has no ControlNet pipeline",
            ("refiner", "controlnet"): "the SDXL refiner has no ControlNet pipeline in sfumato",
            ("stable-diffusion", "interpolate"): "interpolation mixes image embeddings, which only the two-stage "
                                                 "Kandinsky 2.1 and 2.2 checkpoints have"}


def check_task(ref: ModelRef, task: str, argument: str = "--model") -> dict[str, Any] | None:
    """Refuse a checkpoint that cannot do ``task`` (e.g. an inpainting UNet for text-to-image)."""
    index = read_index(ref, argument)
    if index is None:
        return None
    kind = checkpoint_kind(index, ref, argument)
    if kind == "prior":
        raise UsageError(f"{argument} {ref.spec!r} is a prior ({index['_class_name']}); pass the decoder folder "
                         f"as --model (and this one as --prior)")
    if task in KIND_TASKS[kind]:
        return index
    commands = [f"`{'sfumato ' if i == 0 else ''}{_COMMAND_FOR_TASK[t]}`" for i, t in enumerate(KIND_TASKS[kind])]
    use = ", ".join(commands[:-1]) + f" or {commands[-1]}" if len(commands) > 1 else commands[0]
    if kind in ("image", "inpaint", "controlnet") and task in _TASK_KIND:
        wanted = _TASK_KIND[task]
        raise UsageError(f"{argument} {ref.spec!r} is {_a(_KIND_NAME[kind])} checkpoint ({index['_class_name']}), "
                         f"but {task} needs {_a(_KIND_NAME[wanted])} one; use it with {use}")
    why = _WHY_NOT.get((kind if kind != "inpaint" else "stable-diffusion", task))
    raise UsageError(f"{argument} {ref.spec!r} is {_a(_KIND_NAME[kind])} checkpoint ({index['_class_name']}), which "
                     f"cannot do {task}{f': {why}' if why else ''}; use it with {use}")


def _a(noun: str) -> str:
    return f"{'an' if noun[0].lower() in 'aeiou' or noun.startswith('SD') else 'a'} {noun}"


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
    (Kandinsky) or the VAE's (Stable Diffusion, SDXL); no weights are read. ``None`` when unknown (a hub id).

    For an upscaler this is the multiple of its input picture's sides (see :func:`upscaler`)."""
    from ..pipelines import sizes

    unet, movq, vae = (component_config(ref, name) for name in ("unet", "movq", "vae"))
    try:
        if movq is not None and unet is not None:
            return sizes.movq_size_multiple(movq, unet)
        index = read_index(ref) if ref.folder is not None else None
        if index is not None and index.get("_class_name") in UPSCALERS and vae is not None and unet is not None:
            return sizes.upscaler_sizes(UPSCALERS[index["_class_name"]], vae, unet)[1]
        if vae is not None:
            return sizes.vae_size_multiple(vae)
    except (KeyError, TypeError, ValueError, UsageError):
        return None
    return None


@_remembered(lambda ref: ref)
def default_size(ref: ModelRef) -> tuple[int, int] | None:
    """(width, height) a VAE-latent checkpoint (Stable Diffusion, SDXL) makes when none is given: its UNet's
    sample size in pixels, as the pipelines decide it; ``None`` for others (their pipelines' signatures say)."""
    from ..pipelines import sizes

    unet, vae = component_config(ref, "unet"), component_config(ref, "vae")
    if unet is None or vae is None or component_config(ref, "movq") is not None:
        return None
    try:
        height, width = sizes.vae_default_size(vae, unet)
    except (KeyError, TypeError, ValueError):
        return None
    return width, height


def upscaler(ref: ModelRef) -> tuple[str, int, int, int] | None:
    """(kind "x2" / "x4", factor, input multiple, input minimum) of an upscaler folder; ``None`` for other
    checkpoints."""
    from ..pipelines import sizes

    index = read_index(ref) if ref.folder is not None else None
    if index is None or index.get("_class_name") not in UPSCALERS:
        return None
    kind = UPSCALERS[index["_class_name"]]
    unet, vae = component_config(ref, "unet"), component_config(ref, "vae")
    try:
        factor, multiple, minimum = sizes.upscaler_sizes(kind, vae, unet)
    except (KeyError, TypeError, ValueError):
        factor, multiple, minimum = {"x2": 2, "x4": 4}[kind], 1, 1
    return kind, factor, multiple, minimum


#: The VAE config fields that decide its latent space: latents of one VAE mean the same to another only where
#: these agree.
LATENT_SPACE_FIELDS = ("latent_channels", "block_out_channels", "scaling_factor", "shift_factor", "latents_mean",
                       "latents_std")


def latent_space(ref: ModelRef) -> dict[str, Any] | None:
    """The fields that say what a checkpoint's latents mean (its VAE's), or ``None``: no VAE (Kandinsky's MoVQ,
    a hub id not downloaded), so latents cannot be handed to or from it."""
    if component_config(ref, "movq") is not None:
        return None
    vae = component_config(ref, "vae")
    if vae is None:
        return None
    space = {name: vae.get(name) for name in LATENT_SPACE_FIELDS}
    if isinstance(space["block_out_channels"], list):  # only the number of levels (the scale) matters
        space["block_out_channels"] = 2 ** (len(space["block_out_channels"]) - 1)
    return space


@dataclass(frozen=True)
class ComponentRef(ModelRef):
    """One model folder (``config.json`` and weights, no ``model_index.json``), e.g. a ``ControlNetModel``."""

    class_name: str = ""


def parse_component(value: Any, argument: str, class_names: tuple[str, ...]) -> ComponentRef:
    """Resolve a single-model folder (e.g. --controlnet) whose config names one of ``class_names``."""
    if not isinstance(value, str) or not value.strip():
        raise UsageError(f"{argument} must be a folder, got {value!r}")
    path = Path(value).expanduser()
    config_path = path / "config.json"
    if not path.is_dir():
        if _HUB_ID.fullmatch(value) and not value.startswith((".", "~")) and not path.exists():
            return ComponentRef(spec=value, source=value, folder=None, class_name=class_names[0])
        raise UsageError(f"{argument} {value!r}: no such folder (it must be a {' or '.join(class_names)} folder with "
                         f"config.json)")
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        hint = " (it is a pipeline folder; pass the model folder itself)" if (path / "model_index.json").is_file() \
            else ""
        raise UsageError(f"{argument} {value!r} is not a {' or '.join(class_names)} folder: it has no "
                         f"config.json{hint}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise UsageError(f"{argument} {value!r}: cannot read {str(config_path)!r}: {error}") from None
    class_name = config.get("_class_name") if isinstance(config, dict) else None
    if class_name not in class_names:
        raise UsageError(f"{argument} {value!r} holds a {class_name or 'model with no _class_name'}, but it must be a "
                         f"{' or '.join(class_names)} folder")
    folder = path.resolve()
    return ComponentRef(spec=str(folder), source=str(folder), folder=folder, class_name=class_name)


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


@_remembered(lambda config, scheduler_name, steps, flag: (json.dumps(config, sort_keys=True, default=str),
                                                          scheduler_name, steps))
def check_steps(config: dict[str, Any] | None, scheduler_name: str | None, steps: int | None, flag: str) -> None:
    """Refuse a step count the scheduler cannot run, by asking a fresh one built from the checkpoint's config.

    The schedulers know their own limits (UnCLIP needs at least 2 steps, PNDM
    with Runge-Kutta warm-up 4, none more than it was trained on); asking
    them before loading turns a failure after minutes into one at once.
    """
    if config is None or steps is None:
        return
    from .. import schedulers

    class_name = scheduler_class_name(scheduler_name) if scheduler_name else str(config.get("_class_name"))
    klass = getattr(schedulers, class_name, None)
    if klass is None:
        return
    try:
        klass.from_config(config, **scheduler_options(scheduler_name)).set_timesteps(steps)
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

    def __init__(self, dtype: str, device: str, quiet: bool, fast: bool = False):
        self.dtype_name = dtype
        self.device = device
        self.quiet = quiet
        self.fast = fast
        self._warned = False
        self._priors: dict[str, Any] = {}
        self._pipelines: dict[str, Any] = {}  # model spec -> the first pipeline loaded from it
        self._components: dict[str, Any] = {}  # single models (a ControlNetModel, a depth estimator) by spec
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

        if not self._warned and self.device.startswith("cpu") and not self.quiet:
            from ..fast import bf16_warning

            self._warned = True
            message = bf16_warning(self.dtype_name)
            if message:
                import sys

                print(f"sfumato: warning: {message}", file=sys.stderr, flush=True)

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
        if self.fast and self.device.startswith("cpu") and hasattr(pipe, "enable_fast_cpu"):
            pipe.enable_fast_cpu()  # what this CPU runs fastest (sfumato.fast.choose); a no-op elsewhere
        # jobs.run labels each picture's bars; until then they follow --quiet
        pipe.set_progress_bar_config(disable=self.quiet)
        return pipe

    def prior(self, ref: ModelRef) -> Any:
        """A loaded prior pipeline (shared by every decoder that names it)."""
        if ref.spec not in self._priors:
            from ..pipelines.base import DiffusionPipeline

            self._loading(ref)
            self._priors[ref.spec] = self._place(DiffusionPipeline.from_pretrained(
                ref.source, torch_dtype=self.torch_dtype, fast_start=True))
            self._schedulers[ref.spec] = self._priors[ref.spec].scheduler
            self._loaded()
        return self._priors[ref.spec]

    def get(self, task: str, model: ModelRef, prior: ModelRef | None) -> Any:
        """The pipeline(s) for ``task``: a combined pipeline, or ``(prior, decoder)`` for
        ``controlnet`` and ``interpolate``, which call the two stages themselves.

        For a Stable Diffusion ControlNet ``prior`` is the ``ControlNetModel`` (a :class:`ComponentRef`), and
        the pipeline is the Stable Diffusion one with it; ``upscale`` loads the upscaler folder as it is."""
        if task == "upscale":
            return self._decoder_only(model)
        if task == "controlnet" and isinstance(prior, ComponentRef):
            return self._controlled(model, prior)
        if task == "controlnet" and prior is None and model.folder is not None \
                and checkpoint_kind(read_index(model), model) == "sd-controlnet":
            return self.get("text2image", model, None)  # its own ControlNet: AutoPipelineForText2Image picks it
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
                                                             fast_start=True, **overrides))
        self._loaded()
        self._pipelines[model.spec] = pipe
        self._schedulers[model.spec] = pipe.scheduler
        if hasattr(pipe, "prior_scheduler"):
            self._schedulers.setdefault(_prior_key(model, prior), pipe.prior_scheduler)
        return pipe

    def _controlled(self, model: ModelRef, controlnet: "ComponentRef") -> Any:
        """The model's Stable Diffusion pipeline with the ControlNet ``controlnet`` (each loaded once)."""
        key = f"{model.spec}#controlnet={controlnet.spec}"
        if key not in self._pipelines:
            import sfumato

            from .. import auto

            if controlnet.spec not in self._components:
                self._loading(controlnet)
                self._components[controlnet.spec] = getattr(sfumato, controlnet.class_name).from_pretrained(
                    controlnet.source, torch_dtype=self.torch_dtype).to(self.device)
                self._loaded()
            base = self.get("text2image", model, None)
            pipe = auto.AutoPipelineForText2Image.from_pipe(base, controlnet=self._components[controlnet.spec])
            self._pipelines[key] = self._place(pipe)
        return self._pipelines[key]

    def depth_estimator(self, folder: str) -> Any:
        """The transformers depth-estimation pipeline of a local DPT (or similar) folder, loaded once."""
        if folder not in self._components:
            from ..image import load_depth_estimator
            from . import quiet_transformers

            quiet_transformers(now=True)
            self._components[folder] = load_depth_estimator(folder, device=self.device)
        return self._components[folder]

    def _decoder_only(self, model: ModelRef) -> Any:
        if model.spec not in self._pipelines:
            from ..pipelines.base import DiffusionPipeline

            self._loading(model)
            self._pipelines[model.spec] = self._place(DiffusionPipeline.from_pretrained(
                model.source, torch_dtype=self.torch_dtype, fast_start=True))
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
        decoder.scheduler = klass.from_config(original.config, **scheduler_options(scheduler))
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
