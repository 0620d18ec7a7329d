"""Many pictures from a job file, on one machine or a Ray cluster (``sfumato batch``).

A job file lists jobs in the shape the PNG records and chain steps use
(:mod:`.jobfile`); every job is checked before any work, by the command
line's own checks. The pictures are made by long-lived workers, each with
its models loaded once (:mod:`.workers`: the command's own process or local
worker processes; :mod:`.cluster`: Ray actors), and written by the command
into the output folder under names derived from the jobs, beside a manifest
(:mod:`.store`). A re-run makes only what is missing; the pictures are
bit-identical whichever way and with however many workers they were made.

Submodules import on use: ``import sfumato.batch`` imports neither torch nor Ray.
"""

from __future__ import annotations

__all__ = ["command"]


def command(args) -> int:
    """Run ``sfumato batch`` with parsed arguments (see :mod:`sfumato.batch.runner`)."""
    from .runner import command as run

    return run(args)
