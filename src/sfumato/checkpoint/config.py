"""Configurations: the JSON files next to every model and scheduler.

A configurable class records the arguments of its ``__init__`` (with defaults
filled in) as ``self.config``. ``from_config`` rebuilds an object from such a
record, ``save_config`` / ``load_config`` move it to and from disk. Field names
and file names follow the diffusers format, so folders written by either
library load in the other.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import json
import math
import os
import re
from pathlib import Path
from typing import Any

from .errors import CheckpointError
from .hub import resolve_folder

FORMAT_VERSION = "0.42.1"  # the diffusers release whose folder format we write


class FrozenDict(dict):
    """A read-only dict whose keys are also attributes (``config.num_train_timesteps``)."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"config has no field {name!r}") from None

    def _immutable(self, *args, **kwargs):
        raise TypeError("a config is read-only; build a new object with from_config(config, field=value)")

    __setitem__ = __delitem__ = setdefault = pop = popitem = update = _immutable  # type: ignore[assignment]

    def __reduce__(self):
        return (FrozenDict, (dict(self),))

    def __deepcopy__(self, memo):
        import copy

        return FrozenDict(copy.deepcopy(dict(self), memo))


def _jsonable(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if hasattr(value, "tolist"):  # numpy / torch values
        return value.tolist()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return value


def register_to_config(init):
    """Decorate ``__init__`` so that its bound arguments become ``self.config``."""
    signature = inspect.signature(init)

    @functools.wraps(init)
    def wrapper(self, *args, **kwargs):
        bound = signature.bind(self, *args, **kwargs)
        bound.apply_defaults()
        values = dict(bound.arguments)
        values.pop("self")
        for name, param in signature.parameters.items():
            if param.kind is inspect.Parameter.VAR_KEYWORD:
                values.update(values.pop(name))
            elif param.kind is inspect.Parameter.VAR_POSITIONAL:
                values.pop(name)
        ignored = set(getattr(type(self), "ignore_for_config", ()))
        self.register_to_config(**{k: v for k, v in values.items() if k not in ignored})
        init(self, *args, **kwargs)

    wrapper.__signature__ = signature
    return wrapper


class ConfigMixin:
    """Gives a class ``config``, ``from_config``, ``load_config`` and ``save_config``."""

    config_name: str = "config.json"
    ignore_for_config: tuple[str, ...] = ()

    def register_to_config(self, **values: Any) -> None:
        current = dict(getattr(self, "_internal_dict", {}) or {})
        current.update(values)
        self._internal_dict = FrozenDict(current)

    @property
    def config(self) -> FrozenDict:
        return self._internal_dict

    @classmethod
    def _init_parameters(cls) -> dict[str, inspect.Parameter]:
        params = dict(inspect.signature(cls.__init__).parameters)
        params.pop("self", None)
        return {
            k: p
            for k, p in params.items()
            if p.kind not in (inspect.Parameter.VAR_KEYWORD, inspect.Parameter.VAR_POSITIONAL)
        }

    @classmethod
    def from_config(cls, config: dict | None = None, return_unused_kwargs: bool = False, **overrides: Any):
        """Build an instance from a config dict; ``overrides`` win over its values.

        Fields the class does not take (for example a PNDM field given to DDIM)
        are dropped, which is what makes compatible schedulers swappable.
        """
        if config is None:
            config = {}
        if not isinstance(config, dict):
            raise TypeError(f"config must be a dict (e.g. pipe.scheduler.config), got {type(config).__name__}")
        merged = {k: v for k, v in config.items() if not k.startswith("_")}
        merged.update(overrides)
        params = cls._init_parameters()
        accepts_any = any(
            p.kind is inspect.Parameter.VAR_KEYWORD for p in inspect.signature(cls.__init__).parameters.values()
        )
        init_kwargs = {k: v for k, v in merged.items() if k in params or accepts_any}
        unused = {k: v for k, v in overrides.items() if k not in init_kwargs}
        instance = cls(**init_kwargs)
        if return_unused_kwargs:
            return instance, unused
        return instance

    @classmethod
    def load_config(
        cls,
        pretrained_model_name_or_path: str | os.PathLike,
        subfolder: str | None = None,
        **hub_kwargs: Any,
    ) -> dict:
        """Read ``<path>[/subfolder]/<config_name>`` and return it as a plain dict."""
        folder = resolve_folder(pretrained_model_name_or_path, subfolder=subfolder, **hub_kwargs)
        return read_json(folder / cls.config_name, what=f"{cls.__name__} config")

    def to_json_string(self) -> str:
        data = {"_class_name": type(self).__name__, "_diffusers_version": FORMAT_VERSION}
        data.update(_jsonable(dict(self.config)))
        return json.dumps(data, indent=2, sort_keys=True) + "\n"

    def save_config(self, save_directory: str | os.PathLike) -> None:
        folder = Path(save_directory)
        if folder.is_file():
            raise CheckpointError(f"save_directory {str(folder)!r} is a file; it must be a folder")
        folder.mkdir(parents=True, exist_ok=True)
        write_text_atomic(folder / self.config_name, self.to_json_string())

    def __repr__(self) -> str:
        return f"{type(self).__name__} {self.to_json_string()}"


def read_json(path: Path, what: str = "JSON file") -> dict:
    if not path.is_file():
        raise CheckpointError(f"{what} not found: {str(path)!r} does not exist")
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except json.JSONDecodeError as error:
        raise CheckpointError(f"{what} {str(path)!r} is not valid JSON: {error}") from None
    except UnicodeDecodeError:
        raise CheckpointError(f"{what} {str(path)!r} is not UTF-8 text; it must be a JSON file") from None
    except RecursionError:
        raise CheckpointError(f"{what} {str(path)!r} is nested too deeply to be a config") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{what} {str(path)!r} must hold a JSON object, got {type(data).__name__}")
    return data


def write_text_atomic(path: Path, text: str) -> None:
    """Write through a temporary file in the same folder, so a crash leaves the old file or none."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


# ---------------------------------------------------------------------------------------------- checking configs

# config fields by name: sizes must be positive whole numbers (or lists of them), counts of layers bounded,
# so a hostile or broken config.json gets a clear error before anything is built from it
_POSITIVE_SIZE = re.compile(r"(^num_(?!class_embeds).*|channels|_dim|_dims|heads|groups|kernel|"
                            r"_size|timesteps|layers_per_block|num_layers)$")
# sizes that must be given (None would only fail deep inside a constructor), and those that must be lists
_REQUIRED_SIZES = {"block_out_channels", "layers_per_block", "num_train_timesteps", "num_vq_embeddings",
                   "latent_channels", "in_channels", "out_channels"}
_LIST_SIZES = {"block_out_channels"}
_NON_NEGATIVE_INT = {"steps_offset": 10_000, "additional_embeddings": 1024}
_LAYER_COUNT = re.compile(r"(layers|layers_per_block)$")
_MAX_LAYERS = 128
_MAX_LEVELS = 16
_MAX_WIDTH = 1 << 20
_MAX_TIMESTEPS = 100_000
_UNIT_INTERVAL = ("beta_start", "beta_end")
_POSITIVE_FLOAT = ("clip_sample_range", "sample_max_value", "scaling_factor")


def check_config_values(config: dict, source: str) -> None:
    """Refuse config values of the wrong type, sign or size, naming ``source`` (the file) and the field."""
    for name, value in config.items():
        where = f"{source}: {name}"
        if value is None and name in _REQUIRED_SIZES:
            raise CheckpointError(f"{where} must be given, got null")
        if name.startswith("_") or value is None:
            continue
        if name in _LIST_SIZES and not isinstance(value, (list, tuple)):
            raise CheckpointError(f"{where} must be a list with one value per level, got {value!r:.60}")
        if name in _NON_NEGATIVE_INT:
            limit = _NON_NEGATIVE_INT[name]
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= limit:
                raise CheckpointError(f"{where} must be a whole number from 0 to {limit}, got {value!r:.60}")
        elif _POSITIVE_SIZE.search(name):
            _check_sizes(where, name, value)
        elif name in _UNIT_INTERVAL:
            _check_float(where, value, low=0.0, high=1.0)
        elif name in _POSITIVE_FLOAT:
            _check_float(where, value, low=0.0, high=float("inf"))
        elif name == "trained_betas":
            if not isinstance(value, (list, tuple)) or not value:
                raise CheckpointError(f"{where} must be a non-empty list of betas in (0, 1), got {value!r:.60}")
            for beta in value:
                _check_float(where, beta, low=0.0, high=1.0)
    groups = config.get("norm_num_groups")
    widths = config.get("block_out_channels")
    if isinstance(groups, int) and isinstance(widths, (list, tuple)):
        odd = [w for w in widths if isinstance(w, int) and w % groups]
        if odd:
            raise CheckpointError(f"{source}: block_out_channels {list(widths)} must all be multiples of "
                                  f"norm_num_groups={groups}; {odd} are not")


def _check_sizes(where: str, name: str, value: Any) -> None:
    values = list(value) if isinstance(value, (list, tuple)) else [value]
    if isinstance(value, (list, tuple)) and not 0 < len(values) <= _MAX_LEVELS:
        raise CheckpointError(f"{where} must list 1 to {_MAX_LEVELS} values, got {len(values)}")
    limit = _MAX_LAYERS if _LAYER_COUNT.search(name) else _MAX_TIMESTEPS if name.endswith("timesteps") else _MAX_WIDTH
    for item in values:
        if isinstance(item, (list, tuple)):  # per-block lists of per-layer values
            _check_sizes(where, name, item)
            continue
        if isinstance(item, bool) or not isinstance(item, int) or not 1 <= item <= limit:
            raise CheckpointError(f"{where} must be a whole number from 1 to {limit} (or a list of them), "
                                  f"got {value!r:.80}")


def _check_float(where: str, value: Any, low: float, high: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or not low < value <= high:
        raise CheckpointError(f"{where} must be a number in ({low}, {high}], got {value!r:.60}")


@contextlib.contextmanager
def config_errors_name(path: Path):
    """Errors from building an object out of a config file are reported against that file."""
    try:
        yield
    except CheckpointError:
        raise
    except (TypeError, ValueError, ZeroDivisionError, RuntimeError, IndexError, KeyError, OverflowError,
            AttributeError) as error:
        raise CheckpointError(f"{str(path)!r} describes something that cannot be built: {error}") from None
