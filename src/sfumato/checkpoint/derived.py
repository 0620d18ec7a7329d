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
  dtype and on the same device, and no forward hooks (but those marked
  ``leaves_values_alone``, as ``sfumato.nn.layout``'s). Anything else (weights
  replaced or fused, a LoRA, a model moved to a GPU) computes the value as usual;
* the key holds the files' identity (path, size, modification and change times,
  inode, and a hash of each file's first and last 64 KiB), the value's name,
  the model's dtype, device and layer classes (the fast mode's layers round
  differently from the plain ones) and attention setting (transformers', and
  the fast mode's bf16 products),
  the thread count and the torch version.

The folder is ``$SFUMATO_CACHE_DIR``, else ``$XDG_CACHE_HOME/sfumato``, else
``~/.cache/sfumato``; ``SFUMATO_CACHE_DIR=off`` (or no home folder) keeps values in memory only.
A file that cannot be read is computed again; one that cannot be written is
skipped (the value is still returned).

:func:`cached_tensors` keeps larger things the same way, on disk only: a whole
converted copy of a model's weights (the fast CPU mode's bf16 and int8 weights,
``sfumato.fast``). The file is written one tensor at a time (never two copies
of a model in memory) and read back memory-mapped, so its pages belong to the
page cache, which the kernel can drop, and the tensors said to be seldom used
are read only if used.
Writing a new one for a model removes the one kept for an earlier version of
the same files; one that would not leave 1 GiB of the disk free is not written.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Callable, Iterable

import torch
from torch import nn

# bump when the meaning of a stored value changes
FORMAT = 1
SAMPLE_BYTES = 64 * 1024
# what a kept copy of weights must leave free on its disk
MIN_FREE_BYTES = 1 << 30

logger = logging.getLogger(__name__)

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
        # the files by name alone: a later version of the same files replaces what was kept for this one
        where = hashlib.sha256(json.dumps(sorted(str(Path(f).resolve()) for f in files)).encode()).hexdigest()
    except OSError:
        return model
    model.__dict__["_sfumato_source"] = (fingerprint, _tensors(model), where)
    return model


def _key(model: nn.Module, name: str, threads: bool = True) -> tuple[str, torch.device] | None:
    """The cache key of ``name`` for ``model`` and the model's device, or ``None`` when the model is not as
    loaded from its files. ``threads``: the thread count is part of the key (a value summed in another order
    with another count)."""
    source = model.__dict__.get("_sfumato_source")
    parameter = next(model.parameters(), None)
    if source is None or parameter is None:
        return None
    fingerprint, tensors, _ = source
    modules = list(model.modules())
    hooks = [hook for m in modules for hook in (*m._forward_hooks.values(), *m._forward_pre_hooks.values())]
    if _tensors(model) != tensors or not all(getattr(hook, "leaves_values_alone", False) for hook in hooks):
        return None
    classes = sorted({f"{type(m).__module__}.{type(m).__qualname__}" for m in modules})
    # transformers' models pick their attention code by a setting, not by a class
    attention = getattr(getattr(model, "config", None), "_attn_implementation", None)
    described = [FORMAT, fingerprint, name, str(parameter.dtype), str(parameter.device), classes, str(attention),
                 torch.get_num_threads() if threads else None, torch.__version__]
    if any(getattr(m, "products_attention", False) for m in modules):  # sfumato's, set by the fast mode
        described.append("products attention")
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


# --------------------------------------------------------------------------- converted weights


def cached_tensors(model: nn.Module, name: str, spec: dict[str, tuple[torch.dtype, tuple[int, ...]]],
                   make: Callable[[str], torch.Tensor], seldom: Iterable[str] = ()) -> dict[str, torch.Tensor] | None:
    """Tensors that depend on ``model``'s weights alone (``spec``: name -> dtype and shape; ``make(name)``
    computes one), kept on disk per :mod:`the rules above <sfumato.checkpoint.derived>` and returned
    memory-mapped from the kept file.

    The file holds the ``seldom`` used tensors last; the rest is read ahead as one range when the file is
    mapped (from a cold disk, faulting a mapping in page by page reads ~2.5x slower), the seldom part only if
    used. Returns None where nothing can be kept (the model is not as loaded, or not on the CPU; no cache
    folder; too little disk; a failed write): the caller computes what it needs as it would without a cache.
    The thread count is not part of the key: the values must not depend on it.
    """
    found = _key(model, name, threads=False)
    folder = cache_folder()
    if found is None or found[1].type != "cpu" or folder is None:
        return None
    key = found[0]
    path = folder / "weights" / f"{key}.safetensors"
    seldom = set(seldom)
    kept = _map(path, spec, seldom)
    if kept is not None:
        return kept
    metadata = {"name": name, "files": model.__dict__["_sfumato_source"][2], "key": key}
    if not _write_tensors(path, spec, make, metadata, seldom):
        return None
    _remove_older_versions(path, metadata)
    return _map(path, spec, seldom)


# a kept file's filler between its often and seldom used parts, which keeps each part aligned
_PADDING = "__padding__"
_ALIGNMENT = 64


