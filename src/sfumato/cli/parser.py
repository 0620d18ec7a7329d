"""The command line's grammar: subcommands, options and their help.

Only argparse and the standard library are imported here, so ``--help`` and
argument errors answer at once, before torch loads.
"""

from __future__ import annotations

import argparse
import math
import textwrap

from .errors import UsageError
from .models import BUILTIN_ENV, DTYPES, SCHEDULERS

OUTPUT_HELP = ("output PNG (default: COMMAND-SEED.png). With --num N > 1 the pictures are written as "
               "OUT-0.png ... OUT-{N-1}.png, picture i made with seed SEED+i")

def _vocabulary() -> str:
    from ..demo import vocabulary_text

    return vocabulary_text()


EPILOG = """\
examples:
  sfumato generate "a red circle on a blue background" -o circle.png
  sfumato generate "a green square on a black background" --num 4 --seed 7 -o squares.png
  sfumato img2img circle.png "a yellow circle on a blue background" --strength 0.6 -o yellow.png
  sfumato inpaint circle.png mask.png "a white triangle on a blue background" -o triangle.png
  sfumato interpolate "a red circle on a blue background" yellow.png --weights 0.3 0.7 -o mix.png
  sfumato controlnet silhouette.png "a green circle on a white background" -o shaped.png
  sfumato chain examples/chain.yaml -o chained.png
  sfumato info circle.png
  sfumato reproduce circle.png -o again.png

Every PNG sfumato writes stores its parameters (prompt, seed, steps, model, ...);
`sfumato info` shows them and `sfumato reproduce` makes the same pixels again.
Without --model the built-in demo model is used (${builtin_env} points at
another folder in its layout). It makes 64x64 pictures and knows only
{vocabulary}.
Other words or sizes give a warning (the picture will not follow them).

Written file names are printed on stdout; progress goes to stderr. Exit
status: 0 done, 1 failed while running, 2 bad arguments.
Set SFUMATO_DEBUG=1 to see the traceback of an error."""


class Parser(argparse.ArgumentParser):
    """argparse that reports a mistake as one line (no usage dump) through :class:`UsageError`."""

    def error(self, message: str):  # type: ignore[override]
        raise UsageError(f"{message} (see `{self.prog} --help`)")


# ---------------------------------------------------------------------------------------------- value types


def _whole_number(text: str, low: int, high: int | None, meaning: str) -> int:
    """``text`` as an int in ``[low, high]``, or argparse's error saying it must be ``meaning``."""
    try:
        value = int(text)
    except ValueError:
        value = None
    if value is None or value < low or (high is not None and value > high):
        raise argparse.ArgumentTypeError(f"must be {meaning}, got {text!r}")
    return value


def _positive_int(text: str) -> int:
    return _whole_number(text, 1, None, "a positive whole number")


def _seed(text: str) -> int:
    return _whole_number(text, 0, 2 ** 63 - 1, f"a whole number from 0 to {2 ** 63 - 1}")


def _number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value


