"""The output folder of a batch: its pictures, its manifest, and what a re-run finds done.

Pictures are written by the driver alone, atomically, with their parameters
(:func:`sfumato.metadata.write_png`), so a picture under its name is always
whole: a re-run counts a job done when its file is there, and makes the rest.

``manifest.jsonl`` has one JSON object per picture (``where``, ``line``,
``output``, ``status``, ``seconds``, ``error``, ``worker``, ``run``, ``key``).
While a run goes, a line is appended as each picture ends, so the file tells
how far a crashed run got (the last line for a key wins); when the run ends,
or is interrupted, the file is rewritten atomically with one line per
picture of the job file, in its order. Statuses: ``done``, ``failed``,
``pending`` (not reached: interrupted) and ``invalid`` (a job that did not
pass the checks; it has no ``key`` or ``output``).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable

from ..cli.errors import UsageError

MANIFEST = "manifest.jsonl"
LOCK = ".sfumato-batch.lock"


class Store:
    """One batch's output folder, held (locked) by one run at a time."""

    def __init__(self, folder: str):
        self.folder = Path(folder).expanduser()
        if self.folder.exists() and not self.folder.is_dir():
            raise UsageError(f"--out {folder!r} is a file; name a folder for the pictures and the manifest")
        from ..cli.commands import _check_writable

        _check_writable(self.folder, "--out", folder)
        self.manifest = self.folder / MANIFEST
        self._lock = None
        self._log = None

    # -- one run at a time

    def lock(self) -> None:
        """Refuse a second run on the same folder: two runs would make the same pictures twice."""
        try:
            import fcntl
        except ImportError:  # not on POSIX: no lock
            return
        handle = open(self.folder / LOCK, "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            raise UsageError(f"another `sfumato batch` is writing to {str(self.folder)!r}; wait for it to end "
                             f"or use another --out") from None
        self._lock = handle

    def close(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None
        if self._lock is not None:
            self._lock.close()  # releases the lock
            self._lock = None

    def remove_partial_files(self) -> int:
        """Delete temporary files of pictures whose writing was cut off (a killed run); returns how many."""
        removed = 0
        for path in self.folder.glob(".*.png.*.partial"):
            try:
                path.unlink()
                removed += 1
            except FileNotFoundError:
                pass
        return removed

    # -- what earlier runs did

    def done(self, name: str) -> bool:
        return (self.folder / name).is_file()

    def previous(self) -> tuple[dict[str, dict[str, Any]], int]:
        """(the last manifest entry of each picture key, the last run number) of earlier runs."""
        entries: dict[str, dict[str, Any]] = {}
        last_run = 0
        if not self.manifest.is_file():
            return entries, last_run
        with open(self.manifest, encoding="utf-8", errors="replace") as stream:
            for line in stream:
                try:
                    entry = json.loads(line)
                except json.JSONDecodeError:  # the last line of a run killed while writing it
                    continue
                if not isinstance(entry, dict):
                    continue
                if isinstance(entry.get("run"), int):
                    last_run = max(last_run, entry["run"])
                if isinstance(entry.get("key"), str):
                    entries[entry["key"]] = entry
        return entries, last_run

    # -- this run

    def append(self, entry: dict[str, Any]) -> None:
        if self._log is None:
            self._log = open(self.manifest, "a", encoding="utf-8")
        self._log.write(json.dumps(entry, ensure_ascii=False) + "\n")
        self._log.flush()

    def rewrite(self, entries: Iterable[dict[str, Any]]) -> Path:
        """The manifest as one line per picture, replacing the appended log atomically."""
        if self._log is not None:
            self._log.close()
            self._log = None
        handle, temporary = tempfile.mkstemp(dir=self.folder, prefix=f".{MANIFEST}.", suffix=".partial")
        try:
            with os.fdopen(handle, "w", encoding="utf-8") as stream:
                for entry in entries:
                    stream.write(json.dumps(entry, ensure_ascii=False) + "\n")
                stream.flush()
                os.fsync(stream.fileno())
            os.chmod(temporary, 0o666 & ~_umask())  # mkstemp's 0600 would hide it from others
            os.replace(temporary, self.manifest)
        except BaseException:
            try:
                os.unlink(temporary)
            except FileNotFoundError:
                pass
            raise
        return self.manifest


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
