"""Freed memory kept in the process for reuse while it generates pictures (glibc only).

PyTorch's CPU tensors come from malloc. glibc serves large blocks with fresh
mappings (over its mmap threshold, which it raises to 32 MB at most) and gives
freed memory at the top of its heap back to the OS (over its trim threshold).
A diffusion model allocates and frees the same large activations at every
step, so each step faults them in again, page by page: on a 2-core Zen 4, a
full-size Kandinsky 2.2 UNet step at 512 px took 0.8-1.1 million page faults
in fp32 (11.5-12.3 s; 8.9-9.2 s with none), 280 000 in bf16, and a MoVQ decode
430 000.

:func:`keep_freed_memory` turns both off for the rest of the process: large
blocks come from the heap (a thread's arena that cannot hold one falls back
to the main heap) and freed memory stays mapped, to be reused without faults.
The numbers computed are the same bits; what changes is that the process keeps
its peak memory until it exits (the peak itself is reached either way). The
generation body calls it at every picture and the fast mode when it starts;
``SFUMATO_KEEP_FREED_MEMORY=0`` in the environment leaves glibc as it is.

There is no "undo": glibc's own tuning (its thresholds follow the sizes
freed) stops once they are set, and cannot be restored exactly, so a process
that has started keeping memory goes on keeping it.
"""

from __future__ import annotations

import os
import threading
from typing import Any

__all__ = ["keep_freed_memory", "freed_memory_kept"]

_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4  # mallopt's options, from glibc's malloc.h
KEPT = {_M_TRIM_THRESHOLD: 2**31 - 1, _M_MMAP_MAX: 0}

_lock = threading.Lock()
_state: dict[str, Any] = {"kept": False, "tried": False}


def _mallopt() -> Any:
    """glibc's ``mallopt``, or None on another C library or platform."""
    import ctypes
    import platform

    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return None
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return mallopt


def _apply(values: dict[int, int]) -> bool:
    mallopt = _mallopt()
    return mallopt is not None and all(mallopt(option, value) == 1 for option, value in values.items())


def keep_freed_memory() -> bool:
    """From now on, freed memory stays in the process (see the module's note). True if it does.

    Idempotent and cheap after the first call; False on other C libraries, or when
    ``SFUMATO_KEEP_FREED_MEMORY=0``.
    """
    if _state["kept"] or _state["tried"]:
        return _state["kept"]
    with _lock:
        if not _state["tried"]:
            _state["tried"] = True
            if os.environ.get("SFUMATO_KEEP_FREED_MEMORY", "1").strip().lower() not in ("0", "false", "no", "off"):
                _state["kept"] = _apply(KEPT)
    return _state["kept"]


def freed_memory_kept() -> bool:
    """Whether this process keeps freed memory (``keep_freed_memory`` has run and worked)."""
    return _state["kept"]
