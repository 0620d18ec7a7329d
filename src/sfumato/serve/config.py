"""What one ``sfumato serve`` process offers and allows: address, models, tokens, data folder, limits."""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, field
from pathlib import Path

from .. import limits as library_limits
from ..cli.errors import UsageError

#: Environment variable holding the token (several may be given, separated by commas).
TOKEN_ENV = "SFUMATO_TOKEN"
MIN_TOKEN_LENGTH = 16


@dataclass
class Limits:
    """Bounds on one request, refused up front with a message naming the field and the bound.

    The library's own bounds (``sfumato.limits``: side, pictures per call,
    estimated memory) apply as well; these are the server's, usually tighter.
    """

    max_steps: int = 200  # steps and prior_steps of one picture
    max_side: int = field(default_factory=lambda: min(library_limits.max_side(), 2048))
    max_images: int = field(default_factory=lambda: min(library_limits.max_images(), 16))  # pictures per job
    max_upload: int = 20 * 2**20  # bytes of one uploaded picture file
    max_pixels: int = 4096 * 4096  # decoded pixels of one uploaded picture
    max_chain_steps: int = 16
    max_items: int = 16  # interpolate: prompts and pictures mixed
    max_prompt: int = 2000  # characters of one prompt
    max_queued: int = 1000  # unfinished jobs per caller

    @property
    def max_body(self) -> int:
        # a few pictures as base64 (4/3 of their size) plus the JSON around them
        return 4 * (self.max_upload * 4 // 3) + 2**20

    def public(self) -> dict:
        return {name: getattr(self, name) for name in ("max_steps", "max_side", "max_images", "max_upload",
                                                       "max_pixels", "max_chain_steps", "max_items", "max_prompt",
                                                       "max_queued")}


@dataclass
class ServeConfig:
    host: str = "127.0.0.1"
    port: int = 7860
    models: list[str] = field(default_factory=lambda: ["builtin"])
    tokens: list[str] = field(default_factory=list)
    data: Path = field(default_factory=lambda: Path("sfumato-data"))
    device: str | None = None  # None: cuda when there is one, else cpu
    limits: Limits = field(default_factory=Limits)
    start_worker: bool = True  # tests may hold the queue still
    max_attempts: int = 3  # a job the server died in this often is failed rather than run again

    def check(self) -> "ServeConfig":
        """Refuse settings that would expose the server: a non-loopback address without a token."""
        if not self.models:
            raise UsageError("--model: give at least one model")
        for token in self.tokens:
            if len(token) < MIN_TOKEN_LENGTH or not token.isprintable() or " " in token:
                raise UsageError(f"--token must be at least {MIN_TOKEN_LENGTH} printable characters without spaces "
                                 f"(e.g. python -c 'import secrets; print(secrets.token_urlsafe())')")
        if not is_loopback(self.host) and not self.tokens:
            raise UsageError(f"--host {self.host} is not a loopback address: anyone who can reach it could use the "
                             f"server, so it needs --token TOKEN (or ${TOKEN_ENV}); every request must then carry "
                             f"the token")
        if not 0 <= self.port <= 65535:
            raise UsageError(f"--port must be from 0 to 65535, got {self.port}")
        return self


def is_loopback(host: str) -> bool:
    name = host.strip("[]").lower()
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def tokens_from(given: list[str] | None) -> list[str]:
    """--token values, else ``$SFUMATO_TOKEN`` (comma-separated)."""
    if given:
        return list(given)
    return [t.strip() for t in os.environ.get(TOKEN_ENV, "").split(",") if t.strip()]
