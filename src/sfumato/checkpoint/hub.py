"""Where a checkpoint lives: a local folder, or a model hub id fetched on demand."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable

from .errors import CheckpointError

# keyword arguments of from_pretrained that only matter for hub downloads
HUB_KWARGS = ("cache_dir", "force_download", "local_files_only", "token", "revision", "proxies")


def split_hub_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Remove and return the hub-only keyword arguments from ``kwargs``."""
    return {name: kwargs.pop(name) for name in HUB_KWARGS if name in kwargs}


def resolve_folder(
    name_or_path: str | os.PathLike,
    subfolder: str | None = None,
    allow_patterns: Iterable[str] | None = None,
    **hub_kwargs: Any,
) -> Path:
    """Return the local folder for ``name_or_path`` (downloading it if it is a hub id)."""
    if not isinstance(name_or_path, (str, os.PathLike)):
        raise TypeError(
            f"pretrained_model_name_or_path must be a folder path or a hub id string, got {type(name_or_path).__name__}"
        )
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        folder = path
    elif path.exists():
        raise CheckpointError(f"{str(path)!r} is a file; pass the checkpoint folder that holds it")
    else:
        folder = _download(str(name_or_path), allow_patterns, hub_kwargs)
    if subfolder:
        folder = folder / subfolder
        if not folder.is_dir():
            raise CheckpointError(f"subfolder {subfolder!r} not found in checkpoint {str(name_or_path)!r}")
    return folder


def _download(repo_id: str, allow_patterns: Iterable[str] | None, hub_kwargs: dict[str, Any]) -> Path:
    looks_like_id = repo_id.count("/") <= 1 and not repo_id.startswith((".", "/", "~")) and repo_id.strip() == repo_id
    if not looks_like_id or not repo_id:
        raise CheckpointError(f"checkpoint folder {repo_id!r} does not exist (and it is not a hub id like 'org/name')")
    try:
        from huggingface_hub import snapshot_download

        kwargs = {k: v for k, v in hub_kwargs.items() if k in HUB_KWARGS and v is not None}
        kwargs.pop("proxies", None)
        local = snapshot_download(
            repo_id, allow_patterns=list(allow_patterns) if allow_patterns else None, **kwargs
        )
    except Exception as error:  # network, auth, missing repo: all end the same way for the user
        raise CheckpointError(
            f"could not fetch {repo_id!r} from the model hub ({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}). "
            f"No local folder of that name exists either: download the checkpoint elsewhere and pass its folder path, "
            f"e.g. from_pretrained('/path/to/{repo_id.split('/')[-1]}')"
        ) from None
    return Path(local)
