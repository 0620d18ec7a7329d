"""``DiffusionPipeline``: a named set of components that loads, saves and moves as one.

A pipeline folder is ``model_index.json`` (its class and, per component, the
``[library, class]`` that loads it) plus one subfolder per component. This
module reads and writes that layout; the families (Kandinsky, Stable
Diffusion) only declare their components and their ``__call__``.
"""

from __future__ import annotations

import contextvars
import inspect
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import torch
from torch import nn

from ..checkpoint import (
    CheckpointError,
    ConfigMixin,
    FrozenDict,
    ModelMixin,
    atomic_folder,
    dtype_for,
    parse_dtype,
    read_json,
    resolve_class,
    resolve_folder,
    split_hub_kwargs,
)
from ..checkpoint.config import FORMAT_VERSION, check_config_values, config_errors_name
from ..checkpoint.derived import mark_source
from ..checkpoint.dtypes import available_device
from ..checkpoint.folders import connected_pipeline
from ..checkpoint.weights import check_variant, shard_size_bytes
from ..checkpoint.registry import reference_library
from ..outputs import BaseOutput
from . import offload

logger = logging.getLogger("sfumato")

# folders whose model cards are being followed right now (to refuse cards that name each other)
_CONNECTING: contextvars.ContextVar[tuple[Path, ...]] = contextvars.ContextVar("connecting", default=())
# from_pretrained(fast_start=True) is loading: CLIP parts come from sfumato.models.clip (see load_component)
_FAST_START: contextvars.ContextVar[bool] = contextvars.ContextVar("fast_start", default=False)

# the files a pipeline needs from a hub snapshot (weights are filtered by variant)
_HUB_PATTERNS = ["model_index.json", "README.md", "*/*.json", "*/*.txt", "*/*.model", "*/*.tiktoken"]


@dataclass
class ImagePipelineOutput(BaseOutput):
    """What image pipelines return: ``images`` as a list of PIL images, an array or a tensor."""

    images: Any


