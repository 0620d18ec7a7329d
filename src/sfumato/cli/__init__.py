"""The ``sfumato`` command line: every workflow of the guides, with reproducible PNGs.

It runs Kandinsky 2.1 / 2.2 / 3, Stable Diffusion 1.x / 2.x and SDXL (base,
refiner, inpainting) checkpoints, Stable Diffusion ControlNets and the x2 / x4
upscalers.

    sfumato generate PROMPT            text to image
    sfumato img2img IMAGE PROMPT       image to image (--strength)
    sfumato inpaint IMAGE MASK PROMPT  repaint where MASK is white
    sfumato interpolate ITEM ...       mix prompts and pictures (--weights)
    sfumato controlnet HINT PROMPT     text to image shaped by a hint picture
    sfumato upscale IMAGE              x4 / x2 latent Stable Diffusion upscaling
    sfumato chain FILE                 a YAML / JSON list of steps (pictures or latents handed on)
    sfumato info IMAGE.png             the parameters stored in a PNG
    sfumato reproduce IMAGE.png        the same pixels again
    sfumato batch JOBS --out DIR       many pictures from a job file, locally or on Ray
    sfumato serve                      HTTP API with a durable queue, and a web page

``main`` is the entry point of both ``sfumato`` and ``python -m sfumato``.
User mistakes end with one ``sfumato: error: ...`` line on stderr and a
non-zero status, never a traceback (``SFUMATO_DEBUG=1`` shows it).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import warnings
from typing import Iterator, Sequence

from .errors import UsageError

__all__ = ["main", "UsageError"]

#: Exit statuses: argparse's 2 for usage errors, 1 for failures while running, 130 for Ctrl-C.
EXIT_USAGE, EXIT_FAILURE, EXIT_INTERRUPTED = 2, 1, 130


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line with ``argv`` (default: ``sys.argv[1:]``) and return the exit status."""
    from .parser import build_parser

    debug = os.environ.get("SFUMATO_DEBUG", "") not in ("", "0")
    try:
        parser = build_parser()
        try:
            args = parser.parse_args(argv)
        except SystemExit as done:  # --help and --version end here
            return int(done.code or 0)
        if args.command is None:
            raise UsageError("choose a command: generate, img2img, inpaint, interpolate, controlnet, upscale, chain, "
                             "info, reproduce, batch or serve (see `sfumato --help`)")
        from .commands import COMMANDS

        with _library_output(quiet=getattr(args, "quiet", False)):
            return COMMANDS[args.command](args)
    except KeyboardInterrupt:
        print("sfumato: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except UsageError as error:
        if debug:
            raise
        _error(str(error))
        return EXIT_USAGE
    except (ValueError, OSError, RuntimeError) as error:
        # the library's own errors (CheckpointError, bad pipeline arguments) are ValueErrors whose
        # message names the problem; OSError and RuntimeError cover disks and devices
        if debug:
            raise
        _error(_describe(error))
        return EXIT_FAILURE


def _error(message: str) -> None:
    print(f"sfumato: error: {' '.join(message.split())}", file=sys.stderr, flush=True)


def _describe(error: BaseException) -> str:
    message = str(error) or type(error).__name__
    if isinstance(error, (OSError, RuntimeError)) and type(error).__name__ not in message:
        message = f"{type(error).__name__}: {message}"
    return message


class _OneLine(logging.Formatter):
    """``sfumato: warning: message`` on one line, as the command line's own messages."""

    def format(self, record: logging.LogRecord) -> str:
        return f"sfumato: {record.levelname.lower()}: {' '.join(record.getMessage().split())}"


# undo functions of the running command's _library_output (a stack: main() may be called inside main())
_UNDO: list[list] = []


@contextlib.contextmanager
def _library_output(quiet: bool) -> Iterator[None]:
    """Keep other libraries' chatter off the terminal while a command runs, and restore it afterwards.

    transformers' per-model loading bars and advice (e.g. to install
    torchvision) mean nothing to someone running a command; sfumato shows
    its own loading bar instead (transformers is quieted by
    :func:`quiet_transformers` when a checkpoint first needs it: importing it
    takes seconds, and loading with ``fast_start`` often never does). With ``quiet
    sfumato's warnings (e.g. a truncated prompt) and Python warnings are
    silenced too.
    """
    restore: list = []
    _UNDO.append(restore)
    # the library's warnings (e.g. a truncated prompt) read like the command line's own
    logger = logging.getLogger("sfumato")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_OneLine())
    handler.setLevel(logging.WARNING)
    logger.addHandler(handler)
    propagate, logger.propagate = logger.propagate, False
    restore.append(lambda: (logger.removeHandler(handler), setattr(logger, "propagate", propagate)))
    if quiet:
        with contextlib.suppress(ImportError):
            from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

            hub_disabled = are_progress_bars_disabled()
            disable_progress_bars()
            restore.append(lambda: None if hub_disabled else enable_progress_bars())
        old_level = logger.level
        logger.setLevel(logging.ERROR)
        restore.append(lambda: logger.setLevel(old_level))
    try:
        with warnings.catch_warnings():
            if quiet:
                warnings.simplefilter("ignore")
            yield
    finally:
        _UNDO.remove(restore)
        for undo in reversed(restore):
            undo()


def quiet_transformers(now: bool = False) -> None:
    """Quiet transformers' logging and loading bars until the running command ends (models are about to load).

    Loading with ``fast_start`` may never import transformers (seconds of
    start-up), so unless ``now`` this waits for the moment a checkpoint first
    needs it.
    """
    if not _UNDO or not _importable("transformers"):
        return
    if not now and "transformers" not in sys.modules:
        from ..checkpoint.registry import before_transformers

        _UNDO[-1].append(before_transformers(lambda: quiet_transformers(now=True)))
        return
    from transformers.utils import logging as transformers_logging

    level, bars = transformers_logging.get_verbosity(), transformers_logging.is_progress_bar_enabled()
    transformers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()
    _UNDO[-1].append(lambda: (transformers_logging.set_verbosity(level),
                              transformers_logging.enable_progress_bar() if bars else None))


def _importable(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None
