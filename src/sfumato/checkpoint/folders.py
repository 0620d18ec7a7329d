"""Checkpoint folders: written all at once (a temporary sibling renamed into place), and the pipelines
a folder's model card connects it to."""

from __future__ import annotations

import contextlib
import os
import re
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
    try:
        if target.exists():
            os.replace(target, old)
        try:
            os.replace(staging, target)
        except BaseException:
            if old.exists():
                os.replace(old, target)  # put the previous folder back
            raise
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    shutil.rmtree(old, ignore_errors=True)


# a model card's YAML block, as the hub reads it (huggingface_hub.repocard)
_FRONT_MATTER = re.compile(r"^(\s*---(?:\r\n|\r|\n))([\S\s]*?)((?:\r\n|\r|\n)---[ \t]*(\r\n|\n|$))")


def _front_matter(readme: Path) -> dict:
    """The YAML block at the top of a model card (``{}`` without one); read here rather than with
    huggingface_hub's ModelCard, whose import costs a slow machine half a second of every command."""
    import yaml

    with open(readme, encoding="utf-8", newline="") as file:
        match = _FRONT_MATTER.search(file.read())
    if match is None:
        return {}
    data = yaml.safe_load(match.group(2))
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError("repo card metadata block should be a dict")
    return data


def connected_pipeline(folder: str | os.PathLike, prefix: str = "prior") -> str | Path | None:
    """The pipeline a folder's model card names under ``prefix`` (``prior: [org/name]`` or ``../prior``).

    A path relative to the folder comes back as that folder (a self-contained
    model keeps its parts side by side); anything else as written (a hub id).
    ``None`` when the folder has no model card or it names nothing.
    """
    readme = Path(folder) / "README.md"
    if not readme.is_file():
        return None
    try:
        data = _front_matter(readme)
    except Exception as error:  # yaml raises several types for broken YAML
        raise CheckpointError(f"model card {str(readme)!r} has front matter that cannot be read "
                              f"({type(error).__name__}: {str(error)[:200]}); fix or remove its YAML block") from None
    sources = data.get(prefix)
    if sources is None or sources == []:
        return None
    source = sources[0] if isinstance(sources, list) else sources
    if not isinstance(source, str) or not source.strip():
        raise CheckpointError(f"model card {str(readme)!r}: {prefix} must name a folder or hub id "
                              f"(e.g. '{prefix}: [../{prefix}]'), got {sources!r:.80}")
    local = Path(folder) / source  # an absolute source stays itself
    if local.is_dir():
        if local.resolve() == Path(folder).resolve():
            raise CheckpointError(f"model card {str(readme)!r} names its own folder as its {prefix} "
                                  f"({source!r}); it must name the {prefix} pipeline's folder")
        return local
    return source