class DiffusionPipeline(ConfigMixin):
    """Base of every pipeline: components, ``from_pretrained``, ``save_pretrained``, ``to``, offload."""

    config_name = "model_index.json"
    # order in which models run, for enable_model_cpu_offload
    model_cpu_offload_seq: str = ""
    _optional_components: list[str] = []
    _exclude_from_cpu_offload: list[str] = []
    _callback_tensor_inputs: list[str] = ["latents"]

    # ------------------------------------------------------------------ components

    def register_modules(self, **components: Any) -> None:
        """Attach components and record ``[library, class]`` for each in the pipeline config."""
        for name, component in components.items():
            self.register_to_config(**{name: _library_and_class(component)})
            object.__setattr__(self, name, component)

    def __setattr__(self, name: str, value: Any) -> None:
        # replacing a component (pipe.scheduler = ...) keeps model_index.json truthful
        config = self.__dict__.get("_internal_dict")
        if config is not None and name in config and isinstance(config[name], (list, tuple)):
            self.register_to_config(**{name: _library_and_class(value)})
        super().__setattr__(name, value)

    @classmethod
    def _component_names(cls) -> list[str]:
        params = inspect.signature(cls.__init__).parameters
        return [n for n, p in params.items() if n != "self" and p.kind is p.POSITIONAL_OR_KEYWORD
                and n not in cls._config_only_arguments()]

    @classmethod
    def _config_only_arguments(cls) -> set[str]:
        """``__init__`` arguments that are plain settings, not components (e.g. ``requires_safety_checker``)."""
        return set(getattr(cls, "_settings", ()))

    @property
    def components(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self._component_names() if hasattr(self, name)}

    def _modules(self) -> Iterable[tuple[str, nn.Module]]:
        for name, component in self.components.items():
            if isinstance(component, nn.Module):
                yield name, component

    @property
    def device(self) -> torch.device:
        for _, module in self._modules():
            return _module_device(module)
        return torch.device("cpu")

    @property
    def _execution_device(self) -> torch.device:
        return offload.execution_device(self) or self.device

    @property
    def dtype(self) -> torch.dtype:
        for _, module in self._modules():
            for tensor in module.parameters():
                if tensor.is_floating_point():
                    return tensor.dtype
        return torch.float32

    def to(self, *args: Any, **kwargs: Any) -> "DiffusionPipeline":
        """Move every model: ``pipe.to("cuda")``, ``pipe.to(torch.float16)``, ``pipe.to("cpu", torch.bfloat16)``."""
        device = kwargs.pop("device", None)
        dtype = kwargs.pop("dtype", None)
        kwargs.pop("silence_dtype_warnings", None)
        if kwargs:
            raise TypeError(f"to() got unexpected keyword arguments {sorted(kwargs)}; it takes device and dtype")
        for arg in args:
            if isinstance(arg, torch.dtype):
                dtype = arg
            elif isinstance(arg, (str, torch.device)):
                device = arg
            else:
                raise TypeError(f"to() takes a device and/or a dtype, got {arg!r}")
        dtype = parse_dtype(dtype, "dtype") if dtype is not None else None
        if device is not None:
            device = available_device(device)
            offload.disable(self)
        for _, module in self._modules():
            module.to(device=device, dtype=dtype)
        return self

    # ------------------------------------------------------------------ state of the last call

    _guidance_scale: float = 1.0
    _num_timesteps: int = 0

    @property
    def guidance_scale(self) -> float:
        return self._guidance_scale

    @property
    def do_classifier_free_guidance(self) -> bool:
        return self._guidance_scale > 1

    @property
    def num_timesteps(self) -> int:
        return self._num_timesteps

    # ------------------------------------------------------------------ progress

    def progress_bar(self, iterable=None, total=None):
        from tqdm.auto import tqdm

        config = dict(getattr(self, "_progress_bar_config", {}))
        if iterable is not None:
            return tqdm(iterable, **config)
        if total is not None:
            return tqdm(total=total, **config)
        raise ValueError("progress_bar needs iterable or total")

    def set_progress_bar_config(self, **kwargs: Any) -> None:
        self._progress_bar_config = kwargs

    # ------------------------------------------------------------------ optimizations

    def enable_model_cpu_offload(self, gpu_id: int | None = None, device: str | torch.device | None = None) -> None:
        """Keep each model on the accelerator only while it is the one running; a no-op without one."""
        offload.enable(self, gpu_id=gpu_id, device=device)

    def maybe_free_model_hooks(self) -> None:
        offload.release_all(self)

    def enable_xformers_memory_efficient_attention(self, attention_op: Any = None) -> None:
        """Accepted for compatibility: sfumato's attention is PyTorch SDPA, which already picks a
        memory-efficient kernel (flash / mem-efficient / math) for the device."""
        logger.info("sfumato uses torch scaled_dot_product_attention; xformers is not needed")

    def disable_xformers_memory_efficient_attention(self) -> None:
        pass

    def enable_attention_slicing(self, slice_size: Any = "auto") -> None:
        """Accepted for compatibility; SDPA already bounds attention memory."""

    def disable_attention_slicing(self) -> None:
        pass

    def enable_fast_cpu(self, **kwargs: Any) -> "DiffusionPipeline":
        """Fast CPU mode for this CPU (bf16 only with native bf16, channels_last, ...): ``sfumato.optimize(self)``.

        Keywords go to ``sfumato.fast.optimize``; ``sfumato.fast.disable(pipe)`` restores the parity mode.
        """
        from ..fast import optimize

        return optimize(self, **kwargs)

    def set_attn_processor(self, processor: Any) -> None:
        for _, module in self._modules():
            if hasattr(module, "set_attn_processor"):
                module.set_attn_processor(processor)

    # ------------------------------------------------------------------ loading

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs: Any) -> "DiffusionPipeline":
        """Load a pipeline folder (or hub id) written by sfumato or diffusers.

        Keyword arguments: ``torch_dtype`` (one dtype or ``{component: dtype, "default": dtype}``),
        ``variant``, ``use_safetensors``, and any component by name to use instead of loading it
        (``scheduler=DDIMScheduler(...)``, ``prior=None``).

        ``fast_start=True`` reads CLIP text and image encoders and CLIP tokenizers with sfumato's
        own classes (:mod:`sfumato.models.clip`: the same numbers bit for bit, in a fraction of
        transformers' import time) and loads a transformers image processor when it is first used;
        anything else, or a CLIP folder those classes cannot read exactly, loads as usual. The
        command line loads this way; the default gives transformers' objects, as the reference does.
        """
        fast_start = kwargs.pop("fast_start", None)
        if fast_start is not None and not isinstance(fast_start, bool):
            raise TypeError(f"fast_start must be True or False, got {fast_start!r}")
        token = _FAST_START.set(fast_start if fast_start is not None else _FAST_START.get())
        try:
            return cls._load_pretrained(pretrained_model_name_or_path, kwargs)
        finally:
            _FAST_START.reset(token)

    @classmethod
    def _load_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike,
                         kwargs: dict[str, Any]) -> "DiffusionPipeline":
        hub_kwargs = split_hub_kwargs(kwargs)
        torch_dtype = kwargs.pop("torch_dtype", None)
        if "dtype" in kwargs:  # the reference's newer spelling of torch_dtype
            torch_dtype = kwargs.pop("dtype")
        variant = check_variant(kwargs.pop("variant", None))
        use_safetensors = kwargs.pop("use_safetensors", None)
        for ignored in ("low_cpu_mem_usage", "device_map", "safety_checker", "requires_safety_checker"):
            if ignored in kwargs and ignored not in inspect.signature(cls.__init__).parameters:
                kwargs.pop(ignored)
        if isinstance(torch_dtype, dict):
            for name, value in torch_dtype.items():
                parse_dtype(value, f"torch_dtype[{name!r}]")
        else:
            parse_dtype(torch_dtype)
        folder = _resolve_pipeline_folder(pretrained_model_name_or_path, variant, use_safetensors, hub_kwargs)
        index = read_json(folder / cls.config_name, what="pipeline index (model_index.json)")
        pipeline_class = cls._class_for_index(index, folder)
        return pipeline_class._from_index(folder, index, torch_dtype, variant, use_safetensors, kwargs)

    @classmethod
    def _class_for_index(cls, index: dict, folder: Path) -> type["DiffusionPipeline"]:
        if cls is not DiffusionPipeline:
            return cls
        name = index.get("_class_name")
        if not isinstance(name, str):
            raise CheckpointError(f"{str(folder / 'model_index.json')!r} has no _class_name naming the pipeline")
        pipeline_class = resolve_class("diffusers", name, component="_class_name")
        if not (isinstance(pipeline_class, type) and issubclass(pipeline_class, DiffusionPipeline)) \
                or pipeline_class is DiffusionPipeline:
            raise CheckpointError(f"{str(folder / 'model_index.json')!r}: _class_name {name!r} is not a pipeline "
                                  f"class (e.g. 'KandinskyV22Pipeline')")
        return pipeline_class

    @classmethod
    def _from_index(cls, folder: Path, index: dict, torch_dtype: Any, variant: str | None,
                    use_safetensors: bool | None, overrides: dict[str, Any]) -> "DiffusionPipeline":
        expected = cls._component_names()
        init_params = inspect.signature(cls.__init__).parameters
        unknown = [k for k in overrides if k not in init_params]
        if unknown:
            raise TypeError(
                f"{cls.__name__}.from_pretrained got unexpected keyword arguments {unknown}; "
                f"components are {expected}"
            )
        loaded: dict[str, Any] = {}
        connected = cls._connected_components(folder, torch_dtype, variant, use_safetensors, overrides)
        for name in expected:
            if name in overrides:
                loaded[name] = overrides.pop(name)
                continue
            entry = index.get(name)
            if entry is None and name in connected:
                loaded[name] = connected[name]
                continue
            if entry is None or (isinstance(entry, (list, tuple)) and entry[0] is None):
                if init_params[name].default is inspect.Parameter.empty and name not in cls._optional_components:
                    raise CheckpointError(
                        f"{cls.__name__} needs component {name!r}, but {str(folder / 'model_index.json')!r} "
                        f"does not list it; pass it as {name}=..."
                    )
                loaded[name] = None
                continue
            loaded[name] = load_component(folder, name, entry, dtype_for(name, torch_dtype), variant, use_safetensors)
        if variant and not any(_has_variant(folder / name, variant) for name in expected if (folder / name).is_dir()):
            raise CheckpointError(
                f"variant={variant!r}: no component of {str(folder)!r} has {variant!r} weights; "
                f"drop variant= to load the plain weights"
            )
        settings = {k: index[k] for k in cls._config_only_arguments() if k in index}
        settings.update(overrides)
        return cls(**loaded, **settings)

    # model card keys naming the pipelines a combined pipeline pulls its other parts from
    _load_connected_pipes = False
    _connected_prefixes = ("prior",)

    @classmethod
    def _connected_components(cls, folder: Path, torch_dtype, variant, use_safetensors,
                              overrides: dict[str, Any]) -> dict[str, Any]:
        """Components of pipelines named in the folder's README (``prior: [org/name]``), as ``prior_<name>``.

        This is how a hub decoder repo (e.g. kandinsky-2-2-decoder) becomes a combined pipeline.
        """
        if not cls._load_connected_pipes:
            return {}
        components: dict[str, Any] = {}
        for prefix in cls._connected_prefixes:
            source = connected_pipeline(folder, prefix)
            wanted = [n for n in cls._component_names() if n.startswith(prefix + "_") and n not in overrides]
            if source is None or not wanted:
                continue
            passed = {n[len(prefix) + 1:]: overrides[n] for n in cls._component_names()
                      if n.startswith(prefix + "_") and n in overrides}
            if isinstance(torch_dtype, dict):
                torch_dtype = {k[len(prefix) + 1:] if k.startswith(prefix + "_") else k: v
                               for k, v in torch_dtype.items()}
            chain = _CONNECTING.get() + (Path(folder).resolve(),)
            if isinstance(source, Path) and source.resolve() in chain:
                names = " -> ".join(str(p) for p in chain + (source.resolve(),))
                raise CheckpointError(f"model cards name each other in a cycle: {names}; a decoder's card must "
                                      f"name a prior folder that does not name it back")
            token = _CONNECTING.set(chain)
            try:
                sub = DiffusionPipeline.from_pretrained(source, torch_dtype=torch_dtype, variant=variant,
                                                        use_safetensors=use_safetensors, **passed)
            finally:
                _CONNECTING.reset(token)
            components.update({f"{prefix}_{name}": c for name, c in sub.components.items()})
        return components

    @classmethod
    def from_pipe(cls, pipeline: "DiffusionPipeline", **kwargs: Any) -> "DiffusionPipeline":
        """A ``cls`` pipeline sharing ``pipeline``'s loaded components (no copies); kwargs replace some."""
        available = dict(pipeline.components)
        # combined pipelines hold the parts of their sub-pipelines under prefixed names
        for name, component in list(available.items()):
            for prefix in ("prior_",):
                if name.startswith(prefix) and name[len(prefix):] not in available:
                    available[name[len(prefix):]] = component
        for name, component in pipeline.components.items():
            if f"prior_{name}" not in available:
                available[f"prior_{name}"] = component
        init_params = inspect.signature(cls.__init__).parameters
        components = {}
        for name in cls._component_names():
            if name in kwargs:
                components[name] = kwargs.pop(name)
            elif name in available:
                components[name] = available[name]
            elif init_params[name].default is inspect.Parameter.empty:
                raise ValueError(
                    f"{cls.__name__}.from_pipe: {type(pipeline).__name__} has no component {name!r}; pass {name}=..."
                )
        # settings (requires_safety_checker) carry over from the pipeline unless given
        settings = {k: pipeline.config[k] for k in cls._config_only_arguments() if k in pipeline.config}
        settings.update({k: v for k, v in kwargs.items() if k in init_params})
        extra = [k for k in kwargs if k not in init_params]
        if extra:
            raise TypeError(f"{cls.__name__}.from_pipe got unexpected keyword arguments {extra}")
        new = cls(**components, **settings)
        if hasattr(pipeline, "_progress_bar_config"):
            new.set_progress_bar_config(**pipeline._progress_bar_config)
        return new

    # ------------------------------------------------------------------ saving

    def save_pretrained(self, save_directory: str | os.PathLike, safe_serialization: bool = True,
                        variant: str | None = None, max_shard_size: int | str | None = None, **kwargs: Any) -> None:
        """Write ``model_index.json`` and every component; nothing is left behind if it fails."""
        max_shard_size = "10GB" if max_shard_size is None else max_shard_size
        shard_size_bytes(max_shard_size)
        check_variant(variant)
        with atomic_folder(save_directory) as staging:
            index = {"_class_name": type(self).__name__, "_diffusers_version": FORMAT_VERSION}
            index.update({k: list(v) if isinstance(v, tuple) else v for k, v in self.config.items()})
            (staging / self.config_name).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n",
                                                    encoding="utf-8")
            for name, component in self.components.items():
                if component is None:
                    continue
                save_component(component, staging / name, safe_serialization, variant, max_shard_size)


