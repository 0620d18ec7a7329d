"""Swapping a model's layers to a subclass with another ``forward`` and back, in place (same parameters,
same state dict): how the fast mode's Winograd/GEMM and int8 layers go in and come out."""

from __future__ import annotations

from typing import Callable

from torch import nn


def swap_layers(model: nn.Module, plain: type, fast: type, qualifies: Callable[[nn.Module], bool]) -> int:
    """Every layer of exactly type ``plain`` that ``qualifies`` becomes a ``fast`` (its ``prepare()`` run when it
    has one); returns how many."""
    count = 0
    for module in model.modules():
        if type(module) is plain and qualifies(module):
            module.__class__ = fast
            if hasattr(module, "prepare"):
                module.prepare()
            count += 1
    return count


def restore_layers(model: nn.Module, fast: type, plain: type, drop: tuple[str, ...] = ()) -> None:
    """Undo :func:`swap_layers`: every ``fast`` layer is a ``plain`` one again, its ``drop`` attributes removed."""
    for module in model.modules():
        if type(module) is fast:
            for name in drop:
                module.__dict__.pop(name, None)
            module.__class__ = plain
