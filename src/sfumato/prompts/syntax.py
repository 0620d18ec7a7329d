"""The prompt weighting syntax: text -> fragments with weights (see the package docstring for the rules)."""

from __future__ import annotations

import math
import re

# how much ( ) and [ ] change a weight, as AUTOMATIC1111's web UI does
ROUND_FACTOR = 1.1
SQUARE_FACTOR = 1 / 1.1

_ESCAPABLE = "()[]\\:"
# what may follow a ':' inside round brackets: a number, then the closing bracket
_WEIGHT = re.compile(r":\s*([+-]?(?:\d+\.?\d*|\.\d+))\s*\)")
_SHOWN = 60


class PromptSyntaxError(ValueError):
    """Malformed weighting syntax; ``position`` is the 0-based index of the offending character."""

    def __init__(self, name: str, text: str, position: int, problem: str):
        self.name, self.text, self.position, self.problem = name, text, position, problem
        start = max(position - _SHOWN // 2, 0)
        excerpt = ("..." if start else "") + text[start:position] + "\u2038" + text[position:position + _SHOWN // 2]
        if position + _SHOWN // 2 < len(text):
            excerpt += "..."
        super().__init__(f"{name}: at position {position} (0-based, marked \u2038 in {excerpt!r}): {problem}")


def parse_prompt(text: str, name: str = "prompt") -> list[tuple[str, float]]:
    """``text`` -> ``[(fragment, weight), ...]``: neighbours of equal weight merged, escapes resolved.

    A prompt without weighting syntax gives ``[(text, 1.0)]``; the empty prompt ``[("", 1.0)]``.
    Raises ``PromptSyntaxError`` (a ``ValueError``) naming ``name`` and the position of the first mistake.
    """
    if not isinstance(text, str):
        raise TypeError(f"{name} must be a string, got {type(text).__name__}")
    pieces: list[list] = []  # [text, weight]; a bracket starts a new piece
    open_brackets: list[tuple[str, int, int]] = []  # (bracket, index of its first piece, position)
    fresh = True

    def add(character: str) -> None:
        nonlocal fresh
        if fresh or not pieces:
            pieces.append(["", 1.0])
            fresh = False
        pieces[-1][0] += character

    def close(position: int, bracket: str, factor: float) -> None:
        nonlocal fresh
        if not open_brackets:
            raise PromptSyntaxError(name, text, position, f"{bracket!r} closes no bracket (write \\{bracket} for "
                                                          f"a literal {bracket!r})")
        opened, first, where = open_brackets.pop()
        expected = ")" if opened == "(" else "]"
        if bracket != expected:
            raise PromptSyntaxError(name, text, position, f"{bracket!r} closes the {opened!r} opened at position "
                                                          f"{where}, which needs {expected!r}")
        for piece in pieces[first:]:
            piece[1] *= factor
        fresh = True

    position = 0
    while position < len(text):
        character = text[position]
        if character == "\\" and position + 1 < len(text) and text[position + 1] in _ESCAPABLE:
            add(text[position + 1])
            position += 2
            continue
        if character in "([":
            open_brackets.append((character, len(pieces), position))
            fresh = True
        elif character == ")":
            close(position, ")", ROUND_FACTOR)
        elif character == "]":
            close(position, "]", SQUARE_FACTOR)
        elif character == ":" and open_brackets and open_brackets[-1][0] == "(":
            match = _WEIGHT.match(text, position)
            if match is None:
                raise PromptSyntaxError(name, text, position, "':' inside '(' must be followed by a weight and ')', "
                                                              "as in (word:1.3) (write \\: for a literal ':')")
            weight = float(match.group(1))
            if not math.isfinite(weight):
                raise PromptSyntaxError(name, text, position + 1, f"the weight {match.group(1)!r} is not finite")
            # the weight replaces the 1.1 of the round brackets
            close(match.end() - 1, ")", weight)
            position = match.end()
            continue
        elif character == ":" and open_brackets:
            raise PromptSyntaxError(name, text, position, "':' inside '[' (prompt editing, [from:to:when]) is not "
                                                          "supported (write \\: for a literal ':')")
        else:
            add(character)
        position += 1
    if open_brackets:
        opened, _, where = open_brackets[-1]
        closing = ")" if opened == "(" else "]"
        raise PromptSyntaxError(name, text, where, f"{opened!r} is never closed (add {closing!r}, or write "
                                                   f"\\{opened} for a literal {opened!r})")
    merged: list[tuple[str, float]] = []
    for fragment, weight in pieces:
        if not fragment:
            continue
        if merged and merged[-1][1] == weight:
            merged[-1] = (merged[-1][0] + fragment, weight)
        else:
            merged.append((fragment, weight))
    return merged or [("", 1.0)]


def has_weighting(text: str) -> bool:
    """Whether ``text`` uses any of the syntax (brackets, escapes), i.e. whether parsing can change it."""
    return any(character in text for character in "()[]\\")


def plain_text(text: str, name: str = "prompt") -> str:
    """``text`` with the syntax removed: what the encoder reads, without the weights."""
    return "".join(fragment for fragment, _ in parse_prompt(text, name))
