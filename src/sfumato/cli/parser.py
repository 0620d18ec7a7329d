"""The command line's grammar: subcommands, options and their help.

Only argparse and the standard library are imported here, so ``--help`` and
argument errors answer at once, before torch loads.
"""

from __future__ import annotations

import argparse
import math
import textwrap

from .errors import UsageError
from .models import BUILTIN_ENV, DTYPES, PRESETS, SCHEDULERS

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
  sfumato controlnet silhouette.png "a green circle on a white background" --image circle.png -o redrawn.png
  sfumato generate "a lighthouse at dusk" --model ./stable-diffusion-v1-5 --size 512x512 -o sd.png
  sfumato img2img sd.png "a lighthouse, oil painting" --model ./sdxl-refiner -o refined.png
  sfumato controlnet photo.png "a castle" --model ./sd15 --controlnet ./depth-cn --depth-model ./dpt -o c.png
  sfumato upscale sd.png --model ./stable-diffusion-x4-upscaler --prompt "a lighthouse" -o big.png
  sfumato chain examples/chain.yaml -o chained.png
  sfumato info circle.png
  sfumato reproduce circle.png -o again.png
  sfumato batch examples/batch.jsonl --out pictures --workers 2

--model takes Kandinsky 2.1 / 2.2 / 3, Stable Diffusion 1.x / 2.x and SDXL
(base, refiner, inpainting) folders; `upscale` takes the Stable Diffusion x2
latent and x4 upscalers. A chain file can hand latents from step to step
(SDXL base -> refiner with denoising_end / denoising_start; output_type: latent).

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
        if len(message) > 400:  # argparse quotes unknown arguments and choices in full
            message = f"{message[:380]}... ({len(message)} characters)"
        raise UsageError(f"{message} (see `{self.prog} --help`)")


# ---------------------------------------------------------------------------------------------- value types


def _shown(text: str) -> str:
    """An argument as an error message quotes it, cut short (an argument can be megabytes)."""
    return repr(text) if len(text) <= 100 else f"{text[:80]!r}... ({len(text)} characters)"


def _whole_number(text: str, low: int, high: int | None, meaning: str) -> int:
    """``text`` as an int in ``[low, high]``, or argparse's error saying it must be ``meaning``."""
    try:
        value = int(text)
    except ValueError:
        value = None
    if value is None or value < low or (high is not None and value > high):
        raise argparse.ArgumentTypeError(f"must be {meaning}, got {_shown(text)}")
    return value


def _positive_int(text: str) -> int:
    return _whole_number(text, 1, None, "a positive whole number")


def _seed(text: str) -> int:
    return _whole_number(text, 0, 2 ** 63 - 1, f"a whole number from 0 to {2 ** 63 - 1}")


def _number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got {_shown(text)}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {_shown(text)}")
    return value


