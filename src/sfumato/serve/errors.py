"""The API's errors: a status, a message and the request field it is about.

The command line's checks (``sfumato.cli.jobs``) are reused as they are; their
messages name command-line flags (``--steps``, ``--size``, ``IMAGE``), which
:func:`from_usage` turns into the field names of the job record (``steps``,
``width``, ``image``) that an API client sent.
"""

from __future__ import annotations

import re

from ..cli.errors import UsageError


class ApiError(Exception):
    """A request the server refuses: ``status`` (4xx), ``message``, and the ``field`` it is about."""

    def __init__(self, status: int, message: str, field: str | None = None):
        super().__init__(message)
        self.status, self.message, self.field = status, message, field

    def body(self) -> dict:
        body = {"detail": self.message, "field": self.field}
        position = syntax_position(self.message)
        if position is not None:  # a prompt's weighting syntax: where the mistake is (0-based)
            body["position"] = position
        return body


# command-line wording -> job record field, longest first so that --prior-steps is not read as --prior
_FLAGS = [
    ("--size width", "width"), ("--size height", "height"), ("--prior-steps", "prior_steps"),
    ("--prior-guidance", "prior_guidance"), ("--keep-unmasked", "keep_unmasked"), ("--negative", "negative_prompt"),
    ("--scheduler", "scheduler"), ("--strength", "strength"), ("--guidance", "guidance"), ("--weights", "weights"),
    ("--device", "device"), ("--steps", "steps"), ("--model", "model"), ("--prior", "prior"), ("--dtype", "dtype"),
    ("--seed", "seed"), ("--size", "size"), ("--num", "num"), ("IMAGE", "image"), ("MASK", "mask"), ("HINT", "hint"),
    ("--noise-level", "noise_level"), ("--controlnet-scale", "controlnet_scale"), ("--controlnet", "controlnet"),
    ("--control-start", "control_start"), ("--control-end", "control_end"),
    ("--depth-model", "depth_model"), ("--preset", "preset"),
    ("PROMPT", "prompt"),
]
_FLAG_PATTERN = re.compile("|".join(f"(?<![\\w-]){re.escape(flag)}(?![\\w-])" for flag, _ in _FLAGS))
_FLAG_FIELD = dict(_FLAGS)
_RECORD_FIELDS = {"task", "model", "prior", "prompt", "negative_prompt", "seed", "steps", "guidance", "prior_steps",
                  "prior_guidance", "strength", "width", "height", "scheduler", "dtype", "device", "image", "mask",
                  "hint", "items", "weights", "keep_unmasked", "num", "noise_level", "controlnet", "controlnet_scale",
                  "control_start", "control_end",
                  "depth_model", "denoising_start", "denoising_end", "output_type", "weighting", "preset"}


def field_of(message: str) -> str | None:
    """The record field a command-line message is about (the first one it names)."""
    match = re.search(r"--size \S+: (width|height) ", message)
    if match:
        return match.group(1)
    match = re.search(r"unknown key '([^']+)'", message)
    if match:
        return match.group(1)
    match = _FLAG_PATTERN.search(message)
    if match:
        return _FLAG_FIELD[match.group(0)]
    match = re.match(r"(?:chain step \d+: )?([a-z_]+)\b", message)
    if match and match.group(1) in _RECORD_FIELDS:
        return match.group(1)
    for words, field in (("the prompt", "prompt"), ("each weight", "weights"), ("items", "items"),
                         ("keep_unmasked", "keep_unmasked"), ("names no task", "task"), ("unknown task", "task"),
                         ("the chain's seed", "seed"), ("chain", "chain")):
        if words in message:
            return field
    return None


_SYNTAX = re.compile(r"(?:^|: )(?:prompt|negative_prompt|items\[\d+\]): at position (\d+) \(0-based")


def syntax_position(message: str) -> int | None:
    """The 0-based position a prompt syntax error names (``prompt: at position 2 (0-based, ...``)."""
    match = _SYNTAX.search(message)
    return int(match.group(1)) if match else None


def api_message(message: str) -> str:
    """A command-line message in the API's words: record field names instead of flags."""
    message = message.replace("(or pass --no-weighting to read it as plain text)",
                              "(or send weighting: false to read it as plain text)")
    return _FLAG_PATTERN.sub(lambda match: _FLAG_FIELD[match.group(0)], " ".join(message.split()))


def from_usage(error: UsageError, status: int = 422, prefix: str = "") -> ApiError:
    message = str(error)
    return ApiError(status, prefix + api_message(message), field_of(message))
