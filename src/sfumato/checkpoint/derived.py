"""Values that depend on a model's checkpoint alone, computed once per machine and kept on disk.

The Kandinsky 2.2 prior's negative image embedding, for one, is its CLIP image
encoder's embedding of an all-zero picture: a full pass of a 1.8-billion-weight
encoder (~18 s of a whole default picture on a 2-core CPU, and 7.4 GB of weights
read) that gives the same 1280 numbers at every call. :func:`cached` keeps such a
value in memory and in a small file under the cache folder, so the next call and
the next process skip the pass (and never touch the encoder's weights).

A value is reused only when it would come out bit for bit the same:

* the model was loaded from files by sfumato (:func:`mark_source` records them)
  and is still as loaded: the same tensors, never changed in place, in the same
  dtype and on the same device, and no forward hooks. Anything else (weights
  replaced or fused, a LoRA, a model moved to a GPU) computes the value as usual;
* the key holds the files' identity (path, size, modification and change times,
  inode, and a hash of each file's first and last 64 KiB), the value's name,
  the model's dtype, device and layer classes (the fast mode's layers round
  differently from the plain ones) and attention setting (transformers'),
  the thread count and the torch version.

The folder is ``$SFUMATO_CACHE_DIR``, else ``$XDG_CACHE_HOME/sfumato``, else
``~/.cache/sfumato``; ``SFUMATO_CACHE_DIR=off`` (or no home folder) keeps values in memory only.
A file that cannot be read is computed again; one that cannot be written is
skipped (the value is still returned).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import threading
from pathlib import Path
from typing import Callable

import torch
from torch import nn

# bump when the meaning of a stored value changes
FORMAT = 1
SAMPLE_BYTES = 64 * 1024

_MEMORY: dict[str, torch.Tensor] = {}
_LOCK = threading.Lock()


def cache_folder() -> Path | None:
    """Where values are kept on disk; ``None`` when ``SFUMATO_CACHE_DIR=off``."""
    setting = os.environ.get("SFUMATO_CACHE_DIR", "").strip()
    if setting.lower() in ("off", "0", "none", "false", "no"):
        return None
    if setting:
        return Path(setting).expanduser()
    base = os.environ.get("XDG_CACHE_HOME", "").strip()
    if base:
        return Path(base).expanduser() / "sfumato"
    try:
        return Path.home() / ".cache" / "sfumato"
    except (RuntimeError, KeyError):  # no home folder to be found: memory only
        return None


def files_fingerprint(files: list[Path]) -> str:
    """A hash of what identifies each file's contents without reading it all."""
    parts = []
    for path in sorted(Path(f).resolve() for f in files):
        stat = path.stat()
        with open(path, "rb") as handle:
            head = handle.read(SAMPLE_BYTES)
            handle.seek(max(stat.st_size - SAMPLE_BYTES, 0))
            tail = handle.read(SAMPLE_BYTES)
        parts.append([str(path), stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino, stat.st_dev,
                      hashlib.sha256(head + tail).hexdigest()])
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()


def _tensors(model: nn.Module) -> tuple:
    """Which tensors the model holds and whether any changed: storage, dtype, device, shape, version counter."""
    return tuple((t.data_ptr(), t.dtype, t.device, tuple(t.shape), t._version)
                 for t in (*model.parameters(), *model.buffers()))


def mark_source(model: nn.Module, files: list[Path], settings: dict | None = None) -> nn.Module:
    """Record that ``model`` is exactly what ``files`` (weights and config) and ``settings`` (config values given
    when loading, which override the file's) make, as loaded now."""
    try:
        fingerprint = hashlib.sha256(json.dumps([files_fingerprint(files), settings or {}], sort_keys=True,
                                                default=repr).encode()).hexdigest()
    except OSError:
        return model
    model.__dict__["_sfumato_source"] = (fingerprint, _tensors(model))
    return model


def _key(model: nn.Module, name: str) -> tuple[str, torch.device] | None:
    """The cache key of ``name`` for ``model`` and the model's device, or ``None`` when the model is not as
    loaded from its files."""
    source = model.__dict__.get("_sfumato_source")
    parameter = next(model.parameters(), None)
    if source is None or parameter is None:
        return None
    fingerprint, tensors = source
    modules = list(model.modules())
    if _tensors(model) != tensors or any(m._forward_hooks or m._forward_pre_hooks for m in modules):
        return None
    classes = sorted({f"{type(m).__module__}.{type(m).__qualname__}" for m in modules})
    # transformers' models pick their attention code by a setting, not by a class
    attention = getattr(getattr(model, "config", None), "_attn_implementation", None)
    described = [FORMAT, fingerprint, name, str(parameter.dtype), str(parameter.device), classes, str(attention),
                 torch.get_num_threads(), torch.__version__]
    return hashlib.sha256(json.dumps(described).encode()).hexdigest(), parameter.device


def cached(model: nn.Module, name: str, compute: Callable[[], torch.Tensor]) -> torch.Tensor:
    """``compute()`` (a tensor that depends on ``model``'s weights alone), kept in memory and on disk per
    :mod:`the rules above <sfumato.checkpoint.derived>`; always a fresh tensor the caller may change."""
    found = _key(model, name)
    if found is None:
        return compute()
    key, device = found
    with _LOCK:
        value = _MEMORY.get(key)
    if value is None:
        value = _read(key)
        value = None if value is None else value.to(device)
    if value is None:
        value = compute().detach()
        _write(key, value)
    with _LOCK:
        _MEMORY[key] = value
    return value.clone()


def _path(key: str) -> Path | None:
    folder = cache_folder()
    return None if folder is None else folder / "derived" / f"{key}.safetensors"


def _read(key: str) -> torch.Tensor | None:
    path = _path(key)
    if path is None or not path.is_file():
        return None
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))["value"].clone()
    except (SafetensorError, OSError, KeyError, ValueError, RuntimeError):
        return None  # computed again and written over


def _write(key: str, value: torch.Tensor) -> None:
    path = _path(key)
    if path is None:
        return
    from safetensors.torch import save_file

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, staging = tempfile.mkstemp(dir=path.parent, prefix=".writing-", suffix=".safetensors")
        os.close(handle)
        try:
            save_file({"value": value.to("cpu").contiguous()}, staging)
            os.replace(staging, path)
        finally:
            if os.path.exists(staging):
                os.unlink(staging)
    except OSError:
        pass  # a read-only or full disk: the value is still returned


def clear_memory() -> None:
    """Forget the values kept in this process (the files stay)."""
    with _LOCK:
        _MEMORY.clear()


__all__ = ["cache_folder", "cached", "clear_memory", "files_fingerprint", "mark_source"]