def _library_and_class(component: Any) -> tuple[str | None, str | None]:
    if component is None:
        return (None, None)
    if isinstance(component, (list, tuple)) and len(component) == 2 and component[0] is None:
        return (None, None)
    import sfumato

    if isinstance(component, DeferredComponent):
        return (component._reference_library, component._reference_class)
    klass = type(component)
    if getattr(klass, "_reference_library", None):  # fast_start's CLIP parts stand for transformers' classes
        return (klass._reference_library, klass.__name__)
    # our classes stand for the reference's classes of the same name in the folder format
    if sfumato._EXPORTS.get(klass.__name__) == klass.__module__ or klass.__module__.startswith("sfumato."):
        return (reference_library(klass.__name__), klass.__name__)
    return (klass.__module__.split(".")[0], klass.__name__)


def _module_device(module: nn.Module) -> torch.device:
    for tensor in module.parameters():
        return tensor.device
    return torch.device("cpu")


def _resolve_pipeline_folder(name_or_path, variant, use_safetensors, hub_kwargs) -> Path:
    if Path(str(name_or_path)).expanduser().is_dir():
        return resolve_folder(name_or_path)
    patterns = list(_HUB_PATTERNS)
    if use_safetensors is not False:
        patterns.append(f"*/*.{variant}.safetensors" if variant else "*/*.safetensors")
        patterns.append(f"*/*.{variant}-*.safetensors" if variant else "*/*-of-*.safetensors")
    if use_safetensors is False:
        patterns.append("*/*.bin")
    return resolve_folder(name_or_path, allow_patterns=patterns, **hub_kwargs)


