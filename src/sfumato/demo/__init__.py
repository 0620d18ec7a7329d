"""The built-in demo model: a tiny Kandinsky 2.2 trained on pictures of shapes.

``sfumato.demo.data`` draws the procedural data set (one coloured circle,
square or triangle on a plain background, captioned
``a <colour> <shape> on a <colour> background``) and
``sfumato.demo.evaluate`` scores generated pictures against their captions
with fixed rules rather than a learned model. Submodules are imported on
use, so ``import sfumato.demo`` stays cheap.

``sfumato.demo.architecture`` holds the model's shapes and
``sfumato.demo.train`` trains it (``python -m sfumato.demo.train``). The
trained pipelines ship in the package: :func:`builtin_model` gives the folder
of each, and :func:`generation_defaults` the step counts and guidance that
suit it. The model knows only the words of its captions
(:func:`vocabulary`); :func:`unknown_words` finds the others in a prompt.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

#: The shipped pipeline folders: the prior, and three decoders whose README names ``../prior``.
BUILTIN_MODELS: tuple[str, ...] = ("prior", "decoder", "inpaint", "controlnet")
#: File in a model folder with the ``__call__`` settings that suit the model.
DEFAULTS_FILE = "sfumato_defaults.json"

_MODEL_ROOT = Path(__file__).resolve().parent / "model"


def builtin_model(name: str = "decoder") -> Path:
    """The folder of a shipped demo pipeline, for ``from_pretrained``.

    ``"decoder"`` loads with ``AutoPipelineForText2Image`` as the whole
    text-to-image pipeline (its README names the prior); ``"inpaint"`` with
    ``AutoPipelineForInpainting``; ``"controlnet"`` with
    ``KandinskyV22ControlnetPipeline``; ``"prior"`` with
    ``KandinskyV22PriorPipeline``.
    """
    if name not in BUILTIN_MODELS:
        raise ValueError(f"name must be one of {', '.join(BUILTIN_MODELS)}; got {name!r}")
    folder = _MODEL_ROOT / name
    if not (folder / "model_index.json").is_file():
        raise FileNotFoundError(
            f"the built-in {name} model is missing from {str(folder)!r}; reinstall sfumato, or train one with "
            f"python -m sfumato.demo.train --out DIR"
        )
    return folder


def generation_defaults(folder: str | Path) -> dict[str, Any]:
    """Settings that suit the model in ``folder`` (``num_inference_steps``, ``guidance_scale``,
    ``prior_num_inference_steps``, ``prior_guidance_scale``, ``height``, ``width``).

    Read from its ``sfumato_defaults.json``; ``{}`` for folders without one
    (every other checkpoint), where the pipelines' own defaults apply.
    """
    path = Path(folder) / DEFAULTS_FILE
    if not path.is_file():
        return {}
    defaults = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(defaults, dict):
        raise ValueError(f"{str(path)!r} must hold a JSON object of pipeline settings, got {type(defaults).__name__}")
    return defaults


#: The words of every caption besides colours and shapes: ``a <colour> <shape> on a <colour> background``.
CAPTION_WORDS: tuple[str, ...] = ("a", "an", "on", "background")


def vocabulary() -> dict[str, tuple[str, ...]]:
    """The words the built-in model was trained on: ``colours``, ``shapes`` and the caption's ``other`` words."""
    from .data import COLOURS, SHAPES

    return {"colours": COLOURS, "shapes": SHAPES, "other": CAPTION_WORDS}


def vocabulary_text() -> str:
    """The vocabulary in one phrase, for help texts and warnings."""
    words = vocabulary()
    return (f"{len(words['colours'])} colours ({', '.join(words['colours'])}) and {len(words['shapes'])} shapes "
            f"({', '.join(words['shapes'])}), in prompts like \"a red circle on a blue background\"")


def unknown_words(prompt: str) -> list[str]:
    """The words of ``prompt`` the built-in model never saw (lower-cased, each once, in order)."""
    known = {word for words in vocabulary().values() for word in words}
    words = re.findall(r"[^\W_]+", prompt.lower())
    return [word for word in dict.fromkeys(words) if word not in known]


__all__ = ["BUILTIN_MODELS", "CAPTION_WORDS", "DEFAULTS_FILE", "builtin_model", "generation_defaults",
           "unknown_words", "vocabulary", "vocabulary_text"]