def _map(path: Path, spec: dict[str, tuple[torch.dtype, tuple[int, ...]]],
         seldom: set[str]) -> dict[str, torch.Tensor] | None:
    """The tensors of a kept file, mapped (copy on write, never read until used, but the part not ``seldom``
    used, read ahead), if it holds exactly ``spec``; else None."""
    import mmap

    from .weights import _SAFETENSORS_DTYPES, _safetensors_header

    try:
        with open(path, "rb") as handle:  # header and mapping from the same file, even if it is replaced meanwhile
            header, data_start = _safetensors_header(handle)
            header.pop(_PADDING, None)
            if header.keys() != spec.keys():
                return None
            size = os.fstat(handle.fileno()).st_size
            mapped = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_COPY)
            tensors, often = {}, [size, 0]
            for item, info in header.items():
                dtype, shape = _SAFETENSORS_DTYPES[info["dtype"]], tuple(info["shape"])
                begin, end = (data_start + offset for offset in info["data_offsets"])
                count = int(torch.Size(shape).numel())
                if (dtype, shape) != (spec[item][0], tuple(spec[item][1])) or end - begin != count * dtype.itemsize \
                        or end > size or begin % dtype.itemsize:
                    return None
                tensors[item] = (torch.frombuffer(mapped, dtype=dtype, count=count, offset=begin).view(shape)
                                 if count else torch.empty(shape, dtype=dtype))
                if item not in seldom and count:
                    often = [min(often[0], begin), max(often[1], end)]
            if often[1] > often[0] and hasattr(os, "posix_fadvise"):
                os.posix_fadvise(handle.fileno(), often[0], often[1] - often[0], os.POSIX_FADV_WILLNEED)
    except (OSError, ValueError, KeyError, TypeError, RuntimeError):
        return None
    return tensors


def _write_tensors(path: Path, spec: dict[str, tuple[torch.dtype, tuple[int, ...]]],
                   make: Callable[[str], torch.Tensor], metadata: dict[str, str], seldom: set[str]) -> bool:
    """Write ``spec``'s tensors as a safetensors file, one ``make(name)`` at a time, the ``seldom`` used ones last;
    atomically (a failure leaves no file behind). False when it could not be written."""
    from .weights import safetensors_dtype_name

    # each part widest elements first, so that every tensor starts at a multiple of its element size (the data
    # starts 8-aligned); filler between the parts
    order: list[str] = []
    for part in ([item for item in spec if item not in seldom], [item for item in spec if item in seldom]):
        if order and part:
            order.append(_PADDING)
        order += sorted(part, key=lambda item: -spec[item][0].itemsize)
    header: dict[str, dict] = {"__metadata__": metadata}
    offset = 0
    for item in order:
        if item == _PADDING:
            dtype, shape = torch.uint8, (-offset % _ALIGNMENT,)
        else:
            dtype, shape = spec[item]
        size = dtype.itemsize * int(torch.Size(shape).numel())
        header[item] = {"dtype": safetensors_dtype_name(dtype), "shape": list(shape),
                        "data_offsets": [offset, offset + size]}
        offset += size
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)
    staging = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(path.parent).free
        if free < offset + MIN_FREE_BYTES:
            logger.info("not keeping %s: it needs %.1f GiB and would leave under 1 GiB free", metadata["name"],
                        offset / 2 ** 30)
            return False
        handle, staging = tempfile.mkstemp(dir=path.parent, prefix=".writing-", suffix=".safetensors")
        with os.fdopen(handle, "wb") as out:
            out.write(len(encoded).to_bytes(8, "little"))
            out.write(encoded)
            for item in order:
                if item == _PADDING:
                    out.write(bytes(header[item]["shape"][0]))
                    continue
                tensor = make(item)
                if (tensor.dtype, tuple(tensor.shape)) != (spec[item][0], tuple(spec[item][1])):
                    raise ValueError(f"{item}: made {tensor.dtype} {tuple(tensor.shape)}, announced {spec[item]}")
                out.write(tensor.detach().to("cpu").contiguous().view(-1).view(torch.uint8).numpy().data)
                del tensor
            out.flush()
            os.fsync(out.fileno())  # whole before it takes its name: a crash leaves no short file behind it
        os.replace(staging, path)
        staging = None
        logger.info("kept %s (%.1f GiB) in %s", metadata["name"], offset / 2 ** 30, path)
        return True
    except OSError as error:
        logger.info("not keeping %s: %s", metadata["name"], error)
        return False
    finally:
        if staging is not None and os.path.exists(staging):
            os.unlink(staging)


def _remove_older_versions(path: Path, metadata: dict[str, str]) -> None:
    """Remove the kept files of the same name made from an earlier version of the same files."""
    from safetensors import safe_open

    for other in path.parent.glob("*.safetensors"):
        if other == path:
            continue
        try:
            with safe_open(str(other), framework="pt") as handle:
                theirs = handle.metadata() or {}
            if theirs.get("name") == metadata["name"] and theirs.get("files") == metadata["files"]:
                other.unlink()
        except Exception:  # another process's file, half gone, unreadable: not ours to judge
            continue


def clear_memory() -> None:
    """Forget the values kept in this process (the files stay)."""
    with _LOCK:
        _MEMORY.clear()


__all__ = ["cache_folder", "cached", "cached_tensors", "clear_memory", "files_fingerprint", "mark_source"]
