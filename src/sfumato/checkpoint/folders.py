"""Writing a checkpoint folder all at once: into a temporary sibling, then renamed into place."""

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