def _strength(text: str) -> float:
    value = _number(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be a number in (0, 1] (the share of the denoising steps "
                                         f"that are run), got {_shown(text)}")
    return value


def _non_negative_int(text: str) -> int:
    return _whole_number(text, 0, None, "a whole number of at least 0")


def _size(text: str) -> tuple[int, int]:
    from .jobs import parse_size

    try:
        return parse_size(text)
    except UsageError:
        raise argparse.ArgumentTypeError(f"must be WIDTHxHEIGHT with positive whole numbers (e.g. 64x64), "
                                         f"got {_shown(text)}") from None


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
    group.add_argument("--fast", action="store_true",
                       help="the fast CPU mode, chosen for this CPU: bf16 only where it has native bf16 (AMX or "
                            "AVX-512 BF16), else fp32; channels-last memory layout (sfumato.optimize). Pictures "
                            "differ from the default mode's in the last bits (with bf16, slightly); recorded in "
                            "the PNG so `reproduce` uses it too")


def _generation_options(parser: argparse.ArgumentParser, task: str) -> None:
    group = parser.add_argument_group("generation")
    if task == "upscale":
        group.add_argument("--model", required=True,
                           help="upscaler checkpoint: a Stable Diffusion x4 upscaler folder "
                                "(StableDiffusionUpscalePipeline: 4x the picture) or x2 latent upscaler folder "
                                "(StableDiffusionLatentUpscalePipeline: 2x), or a model hub id")
        group.add_argument("--prompt", metavar="TEXT", help="what the picture shows, to guide the upscaler "
                                                            "(default: none)")
    else:
        group.add_argument("--model", help="checkpoint: a local Kandinsky 2.1 / 2.2 / 3, Stable Diffusion 1.x / 2.x "
                                           "or SDXL (base, refiner, inpainting) folder, a model hub id, or "
                                           "builtin[:NAME] (default: the built-in demo model, 64x64 pictures, which "
                                           f"knows only {_vocabulary()})")
        group.add_argument("--prior", help="prior checkpoint for a Kandinsky 2.1 / 2.2 decoder (default: the one "
                                           "named in the decoder folder's README.md)")
    group.add_argument("--negative", metavar="TEXT", help="negative prompt: what the picture should not look like")
    if task != "interpolate":
        group.add_argument("--weighting", action=argparse.BooleanOptionalAction, default=None,
                           help="read (word:1.3), (word) = x1.1 and [word] = /1.1 in the prompts as weights (\\( for a "
                                "literal bracket), and encode CLIP prompts longer than 77 tokens in chunks instead of "
                                "cutting them (default: on; --no-weighting reads the prompts as plain text)")
    group.add_argument("--steps", type=_positive_int,
                       help="denoising steps of the decoder, within what its scheduler can run (checked before "
                            "loading) (default: the model's)")
    group.add_argument("--guidance", type=_number, help="decoder guidance scale (default: the model's)")
    if task != "upscale":
        group.add_argument("--prior-steps", type=_positive_int,
                           help="denoising steps of a Kandinsky 2.1 / 2.2 prior; their UnCLIP scheduler needs at "
                                "least 2 (default: the model's)")
        group.add_argument("--prior-guidance", type=_number,
                           help="guidance scale of a Kandinsky 2.1 / 2.2 prior (default: the model's)")
    if task == "upscale":
        group.add_argument("--noise-level", type=_non_negative_int, metavar="N",
                           help="x4 upscaler: noise added to the low-resolution picture, 0 to its max_noise_level "
                                "(350 in the released model); more lets it invent more detail (default: 20)")
    if task == "controlnet":
        group.add_argument("--controlnet", metavar="FOLDER",
                           help="Stable Diffusion: the ControlNetModel folder that reads HINT (e.g. a depth "
                                "ControlNet); Kandinsky 2.2 ControlNet decoders have their own")
        group.add_argument("--controlnet-scale", type=_number, metavar="S",
                           help="Stable Diffusion: how strongly the ControlNet steers (controlnet_conditioning_scale, "
                                "default: 1.0)")
        group.add_argument("--control-start", type=_number, metavar="F",
                           help="Stable Diffusion: the share of the steps, in [0, 1], before which the ControlNet "
                                "does not steer (control_guidance_start, default: 0)")
        group.add_argument("--control-end", type=_number, metavar="F",
                           help="Stable Diffusion: the share of the steps after which it stops steering "
                                "(control_guidance_end, default: 1)")
        group.add_argument("--depth-model", metavar="FOLDER",
                           help="a local transformers depth-estimation model folder (e.g. DPT); HINT is then an "
                                "ordinary picture, turned into a depth hint first")
    if task == "controlnet":
        group.add_argument("--image", metavar="IMAGE",
                           help="ControlNet image-to-image: start from this picture (file or URL) instead of noise, "
                                "redrawn towards PROMPT along HINT; --strength says how much changes")
        group.add_argument("--mask", metavar="MASK",
                           help="with --image, ControlNet inpainting (Stable Diffusion): repaint where MASK is white, "
                                "keep where it is black")
        group.add_argument("--keep-unmasked", action=argparse.BooleanOptionalAction, default=None,
                           help="with --mask: put the picture's own pixels back where MASK is black (default: on)")
    if task in ("image2image", "controlnet"):
        group.add_argument("--strength", type=_strength,
                           help="how much to change the picture, in (0, 1]: 1 ignores it, small values keep it "
                                f"{'(with --image) ' if task == 'controlnet' else ''}(default: the model's)")
    group.add_argument("--seed", type=_seed, help="random seed (default: chosen at random and recorded in the PNG)")
    if task != "upscale":
        group.add_argument("--size", type=_size, metavar="WxH",
                           help="picture width x height in pixels, multiples of what the model needs (64 for the "
                                "released Kandinsky 2.1 and 2.2, 8 for Stable Diffusion and SDXL; checked before "
                                "loading) (default: the model's; for pictures given as input, their size)")
    group.add_argument("--num", type=_positive_int, default=1, help="how many pictures (default: 1)")
    group.add_argument("--scheduler", metavar="NAME",
                       help=f"swap the decoder's scheduler: {', '.join(SCHEDULERS)} (dpm++-karras: DPM-Solver++ "
                            f"2M with Karras sigmas) (default: the checkpoint's)")
    if task != "upscale":
        group.add_argument("--preset", choices=list(PRESETS),
                           help="a sampler preset for what the other options leave open: " + "; ".join(
                               f"{name}: " + ", ".join(f"{key.replace('_', '-')} {value}" for key, value in values.items())
                               for name, values in PRESETS.items()) + " (prior-steps for Kandinsky 2.1 / 2.2 only)")
    _runtime_options(parser)
    _output_options(parser)


def build_parser() -> Parser:
    from .. import __version__

    vocabulary = "\n".join(textwrap.wrap(_vocabulary(), width=79))
    parser = Parser(prog="sfumato", description="Kandinsky, Stable Diffusion and SDXL image generation from the "
                                                "command line.",
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
                    "built-in ControlNet model unless --model names another: a Kandinsky 2.2 ControlNet decoder, or "
                    "a Stable Diffusion folder with --controlnet naming a ControlNetModel folder. With "
                    "--depth-model, HINT is an ordinary picture and its depth map steers.")
    controlnet.add_argument("hint", metavar="HINT", help="hint picture (depth map, silhouette, ...)")
    controlnet.add_argument("prompt", metavar="PROMPT", help="what to draw")
    _generation_options(controlnet, "controlnet")

    upscale = commands.add_parser(
        "upscale", help="make a picture larger with a Stable Diffusion upscaler",
        description="Upscale IMAGE with a Stable Diffusion x4 upscaler (4x, --noise-level) or x2 latent upscaler "
                    "(2x) folder, guided by --prompt. The output size follows from the picture's and is checked "
                    "against the limits before anything loads.")
    upscale.add_argument("image", metavar="IMAGE", help="the picture to upscale (file or URL)")
    _generation_options(upscale, "upscale")

    chain = commands.add_parser(
        "chain", help="run a workflow file (YAML or JSON)",
        description="Run a list of steps from a YAML or JSON file; each step's picture becomes the next step's "
                    "input (the image of image2image, inpaint and upscale, the hint of controlnet, or $previous "
                    "anywhere). A step can hand its latents instead of a picture: `output_type: latent` (e.g. "
                    "Stable Diffusion image2image -> the x2 latent upscaler), or `denoising_end: 0.8` on an SDXL "
                    "base step followed by `denoising_start: 0.8` on a refiner step. See examples/chain.yaml.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    chain.add_argument("file", metavar="FILE", help="workflow file (.yaml, .yml or .json)")
    chain.add_argument("--seed", type=_seed, help="seed of steps that set none (default: random, recorded)")
    chain.add_argument("--allow-outside-paths", action="store_true",
                       help="let the chain file read pictures (files outside this folder, URLs) and write `out:` "
                            "files outside the folder the command runs in; without it they are refused, since "
                            "chain files are shared between people")
    chain.add_argument("--num", type=_positive_int, default=1,
                       help="run the chain N times; run i adds i to every step's seed (default: 1)")
    group = chain.add_argument_group("running")
    group.add_argument("--dtype", choices=list(DTYPES), help="precision of steps that set none (default: fp32)")
    group.add_argument("--device", help="torch device (default: cuda if available, else cpu)")
    group.add_argument("--fast", action="store_true", help="the fast CPU mode for every step (see `generate --help`)")
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
    _add_batch(commands)
    _add_serve(commands)
    return parser


def _add_batch(commands) -> None:
    batch = commands.add_parser(
        "batch", help="many pictures from a job file, locally or on a Ray cluster",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Make every picture a job file describes, into a folder, with a manifest. JOBS is\n"
                    "  - a .jsonl file of job records, one JSON object per line, in the shape of a PNG's record\n"
                    "    (`sfumato info --json`) or a chain step: task (default text2image), prompt, seed, steps,\n"
                    "    size, model, ... and num for several seeds; PNG records come back as they were made;\n"
                    "  - a text file of prompts, one per line (# comments), the rest from the options below;\n"
                    "  - a sweep, as a line or a .json/.yaml file: {\"template\": {\"prompt\": \"a {colour}\n"
                    "    circle on a blue background\"}, \"values\": {\"colour\": [\"red\", \"green\"],\n"
                    "    \"seed\": [1, 2]}}, expanded to every combination.\n"
                    "Every job is checked first; a bad one is reported by line and skipped (--strict: nothing\n"
                    "runs). Pictures get names derived from their job, and the same command again makes only\n"
                    "what is missing or failed (after a crash or Ctrl-C). The pictures are identical\n"
                    "whichever way they are made: one process, --workers N, or --ray.")
    batch.add_argument("jobs", metavar="JOBS", help="job file: .jsonl records, a text file of prompts, or a sweep")
    batch.add_argument("-o", "--out", metavar="DIR", required=True,
                       help="folder for the pictures and manifest.jsonl (created if needed)")
    group = batch.add_argument_group("running")
    group.add_argument("--workers", type=_positive_int, metavar="N",
                       help="worker processes, each loading the models once (default: 1, this process; on Ray: as "
                            "many as the cluster has room for)")
    group.add_argument("--ray", metavar="ADDRESS",
                       help="run on a Ray cluster: auto (the one this machine belongs to, or a local instance "
                            "started for the run) or its address, e.g. 10.0.0.1:6379; needs pip install "
                            "'sfumato[ray]'")
    group.add_argument("--threads", type=_positive_int, default=1, metavar="N",
                       help="torch CPU threads per worker, the same everywhere so that pictures are identical "
                            "(default: 1; a PNG record's own cpu_threads wins)")
    group.add_argument("--strict", action="store_true", help="stop before any work if any job is invalid")
    group.add_argument("--dtype", choices=list(DTYPES), help="precision of jobs that set none (default: fp32)")
    group.add_argument("--device", help="torch device of every worker (default: each worker's cuda if it has one, "
                                        "else cpu)")
    batch.add_argument("-q", "--quiet", action="store_true",
                       help="no progress bar or messages on stderr (errors and written file names still show)")
    defaults = batch.add_argument_group("defaults for jobs that set none")
    defaults.add_argument("--model", help="checkpoint (default: the built-in demo model)")
    defaults.add_argument("--prior", help="prior checkpoint for a Kandinsky decoder")
    defaults.add_argument("--negative", metavar="TEXT", help="negative prompt")
    defaults.add_argument("--steps", type=_positive_int, help="denoising steps of the decoder")
    defaults.add_argument("--guidance", type=_number, help="decoder guidance scale")
    defaults.add_argument("--prior-steps", type=_positive_int, help="denoising steps of the prior")
    defaults.add_argument("--prior-guidance", type=_number, help="prior guidance scale")
    defaults.add_argument("--strength", type=_strength, help="image-to-image strength, in (0, 1]")
    defaults.add_argument("--seed", type=_seed, help="seed (default: 0, so the same command makes the same pictures)")
    defaults.add_argument("--num", type=_positive_int, help="pictures per job, seeds SEED, SEED+1, ... (default: 1)")
    defaults.add_argument("--size", type=_size, metavar="WxH", help="picture width x height")
    defaults.add_argument("--scheduler", metavar="NAME", help=f"decoder scheduler: {', '.join(SCHEDULERS)}")


def _add_serve(commands) -> None:
    serve = commands.add_parser(
        "serve", help="HTTP API with a durable job queue, the AUTOMATIC1111 API, and a web page",
        description="Serve every workflow over HTTP: a job queue kept in SQLite under --data (jobs survive a "
                    "restart), Server-Sent Events for progress, the AUTOMATIC1111 /sdapi/v1 endpoints, and a web "
                    "page at /. Bound to loopback unless given a token. Needs pip install 'sfumato[serve]'.")
    serve.add_argument("--host", default="127.0.0.1",
                       help="address to listen on (default: 127.0.0.1; any other needs --token)")
    serve.add_argument("--port", type=_whole_port, default=7860, help="port (default: 7860)")
    serve.add_argument("--model", action="append", metavar="MODEL",
                       help="a model the server offers: builtin, a checkpoint folder or a hub id; repeat for several, "
                            "the first is the default (default: builtin)")
    serve.add_argument("--token", action="append", metavar="TOKEN",
                       help="require this token on every request (bearer, or HTTP Basic password); repeat for one "
                            "token per user; jobs belong to the token that submitted them (default: $SFUMATO_TOKEN)")
    serve.add_argument("--data", metavar="DIR",
                       help="folder for the job database, uploads and result PNGs (default: "
                            "$XDG_DATA_HOME/sfumato/serve, i.e. ~/.local/share/sfumato/serve)")
    serve.add_argument("--device", help="torch device for every job (default: cuda if available, else cpu)")
    serve.add_argument("--controlnet", action="append", metavar="NAME=FOLDER",
                       help="a Stable Diffusion ControlNetModel folder jobs may use, by NAME (\"controlnet\": NAME); "
                            "repeat for several; checked at start-up (clients never name folders themselves)")
    serve.add_argument("--depth-model", action="append", metavar="NAME=FOLDER",
                       help="a transformers depth-estimation model folder (e.g. DPT) ControlNet jobs may use, by "
                            "NAME (\"depth_model\": NAME): the hint is then a photo, made into its depth map; "
                            "repeat for several")
    serve.add_argument("--keep-days", type=_number, metavar="DAYS",
                       help="delete finished jobs and their pictures this many days after they ended, and uploaded "
                            "pictures no remaining job uses, checked at start-up and every hour (default: keep "
                            "everything; a client can delete its own finished jobs)")
    limits = serve.add_argument_group("limits (requests beyond them are refused with a message naming the field)")
    limits.add_argument("--max-steps", type=_positive_int, default=200, metavar="N",
                        help="steps and prior steps of one picture (default: 200)")
    limits.add_argument("--max-side", type=_positive_int, metavar="PX",
                        help="width and height of a picture (default: 2048, or $SFUMATO_MAX_SIDE if smaller)")
    limits.add_argument("--max-images", type=_positive_int, metavar="N",
                        help="pictures per job (default: 16, or $SFUMATO_MAX_IMAGES if smaller)")
    limits.add_argument("--max-upload", metavar="SIZE", default="20MiB",
                        help="bytes of one uploaded picture, e.g. 20MiB (default: 20MiB)")
    limits.add_argument("--max-queued", type=_positive_int, default=1000, metavar="N",
                        help="unfinished jobs per caller (default: 1000)")


def _whole_port(text: str) -> int:
    return _whole_number(text, 0, 65535, "a port number from 0 to 65535")