def load_component(folder: Path, name: str, entry: Any, dtype: torch.dtype | None,
                   variant: str | None, use_safetensors: bool | None) -> Any:
    """Load one ``[library, class]`` component from ``folder/name``."""
    if not (isinstance(entry, (list, tuple)) and len(entry) == 2):
        raise CheckpointError(f"model_index.json entry for {name!r} must be [library, class], got {entry!r}")
    library, class_name = entry
    sub = folder / name
    component_variant = variant if variant and sub.is_dir() and _has_variant(sub, variant) else None
    if _FAST_START.get() and library == "transformers" and sub.is_dir():
        own = _fast_start_component(class_name, sub, dtype, component_variant, use_safetensors)
        if own is not None:
            return own
    klass = resolve_class(library, class_name, component=name)
    if not sub.is_dir():
        raise CheckpointError(f"component folder {str(sub)!r} is missing (model_index.json lists {name!r})")
    if issubclass(klass, DiffusionPipeline):
        raise CheckpointError(f"model_index.json entry for {name!r} names the pipeline class {class_name!r}; "
                              f"a component is a model, scheduler, tokenizer or processor")
    if isinstance(klass, type) and issubclass(klass, ModelMixin):
        return klass.from_pretrained(sub, torch_dtype=dtype, variant=component_variant,
                                     use_safetensors=use_safetensors)
    if isinstance(klass, type) and issubclass(klass, ConfigMixin):  # schedulers and other configs
        config_file = sub / klass.config_name
        config = read_json(config_file, what=f"{name} config")
        check_config_values(config, str(config_file))
        with config_errors_name(config_file):
            return klass.from_config(config)
    return _load_foreign(klass, sub, dtype, component_variant, use_safetensors)


