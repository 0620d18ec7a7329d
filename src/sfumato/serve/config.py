"""What one ``sfumato serve`` process offers and allows: address, models, tokens, data folder, limits."""

from __future__ import annotations

import ipaddress
import json
import os
import re
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
    # folders the server's operator registers (--controlnet NAME=FOLDER, --depth-model NAME=FOLDER): name -> folder;
    # clients name them, never a folder of their own
    controlnets: dict[str, str] = field(default_factory=dict)
    depth_models: dict[str, str] = field(default_factory=dict)
    start_worker: bool = True  # tests may hold the queue still
    max_attempts: int = 3  # a job the server died in this often is failed rather than run again
    # finished jobs (and the uploads no remaining job names) are deleted this many days after they ended;
    # None keeps everything
    keep_days: float | None = None

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
        if self.keep_days is not None and not 0 < self.keep_days < float("inf"):
            raise UsageError(f"--keep-days must be a number of days above 0 (finished jobs older than that are "
                             f"deleted), got {self.keep_days}")
        self.controlnets = {name: check_controlnet(name, folder) for name, folder in self.controlnets.items()}
        self.depth_models = {name: check_depth_model(name, folder) for name, folder in self.depth_models.items()}
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


# ---------------------------------------------------------------------------------------- registered folders

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


def registrations(values: list[str] | None, option: str) -> dict[str, str]:
    """``NAME=FOLDER`` values of a repeatable option -> {name: folder}, refusing malformed and repeated names."""
    registered: dict[str, str] = {}
    for value in values or []:
        name, equals, folder = value.partition("=")
        name, folder = name.strip(), folder.strip()
        if not equals or not name or not folder:
            raise UsageError(f"{option} must be NAME=FOLDER (the name clients use, the folder on this machine), "
                             f"got {value!r}")
        check_name(name, option)
        if name in registered:
            raise UsageError(f"{option} {name}=...: the name {name!r} is given twice")
        registered[name] = folder
    return registered


def check_name(name: str, option: str) -> None:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise UsageError(f"{option} {name!r}=FOLDER: NAME must be 1 to 64 letters, digits, '_', '.' or '-', "
                         f"starting with a letter or digit")


def _folder(name: str, folder: str, option: str, what: str) -> Path:
    check_name(name, option)
    if not isinstance(folder, (str, os.PathLike)) or "\x00" in str(folder):
        raise UsageError(f"{option} {name}={folder!r}: FOLDER must be a folder of this machine")
    path = Path(folder).expanduser()
    if not path.is_dir():
        raise UsageError(f"{option} {name}={str(folder)!r}: no such folder (it must be a local {what} folder; "
                         f"nothing is downloaded)")
    return path.resolve()


def check_controlnet(name: str, folder: str) -> str:
    """The resolved folder of ``--controlnet NAME=FOLDER``, once it is known to hold a ControlNetModel."""
    from ..cli.models import parse_component

    path = _folder(name, folder, "--controlnet", "ControlNetModel")
    return parse_component(str(path), f"--controlnet {name}:", ("ControlNetModel",)).spec


def check_depth_model(name: str, folder: str) -> str:
    """The resolved folder of ``--depth-model NAME=FOLDER``, once it is known to hold a transformers
    depth-estimation model (its config names one) with its image processor."""
    option = "--depth-model"
    path = _folder(name, folder, option, "transformers depth-estimation model")
    where = f"{option} {name}={str(folder)!r}"
    try:
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UsageError(f"{where} is not a transformers model folder: it has no config.json") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise UsageError(f"{where}: cannot read its config.json: {error}") from None
    if not isinstance(config, dict):
        raise UsageError(f"{where}: its config.json is not a JSON object")
    architectures = config.get("architectures") or []
    known: dict[str, str] = {}
    try:
        from transformers.models.auto.modeling_auto import MODEL_FOR_DEPTH_ESTIMATION_MAPPING_NAMES as known
    except ImportError:  # an older or newer transformers: the class name says it
        pass
    depth = (config.get("model_type") in known and not architectures) or any(
        isinstance(name_, str) and (name_ in known.values() or name_.endswith("ForDepthEstimation"))
        for name_ in architectures)
    if not depth:
        shown_ = ", ".join(map(str, architectures)) or config.get("model_type") or "a model of no known kind"
        raise UsageError(f"{where} holds {shown_}, not a depth-estimation model (e.g. DPTForDepthEstimation, "
                         f"DepthAnythingForDepthEstimation)")
    if not (path / "preprocessor_config.json").is_file():
        raise UsageError(f"{where} has no preprocessor_config.json: the depth-estimation pipeline needs the model's "
                         f"image processor saved beside it")
    return str(path)
