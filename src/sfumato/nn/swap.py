"""Swapping a model's layers to a subclass with another ``forward`` and back, in place (same parameters,
same state dict): how the fast mode's Winograd/GEMM and int8 layers go in and come out."""

from __future__ import annotations

from typing import Any, Callable, Mapping

from torch import nn


def qualifying_layers(model: nn.Module, plain: type, qualifies: Callable[[nn.Module], bool]) -> list[str]:
    """The names of the layers of exactly type ``plain`` that ``qualifies``: what :func:`swap_layers` swaps."""
    return [name for name, module in model.named_modules() if type(module) is plain and qualifies(module)]


def swap_layers(model: nn.Module, plain: type, fast: type, qualifies: Callable[[nn.Module], bool],
                prepared: Mapping[str, Any] | None = None) -> int:
    """Every layer of exactly type ``plain`` that ``qualifies`` becomes a ``fast`` (its ``prepare()`` run when it
    has one, given ``prepared[name]`` when there is such an entry); returns how many."""
    count = 0
    for name in qualifying_layers(model, plain, qualifies):
        module = model.get_submodule(name)
        module.__class__ = fast
        if hasattr(module, "prepare"):
            if prepared is not None and name in prepared:
                module.prepare(prepared[name])
            else:
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
