"""Weight files: finding, reading and writing state dicts in the diffusers layout.

A component folder holds one of (``<v>`` is an optional variant such as ``fp16``):

- ``diffusion_pytorch_model[.<v>].safetensors``
- ``diffusion_pytorch_model.safetensors.index[.<v>].json`` plus its shards
- the same two with ``.bin`` (pickle; read only with ``weights_only=True``)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import BinaryIO

import torch

from .errors import CheckpointError

WEIGHTS_STEM = "diffusion_pytorch_model"


def check_variant(variant: str | None) -> str | None:
    """A variant is a short name such as ``fp16`` that becomes part of file names: nothing that leaves a folder."""
    import re

    if variant is not None and (not isinstance(variant, str) or not re.fullmatch(r"[A-Za-z0-9_-]{1,32}", variant)):
        raise ValueError(f"variant must be a short name of letters, digits, '-' or '_' such as 'fp16', "
                         f"got {variant!r:.60}")
    return variant


def with_variant(filename: str, variant: str | None) -> str:
    """``a.b.safetensors`` with variant ``fp16`` -> ``a.b.fp16.safetensors``."""
    if not variant:
        return filename
    head, _, ext = filename.rpartition(".")
    return f"{head}.{variant}.{ext}"


def find_weights(folder: Path, variant: str | None = None, use_safetensors: bool | None = None,
                 stem: str = WEIGHTS_STEM) -> list[Path]:
    """The weight files in ``folder`` to load, safetensors preferred; raises if there are none."""
    formats = ["safetensors", "bin"]
    if use_safetensors is True:
        formats = ["safetensors"]
    elif use_safetensors is False:
        formats = ["bin"]
    for ext in formats:
        single = folder / with_variant(f"{stem}.{ext}", variant)
        if single.is_file():
            return [single]
        index = folder / with_variant(f"{stem}.{ext}.index.json", variant)
        if index.is_file():
            return _shards_from_index(index)
    looked_for = ", ".join(with_variant(f"{stem}.{ext}", variant) for ext in formats)
    present = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []
    hint = ""
    if variant and any(name.startswith(stem) and f".{variant}." not in name for name in present):
        hint = f"; the folder has weights without the {variant!r} variant: drop variant= to load them"
    elif not variant and any(name.startswith(stem + ".") and name.count(".") > 1 and "index" not in name for name in present):
        hint = "; the folder only has variant weights: pass variant= (e.g. variant='fp16')"
    raise CheckpointError(f"no weights in {str(folder)!r}: looked for {looked_for} (or a sharded index){hint}")


def _shards_from_index(index: Path) -> list[Path]:
    from .config import read_json

    weight_map = read_json(index, what="shard index").get("weight_map")
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise CheckpointError(f"shard index {str(index)!r}: weight_map must map tensor names to file names")
    names = sorted(set(weight_map.values()))
    # a shard is a file beside the index, never a path that leads elsewhere
    outside = [n for n in names if Path(n).name != n or n in ("", ".", "..")]
    if outside:
        raise CheckpointError(f"shard index {str(index)!r} names files outside its folder: {outside[:3]}; "
                              f"shards must be plain file names in that folder")
    shards = [index.parent / name for name in names]
    missing = [p.name for p in shards if not p.is_file()]
    if missing:
        raise CheckpointError(f"shard index {str(index)!r} names missing shard files: {missing[:3]}")
    return shards


def read_state_dict(files: list[Path], device: str | torch.device = "cpu",
                    dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """Read and merge the tensors of every file; pickle files only with ``weights_only=True``.

    With ``dtype``, floating tensors come back in that dtype, converted file by
    file and tensor by tensor, so a model never exists twice in memory: a
    safetensors file already in ``dtype`` is memory-mapped (its tensors are the
    file's pages, no copy); any other is read one tensor at a time, each
    converted before the next is read.
    """
    state: dict[str, torch.Tensor] = {}
    for path in files:
        state.update(_read_one(path, device, dtype))
    return state


def _read_one(path: Path, device, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            if dtype is not None and str(device) == "cpu" and not _safetensors_in_dtype(path, dtype):
                return _read_safetensors_converted(path, dtype)
            return load_file(str(path), device=str(device))
        except (SafetensorError, OSError, ValueError, RuntimeError) as error:
            size = path.stat().st_size if path.exists() else 0
            raise CheckpointError(
                f"weights file {str(path)!r} ({size} bytes) is truncated or corrupt: {error}"
            ) from None
    try:
        state = torch.load(str(path), map_location=device, weights_only=True)
    except Exception as error:  # pickle raises many types; all mean the file is unusable
        raise CheckpointError(f"weights file {str(path)!r} could not be read safely: {error}") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"weights file {str(path)!r} holds a {type(state).__name__}, not a state dict")
    if dtype is not None:
        for name, tensor in state.items():
            if isinstance(tensor, torch.Tensor) and tensor.is_floating_point():
                state[name] = tensor.to(dtype)
    return state


# safetensors dtype names -> torch dtypes
_SAFETENSORS_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
}


def safetensors_dtype_name(dtype: torch.dtype) -> str:
    """The safetensors name of ``dtype`` ("F32", "BF16", "I8", ...)."""
    for name, known in _SAFETENSORS_DTYPES.items():
        if known == dtype:
            return name
    raise ValueError(f"dtype {dtype} has no safetensors name")


def _safetensors_header(source: Path | BinaryIO) -> tuple[dict, int]:
    """The JSON header of a safetensors file (tensor name -> dtype, shape, byte range) and where data starts;
    ``source`` is the file's path, or the file open for binary reading (read from its start)."""
    if isinstance(source, (str, Path)):
        with open(source, "rb") as handle:
            return _safetensors_header(handle)
    source.seek(0)
    size = int.from_bytes(source.read(8), "little")
    if size <= 0 or size > 100_000_000:
        raise ValueError(f"header size {size} is not plausible")
    header = json.loads(source.read(size))
    if not isinstance(header, dict):
        raise ValueError("header is not a JSON object")
    header.pop("__metadata__", None)
    return header, 8 + size


def _safetensors_in_dtype(path: Path, dtype: torch.dtype) -> bool:
    """Whether every floating tensor of the file is stored in ``dtype`` already (so it can be mapped as is)."""
    header, _ = _safetensors_header(path)
    for info in header.values():
        stored = _SAFETENSORS_DTYPES.get(info.get("dtype"))
        if stored is None:
            return True  # a dtype we do not read ourselves: leave the file to safetensors
        if stored.is_floating_point and stored != dtype:
            return False
    return True


def _read_safetensors_converted(path: Path, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Every tensor of a safetensors file, read one at a time (not mapped) and floating ones converted to ``dtype``.

    Only one tensor in the file's dtype exists at a time; the file's pages stay
    in the page cache instead of the process.
    """
    return dict(iter_tensors(path, dtype))


def iter_tensors(path: Path, dtype: torch.dtype | None = None):
    """``(name, tensor)`` for each tensor of a weights file, read one at a time, floating ones in ``dtype``.

    A safetensors file is read with plain reads, not mapped, so a caller that
    turns each tensor into something else (another dtype, int8) holds one
    original at a time and none of the file's pages.
    """
    import sys

    convert = (lambda t: t.to(dtype) if dtype is not None and t.is_floating_point() else t)
    if path.suffix != ".safetensors" or sys.byteorder != "little":  # safetensors is little-endian
        for name, tensor in _read_one(path, "cpu").items():
            yield name, convert(tensor)
        return
    try:
        header, data_start = _safetensors_header(path)
    except (OSError, ValueError) as error:
        raise CheckpointError(f"weights file {str(path)!r} is truncated or corrupt: {error}") from None
    with open(path, "rb", buffering=0) as handle:
        for name, info in sorted(header.items(), key=lambda item: item[1]["data_offsets"][0]):
            stored = _SAFETENSORS_DTYPES[info["dtype"]]
            begin, end = info["data_offsets"]
            raw = torch.empty(end - begin, dtype=torch.uint8)
            handle.seek(data_start + begin)
            if end > begin and handle.readinto(raw.numpy()) != end - begin:
                raise CheckpointError(f"weights file {str(path)!r} is truncated or corrupt: tensor {name!r} ends "
                                      f"past the end of the file")
            yield name, convert(raw.view(stored).reshape(info["shape"]))
            del raw


def shard_size_bytes(max_shard_size: int | str) -> int:
    """``max_shard_size`` (bytes, or a string such as ``"10GB"`` / ``"500MiB"``) as a positive byte count."""
    from ..limits import parse_bytes

    wrong = ValueError(f"max_shard_size must be a positive size such as 10_000_000 or '10GB', got {max_shard_size!r}")
    if isinstance(max_shard_size, bool) or not isinstance(max_shard_size, (int, str)):
        raise wrong
    try:
        size = parse_bytes(max_shard_size)
    except ValueError:
        raise wrong from None
    if size < 1:
        raise wrong
    return size


def write_state_dict(
    state: dict[str, torch.Tensor],
    folder: Path,
    variant: str | None = None,
    safe_serialization: bool = True,
    max_shard_size: int | str = "10GB",
    stem: str = WEIGHTS_STEM,
) -> list[str]:
    """Write ``state`` into ``folder`` (sharding past ``max_shard_size``); returns the file names."""
    from huggingface_hub import split_torch_state_dict_into_shards

    ext = "safetensors" if safe_serialization else "bin"
    pattern = with_variant(f"{stem}.{ext}", variant).replace(f".{ext}", f"{{suffix}}.{ext}")
    split = split_torch_state_dict_into_shards(state, max_shard_size=shard_size_bytes(max_shard_size),
                                               filename_pattern=pattern)
    written = []
    for filename, names in split.filename_to_tensors.items():
        shard = {name: state[name].detach().contiguous() for name in names}
        if safe_serialization:
            from safetensors.torch import save_file

            save_file(_unshare(shard), str(folder / filename), metadata={"format": "pt"})
        else:
            torch.save(shard, str(folder / filename))
        written.append(filename)
    if split.is_sharded:
        index_name = with_variant(f"{stem}.{ext}.index.json", variant)
        index = {"metadata": dict(split.metadata), "weight_map": split.tensor_to_filename}
        (folder / index_name).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        written.append(index_name)
    return written


def _unshare(shard: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """safetensors refuses tensors sharing storage (tied weights): give each its own copy."""
    seen: set[int] = set()
    out = {}
    for name, tensor in shard.items():
        ptr = tensor.untyped_storage().data_ptr() if tensor.device.type != "meta" else id(tensor)
        out[name] = tensor.clone() if ptr in seen else tensor
        seen.add(ptr)
    return out