def _fast_start_component(class_name: str, folder: Path, dtype, variant, use_safetensors) -> Any:
    """sfumato's reading of a transformers component, without importing transformers; ``None``: load it as usual."""
    if class_name.endswith(("ImageProcessor", "ImageProcessorPil")):
        # only image inputs (image embeddings, interpolation) use it: text-to-image never imports transformers for it;
        # a folder without a readable config loads now, so that its error still comes before any picture
        try:
            json.loads((folder / "preprocessor_config.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None

        def load() -> Any:
            return _load_foreign(resolve_class("transformers", class_name, component=folder.name), folder, dtype,
                                 variant, use_safetensors)

        return DeferredComponent(load, "transformers", class_name)
    if class_name in ("CLIPTokenizer", "CLIPTokenizerFast"):
        from ..models import clip_tokenizer

        return clip_tokenizer.load(folder)
    from ..models import clip

    return clip.load(class_name, folder, dtype, variant, use_safetensors)


class DeferredComponent:
    """A component loaded when it is first used (``fast_start``): attributes and calls reach the loaded one."""

    def __init__(self, load: Any, library: str, class_name: str):
        self._load, self._component = load, None
        self._reference_library, self._reference_class = library, class_name

    def loaded(self) -> Any:
        if self._component is None:
            self._component = self._load()
        return self._component

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name in ("_load", "_component"):
            raise AttributeError(name)
        return getattr(self.loaded(), name)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.loaded()(*args, **kwargs)

    def __repr__(self) -> str:
        state = "loaded" if self._component is not None else "loads when first used"
        return f"<{self._reference_class} ({state})>"


def _load_foreign(klass: type, folder: Path, dtype, variant, use_safetensors) -> Any:
    """transformers models, tokenizers and processors load through their own ``from_pretrained``."""
    kwargs: dict[str, Any] = {}
    if isinstance(klass, type) and issubclass(klass, nn.Module):
        kwargs["dtype"] = dtype or torch.float32
        if variant:
            kwargs["variant"] = variant
        if use_safetensors is not None:
            kwargs["use_safetensors"] = use_safetensors
    try:
        # code inside a checkpoint never runs: transformers would otherwise ask on stdin whether it may
        component = klass.from_pretrained(str(folder), trust_remote_code=False, **kwargs)
    except (OSError, ValueError) as error:
        raise CheckpointError(f"could not load {klass.__name__} from {str(folder)!r}: {error}") from None
    if isinstance(component, nn.Module):
        # the folder's files made it: values derived from its weights alone may be kept (checkpoint.derived)
        mark_source(component.eval(), [path for path in folder.iterdir() if path.is_file()])
    return component


def _has_variant(folder: Path, variant: str) -> bool:
    return any(f".{variant}." in p.name or f".{variant}-" in p.name for p in folder.iterdir())


def save_component(component: Any, folder: Path, safe_serialization: bool, variant: str | None,
                   max_shard_size: int | str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    if isinstance(component, ModelMixin):
        component.write_pretrained(folder, safe_serialization, variant, max_shard_size)
    elif isinstance(component, ConfigMixin):
        component.save_config(folder)
    elif hasattr(component, "save_pretrained"):
        kwargs: dict[str, Any] = {}
        if isinstance(component, nn.Module):
            kwargs = {"safe_serialization": safe_serialization, "max_shard_size": max_shard_size}
            if variant:
                kwargs["variant"] = variant
        try:
            component.save_pretrained(str(folder), **kwargs)
        except TypeError:
            component.save_pretrained(str(folder))
    else:
        raise CheckpointError(f"cannot save component of type {type(component).__name__} to {str(folder)!r}")


__all__ = ["DiffusionPipeline", "ImagePipelineOutput", "FrozenDict", "load_component", "save_component"]