def _strength(text: str) -> float:
    value = _number(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be a number in (0, 1] (the share of the denoising steps "
                                         f"that are run), got {text!r}")
    return value


def _size(text: str) -> tuple[int, int]:
    from .jobs import parse_size

    try:
        return parse_size(text)
    except UsageError:
        raise argparse.ArgumentTypeError(f"must be WIDTHxHEIGHT with positive whole numbers (e.g. 64x64), "
                                         f"got {text!r}") from None


# ---------------------------------------------------------------------------------------------- options


def _output_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-o", "--out", metavar="OUT.png", help=OUTPUT_HELP)
    parser.add_argument("-q", "--quiet", action="store_true",
                        help="no progress bars or messages on stderr (written file names still go to stdout)")


def _runtime_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("running")
    group.add_argument("--dtype", choices=list(DTYPES), default="fp32",
                       help="weights and computation precision (default: fp32)")
    group.add_argument("--device", help="torch device, e.g. cpu, cuda, cuda:1 (default: cuda if available, else cpu)")


def _generation_options(parser: argparse.ArgumentParser, task: str) -> None:
    group = parser.add_argument_group("generation")
    group.add_argument("--model", help="checkpoint: a local Kandinsky 2.1 or 2.2 folder, a model hub id, or "
                                       "builtin[:NAME] (default: the built-in demo model, 64x64 pictures, which "
                                       f"knows only {_vocabulary()})")
    group.add_argument("--prior", help="prior checkpoint for a Kandinsky decoder (default: the one named in the "
                                       "decoder folder's README.md)")
    group.add_argument("--negative", metavar="TEXT", help="negative prompt: what the picture should not look like")
    group.add_argument("--steps", type=_positive_int,
                       help="denoising steps of the decoder, within what its scheduler can run (checked before "
                            "loading) (default: the model's)")
    group.add_argument("--guidance", type=_number, help="decoder guidance scale (default: the model's)")
    group.add_argument("--prior-steps", type=_positive_int,
                       help="denoising steps of the prior; the Kandinsky priors' UnCLIP scheduler needs at least 2 "
                            "(default: the model's)")
    group.add_argument("--prior-guidance", type=_number, help="prior guidance scale (default: the model's)")
    if task == "image2image":
        group.add_argument("--strength", type=_strength,
                           help="how much to change the picture, in (0, 1]: 1 ignores it, small values keep it "
                                "(default: the model's)")
    group.add_argument("--seed", type=_seed, help="random seed (default: chosen at random and recorded in the PNG)")
    group.add_argument("--size", type=_size, metavar="WxH",
                       help="picture width x height in pixels, multiples of what the model needs (64 for the "
                            "released Kandinsky 2.1 and 2.2; checked before loading) (default: the model's; for "
                            "pictures given as input, their size)")
    group.add_argument("--num", type=_positive_int, default=1, help="how many pictures (default: 1)")
    group.add_argument("--scheduler", metavar="NAME",
                       help=f"swap the decoder's scheduler: {', '.join(SCHEDULERS)} (default: the checkpoint's)")
    _runtime_options(parser)
    _output_options(parser)


def build_parser() -> Parser:
    from .. import __version__

    vocabulary = "\n".join(textwrap.wrap(_vocabulary(), width=79))
    parser = Parser(prog="sfumato", description="Kandinsky image generation from the command line.",
                    epilog=EPILOG.format(builtin_env=BUILTIN_ENV, vocabulary=vocabulary),
                    formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"sfumato {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)

    generate = commands.add_parser("generate", help="text to image", description="Make pictures from a prompt.")
    generate.add_argument("prompt", metavar="PROMPT", help='what to draw, e.g. "a red circle on a blue background"')
    _generation_options(generate, "text2image")

    img2img = commands.add_parser("img2img", help="image to image",
                                  description="Redraw a picture towards a prompt.")
    img2img.add_argument("image", metavar="IMAGE", help="the starting picture (file or URL)")
    img2img.add_argument("prompt", metavar="PROMPT", help="what the picture should become")
    _generation_options(img2img, "image2image")

    inpaint = commands.add_parser("inpaint", help="repaint the masked part of a picture",
                                  description="Repaint where MASK is white, keep where it is black.")
    inpaint.add_argument("image", metavar="IMAGE", help="the picture to change")
    inpaint.add_argument("mask", metavar="MASK", help="mask picture: white = repaint, black = keep")
    inpaint.add_argument("prompt", metavar="PROMPT", help="what to paint in the white part")
    _generation_options(inpaint, "inpaint")
    inpaint.add_argument("--keep-unmasked", action=argparse.BooleanOptionalAction, default=None,
                         help="put the picture's own pixels back where MASK is black, with a soft seam inside the "
                              "white part (default: on; --no-keep-unmasked gives the model's output as the "
                              "library's pipelines return it, which changes the kept part too)")

    interpolate = commands.add_parser(
        "interpolate", help="mix prompts and pictures",
        description="Mix prompts and pictures by weight, then draw the mix. An ITEM is a picture if it is a URL or "
                    "ends in .png, .jpg, .jpeg, .webp, .bmp, .gif or .tif(f); anything else is a prompt.")
    interpolate.add_argument("items", nargs="+", metavar="ITEM", help="prompts and pictures to mix")
    interpolate.add_argument("--weights", nargs="+", type=_number, metavar="W",
                             help="one weight per ITEM (default: equal weights)")
    _generation_options(interpolate, "interpolate")

    controlnet = commands.add_parser(
        "controlnet", help="text to image shaped by a hint picture",
        description="Make a picture whose layout follows HINT (e.g. a depth map or a silhouette). Uses the "
                    "built-in ControlNet model unless --model names another.")
    controlnet.add_argument("hint", metavar="HINT", help="hint picture (depth map, silhouette, ...)")
    controlnet.add_argument("prompt", metavar="PROMPT", help="what to draw")
    _generation_options(controlnet, "controlnet")

    chain = commands.add_parser(
        "chain", help="run a workflow file (YAML or JSON)",
        description="Run a list of steps from a YAML or JSON file; each step's picture becomes the next step's "
                    "input (the image of image2image and inpaint, the hint of controlnet, or $previous anywhere). "
                    "See examples/chain.yaml.", formatter_class=argparse.RawDescriptionHelpFormatter)
    chain.add_argument("file", metavar="FILE", help="workflow file (.yaml, .yml or .json)")
    chain.add_argument("--seed", type=_seed, help="seed of steps that set none (default: random, recorded)")
    chain.add_argument("--num", type=_positive_int, default=1,
                       help="run the chain N times; run i adds i to every step's seed (default: 1)")
    group = chain.add_argument_group("running")
    group.add_argument("--dtype", choices=list(DTYPES), help="precision of steps that set none (default: fp32)")
    group.add_argument("--device", help="torch device (default: cuda if available, else cpu)")
    _output_options(chain)

    info = commands.add_parser("info", help="show the parameters stored in a PNG",
                               description="Print the parameters sfumato stored in a PNG it wrote.")
    info.add_argument("image", metavar="IMAGE.png")
    info.add_argument("--json", action="store_true", help="print the raw JSON record")

    reproduce = commands.add_parser(
        "reproduce", help="make a PNG's pixels again from its stored parameters",
        description="Run the parameters stored in IMAGE.png again. On the same device and dtype (e.g. CPU fp32) "
                    "the pixels are identical; the result is compared and the comparison reported.")
    reproduce.add_argument("image", metavar="IMAGE.png")
    reproduce.add_argument("--device", help="run on this device instead of the recorded one")
    reproduce.add_argument("--check", action="store_true", help="exit with status 1 if the pixels differ")
    reproduce.add_argument("-o", "--out", metavar="OUT.png", help="output PNG (default: IMAGE-reproduced.png)")
    reproduce.add_argument("-q", "--quiet", action="store_true", help="no progress bars or messages on stderr")
    return parser
