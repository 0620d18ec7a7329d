"""Checkpoint folders: written all at once (a temporary sibling renamed into place), and the pipelines
a folder's model card connects it to."""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from pathlib import Path
from typing import Iterator

from .errors import CheckpointError


@contextlib.contextmanager
def atomic_folder(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a fresh temporary folder that replaces ``target`` only if the block succeeds.

    On any error the temporary folder is removed and ``target`` is left as it was,
    so a failed save never leaves a half-written checkpoint behind.
    """
    target = Path(target).expanduser()
    if target.exists() and not target.is_dir():
        raise CheckpointError(f"save_directory {str(target)!r} is a file; it must be a folder")
    target.parent.mkdir(parents=True, exist_ok=True)
    token = uuid.uuid4().hex[:8]
    staging = target.parent / f".{target.name}.saving-{token}"
    staging.mkdir()
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    old = target.parent / f".{target.name}.old-{token}"
    if target.exists():
        os.replace(target, old)
    os.replace(staging, target)
    shutil.rmtree(old, ignore_errors=True)


def connected_pipeline(folder: str | os.PathLike, prefix: str = "prior") -> str | Path | None:
    """The pipeline a folder's model card names under ``prefix`` (``prior: [org/name]`` or ``../prior``).

    A path relative to the folder comes back as that folder (a self-contained
    model keeps its parts side by side); anything else as written (a hub id).
    ``None`` when the folder has no model card or it names nothing.
    """
    readme = Path(folder) / "README.md"
    if not readme.is_file():
        return None
    from huggingface_hub import ModelCard

    try:
        data = ModelCard.load(readme).data
    except Exception:  # a broken model card names nothing
        return None
    sources = getattr(data, prefix, None) or []
    source = sources[0] if isinstance(sources, list) and sources else sources
    if not source or not isinstance(source, str):
        return None
    local = Path(folder) / source
    if not Path(source).is_absolute() and local.is_dir():
        return local
    return source
