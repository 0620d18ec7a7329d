"""What each subcommand does: build jobs, check them, load models once, make and write pictures."""

from __future__ import annotations

import json
import os
import secrets
import sys
import tempfile
from pathlib import Path
from typing import Any

from ..metadata import MetadataError, read_parameters, write_png
from . import jobs as jobs_module
from .errors import UsageError
from .jobs import (Job, Source, advice, check, check_seed, cpu_threads, picture_record, plan,  # noqa: F401
                   run, settle, with_seed)
from .models import Loader

# subcommand -> task
GENERATING = {"generate": "text2image", "img2img": "image2image", "inpaint": "inpaint",
              "controlnet": "controlnet", "interpolate": "interpolate", "upscale": "upscale"}


def check_count(pictures: int, what: str) -> None:
    """The library's bound on pictures per call (SFUMATO_MAX_IMAGES), for what one command makes."""
    from .. import limits

    try:
        limits.check_count(pictures, what)
    except ValueError as error:  # RequestTooLarge, or a malformed SFUMATO_MAX_IMAGES
        raise UsageError(str(error)) from None


def random_seed() -> int:
    # 32 bits: short enough to read and type back, plenty for picking pictures
    return secrets.randbelow(2 ** 32)


def output_paths(out: str | None, count: int, default_stem: str, where: str = "--out") -> list[Path]:
    """Where ``count`` pictures go: OUT itself for one, OUT-0.png ... OUT-{count-1}.png for more.

    Checked before any work: the name is a .png file, not a folder, each name
    fits the file system, and its folder can be written in (or created: it is
    made only when the picture is written, so a refusal leaves nothing behind).
    """
    if out is not None:
        if not out.strip():
            raise UsageError(f"{where} is empty; name the .png file to write, e.g. picture.png")
        jobs_module._check_name(out, where)
    path = Path(out).expanduser() if out else Path(f"{default_stem}.png")
    _check_name_lengths([path], where, out)
    if path.is_dir() or (out and out.endswith((os.sep, "/"))) or path.name in ("", ".", ".."):
        raise UsageError(f"{where} {out!r} is a folder; name the .png file to write in it, e.g. "
                         f"{os.path.join(out, 'picture.png')!r}")
    if path.suffix == "":
        path = path.with_name(path.name + ".png")
    elif path.suffix.lower() != ".png":
        raise UsageError(f"{where} must name a .png file (the parameters are stored in a PNG text chunk), "
                         f"got {out!r}")
    paths = [path] if count == 1 else [path.with_name(f"{path.stem}-{i}{path.suffix}") for i in range(count)]
    _check_name_lengths(paths, where, out)
    for target in paths:
        if target.is_dir():
            raise UsageError(f"{where}: {str(target)!r} is a folder; name another .png file to write")
    _check_writable(path.parent, where, out, create=False)
    return paths


#: The longest file or folder name most file systems take, in bytes.
NAME_MAX = 255


def _check_name_lengths(paths: list[Path], where: str, out: str | None) -> None:
    for path in paths:
        for part in path.parts:
            if len(os.fsencode(part)) > NAME_MAX:
                raise UsageError(f"{where} {jobs_module.shown(out, 80)}: the name {jobs_module.shown(part, 60)} is "
                                 f"{len(os.fsencode(part))} bytes, longer than the {NAME_MAX} a file system takes")


def _check_writable(folder: Path, where: str, out: str | None, create: bool = True) -> None:
    """Write a probe file in ``folder``, so a bad output fails before the work; ``create``: make the folder
    first, else probe the nearest folder that exists (the one the missing folders would be made in)."""
    existing = folder
    if create:
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise UsageError(f"{where} {out!r}: cannot create the folder {str(folder)!r}: "
                             f"{error.strerror or error}") from None
    else:
        while not existing.exists() and not existing.is_symlink() and existing != existing.parent:
            existing = existing.parent
        if not existing.is_dir():
            raise UsageError(f"{where} {out!r}: cannot create the folder {str(folder)!r}: {str(existing)!r} is "
                             f"{'a file' if existing.exists() else 'a broken link'}, not a folder")
    try:
        with tempfile.NamedTemporaryFile(dir=existing, prefix=".sfumato-probe-", suffix=".png"):
            pass
    except OSError as error:
        action = "write in" if existing == folder else f"create the folder {str(folder)!r} in"
        raise UsageError(f"{where} {out!r}: cannot {action} the folder {str(existing)!r}: "
                         f"{error.strerror or error}") from None


def _announce(path: Path) -> None:
    # the result of the command: stdout, even with --quiet, so scripts can pick the files up
    print(path, flush=True)


def _say(quiet: bool, message: str) -> None:
    if not quiet:
        print(message, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------- generate & co


def job_from_args(args: Any) -> Job:
    task = GENERATING[args.command]
    job = Job(task=task, model=args.model, prior=getattr(args, "prior", None), prompt=getattr(args, "prompt", None),
              negative_prompt=args.negative, steps=args.steps, guidance=args.guidance,
              prior_steps=getattr(args, "prior_steps", None), prior_guidance=getattr(args, "prior_guidance", None),
              strength=getattr(args, "strength", None), scheduler=args.scheduler, dtype=args.dtype,
              device=args.device, noise_level=getattr(args, "noise_level", None),
              controlnet=getattr(args, "controlnet", None), controlnet_scale=getattr(args, "controlnet_scale", None),
              control_start=getattr(args, "control_start", None), control_end=getattr(args, "control_end", None),
              depth_model=getattr(args, "depth_model", None))
    if getattr(args, "size", None) is not None:
        job.width, job.height = args.size
    if task in ("image2image", "inpaint", "upscale"):
        job.image = Source(path=args.image)
    if getattr(args, "weighting", None) is not None:
        job.weighting = args.weighting
    job.fast = bool(getattr(args, "fast", False))
    job.preset = getattr(args, "preset", None)
    if task == "inpaint":
        job.mask = Source(path=args.mask)
        job.keep_unmasked = args.keep_unmasked
    if task == "controlnet":
        job.hint = Source(path=args.hint)
        if args.image is not None:
            job.image = Source(path=args.image)
        if args.mask is not None:
            job.mask = Source(path=args.mask)
        job.keep_unmasked = args.keep_unmasked
    if task == "interpolate":
        job.items = [jobs_module.classify_item(item) for item in args.items]
        job.weights = args.weights
    return job


def generate(args: Any) -> int:
    """generate / img2img / inpaint / controlnet / interpolate / upscale: --num pictures of one job."""
    check_count(args.num, f"--num {args.num}")
    job = check(job_from_args(args))
    seed = args.seed if args.seed is not None else random_seed()
    check_seed(seed, args.num)
    paths = output_paths(args.out, args.num, f"{args.command}-{seed}")
    settle(job)
    for note in advice(job):
        _say(args.quiet, f"sfumato: warning: {note}")
    loader = Loader(job.dtype, job.device, args.quiet, fast=job.fast)
    loader.preload(plan(job))
    for index, path in enumerate(paths):
        picture_job = with_seed(job, seed + index)
        label = f"{index + 1}/{len(paths)}" if len(paths) > 1 else ""
        picture = run(picture_job, loader, label, args.quiet)
        _announce(write_png(picture, path, picture_record(picture_job, args.command, index, len(paths))))
    return 0


# ---------------------------------------------------------------------------------------------- chain

# keys of a chain file's top level besides the list of steps: defaults for every step
_CHAIN_DEFAULTS = {"model", "prior", "negative_prompt", "negative", "seed", "scheduler", "dtype", "device", "size",
                   "num_inference_steps", "guidance_scale", "guidance", "prior_num_inference_steps", "prior_steps",
                   "prior_guidance_scale", "prior_guidance", "strength", "keep_unmasked", "weighting", "noise_level",
                   "controlnet", "controlnet_scale", "controlnet_conditioning_scale", "depth_model", "preset"}


#: Bytes of a chain file, and values it may hold once its YAML aliases (``*name``) are expanded: a chain of
#: :data:`jobs.MAX_CHAIN_STEPS` steps needs a few thousand; a few hundred bytes of nested aliases can expand to
#: billions ("billion laughs"), which is refused before anything is expanded.
MAX_CHAIN_BYTES = 2 ** 20
MAX_CHAIN_VALUES = 20_000


def read_chain(path: str) -> tuple[dict[str, Any], list[Any]]:
    """(defaults, steps) from a YAML or JSON workflow file, bounded in size, alias expansion and nesting."""
    from ..metadata import MAX_NESTING, nesting_depth

    jobs_module._check_name(path, "chain file")
    file = Path(path).expanduser()
    try:
        if file.is_dir():
            raise UsageError(f"chain file {path!r} is a folder; name the .yaml or .json file")
        if not file.is_file():
            raise UsageError(f"chain file {path!r}: no such file")
        with open(file, "rb") as stream:
            raw = stream.read(MAX_CHAIN_BYTES + 1)
    except OSError as error:
        raise UsageError(f"chain file {path!r} cannot be read: {error.strerror or error}") from None
    if len(raw) > MAX_CHAIN_BYTES:
        raise UsageError(f"chain file {path!r} is larger than {MAX_CHAIN_BYTES} bytes, the most a chain file may "
                         f"have (a chain of {jobs_module.MAX_CHAIN_STEPS} steps needs a few KB)")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise UsageError(f"chain file {path!r} is not UTF-8 text ({error.reason} at byte {error.start}); "
                         f"write it as UTF-8 YAML or JSON") from None
    suffix = file.suffix.lower()
    if suffix == ".json":
        data = _parse_json(text, path)
    elif suffix in (".yaml", ".yml"):
        data = _parse_yaml(text, path)
    else:  # JSON is valid YAML; try the strict one first for its clearer errors
        try:
            data = json.loads(text)
        except (json.JSONDecodeError, RecursionError):
            data = _parse_yaml(text, path)
    if nesting_depth(data) > MAX_NESTING:
        raise _too_deep(path)
    return chain_steps(data, f"chain file {path!r}")


def _too_deep(path: str) -> UsageError:
    from ..metadata import MAX_NESTING

    return UsageError(f"chain file {path!r} nests lists and mappings more than {MAX_NESTING} levels deep; a chain "
                      f"is a list of steps, each a mapping of values")


def chain_steps(data: Any, where: str) -> tuple[dict[str, Any], list[Any]]:
    """(defaults, steps) of a chain already read: a list of steps, or a mapping with `steps` and defaults."""
    if isinstance(data, list):
        return {}, data
    if isinstance(data, dict) and isinstance(data.get("steps"), list):
        defaults = {k: v for k, v in data.items() if k != "steps"}
        unknown = sorted((key for key in defaults if key not in _CHAIN_DEFAULTS), key=str)
        if unknown:
            raise UsageError(f"{where}: unknown top-level keys {jobs_module.shown(unknown, 200)}; the top level takes "
                             f"`steps` (the list) and defaults for every step: {', '.join(sorted(_CHAIN_DEFAULTS))}")
        return defaults, data["steps"]
    raise UsageError(f"{where} must hold a list of steps, or a mapping with a `steps` list")


def _parse_json(text: str, path: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise UsageError(f"chain file {path!r} is not valid JSON: {error}") from None
    except RecursionError:
        raise _too_deep(path) from None


def _parse_yaml(text: str, path: str) -> Any:
    """YAML with safe types only, refused before it is built if its aliases expand to more than
    :data:`MAX_CHAIN_VALUES` values, refer to themselves, or it nests too deeply."""
    try:
        import yaml
    except ImportError:
        raise UsageError(f"reading YAML chain file {path!r} needs PyYAML (pip install pyyaml); "
                         f"or write the chain as JSON") from None
    from ..metadata import MAX_NESTING

    class TooDeep(Exception):
        pass

    class Loader(yaml.SafeLoader):
        depth = 0

        def compose_node(self, parent, index):  # the node graph, before any value is built from it
            self.depth += 1
            try:
                if self.depth > MAX_NESTING:
                    raise TooDeep
                return super().compose_node(parent, index)
            finally:
                self.depth -= 1

    loader = Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        count = _expanded_count(node, MAX_CHAIN_VALUES)
        if count is None:
            raise UsageError(f"chain file {path!r} has a YAML alias (*name) inside the value its anchor (&name) "
                             f"names, which would expand forever")
        if count > MAX_CHAIN_VALUES:
            raise UsageError(f"chain file {path!r} holds more than {MAX_CHAIN_VALUES} values once its YAML aliases "
                             f"(*name) are expanded, more than any chain needs; it was not expanded (nested aliases "
                             f"can make a few hundred bytes into gigabytes)")
        return loader.construct_document(node)
    except TooDeep:
        raise _too_deep(path) from None
    except yaml.YAMLError as error:
        raise UsageError(f"chain file {path!r} is not valid YAML: {' '.join(str(error).split())}") from None
    finally:
        loader.dispose()


def _expanded_count(root: Any, limit: int) -> int | None:
    """How many values a YAML node graph holds with its aliases expanded, counted on the shared nodes without
    expanding them (stops once past ``limit``); ``None`` if an alias refers to a node that contains it."""
    import yaml

    def children(node):
        if isinstance(node, yaml.SequenceNode):
            return list(node.value)
        if isinstance(node, yaml.MappingNode):
            return [part for pair in node.value for part in pair]
        return []

    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()  # entered and not yet left: the ancestors of the node being counted
    stack = [(root, False)]
    while stack:
        node, leaving = stack.pop()
        key = id(node)
        if leaving:
            open_nodes.discard(key)
            sizes[key] = 1 + sum(sizes[id(child)] for child in children(node))
            if sizes[key] > limit:
                return sizes[key]
            continue
        if key in sizes:
            continue
        if key in open_nodes:
            return None
        open_nodes.add(key)
        stack.append((node, True))
        for child in children(node):
            if id(child) in open_nodes:
                return None
            if id(child) not in sizes:
                stack.append((child, False))
    return sizes[id(root)]


def build_chain(defaults: dict[str, Any], steps: list[Any], path: str, seed_offset: int,
                dtype: str, device: str | None, inside: str | None = None) -> list[tuple[Job, Source, str | None]]:
    """Checked jobs of one run of the chain (see ``jobs.check``), each with the Source its picture fills
    and its ``out``. ``inside``: a folder every input picture and ``out`` must stay in (``None``: anywhere)."""
    if not steps:
        raise UsageError(f"chain file {path!r} has no steps")
    if len(steps) > jobs_module.MAX_CHAIN_STEPS:
        raise UsageError(f"chain file {path!r} has {len(steps)} steps, more than the limit of "
                         f"{jobs_module.MAX_CHAIN_STEPS}")
    built: list[tuple[Job, Source, str | None]] = []
    previous: Source | None = None
    for number, step in enumerate(steps, start=1):
        where = f"chain step {number}"
        if not isinstance(step, dict):
            raise UsageError(f"{where} must be a mapping (task: ..., prompt: ...), got {jobs_module.shown(step)}")
        step = dict(step)
        out = step.pop("out", None)
        if out is not None and (not isinstance(out, str) or not out.strip()):
            raise UsageError(f"{where}: out must be a file name, got {jobs_module.shown(out)}")
        if out is not None:
            jobs_module._check_name(out, f"{where}: out")
        if out is not None and inside is not None and jobs_module.outside(out, inside):
            raise UsageError(f"{where}: out {jobs_module.shown(out)} is outside the folder the chain runs in, "
                             f"{inside!r}; a chain file may only read and write files inside it (pass "
                             f"{jobs_module.ALLOW_OUTSIDE} if you trust this chain file)")
        for key in ("dtype", "device", "fast"):
            if key in step:
                where_set = "--fast" if key == "fast" else f"top level or --{key}"
                raise UsageError(f"{where}: {key} is set for the whole chain ({where_set}), not per step")
        job = Job.from_mapping(step, where, defaults={k: v for k, v in _step_defaults(defaults, where).items()})
        job.dtype, job.device = dtype, device
        job.seed = job.seed + seed_offset if isinstance(job.seed, int) and not isinstance(job.seed, bool) else job.seed
        if inside is not None:
            jobs_module.check_inside(job, inside, f"{where}: ")
        check(job, where=f"{where}: ", previous=previous)
        previous = Source(job=job)
        built.append((job, previous, out))
    # a step hands latents (output_type: latent, or denoising_end before denoising_start) only to the next one
    for number, (job, _, out) in enumerate(built, start=1):
        if job.output_type == "latent":
            if number == len(built):
                jobs_module.check_final(job, f"chain step {number} (the last): ")
            if out is not None:
                raise UsageError(f"chain step {number}: out {jobs_module.shown(out)} cannot be written: the step hands "
                                 f"latents to the next one (output_type: latent, or a denoising_end followed by "
                                 f"denoising_start), not a picture")
    return built


def _step_defaults(defaults: dict[str, Any], where: str) -> dict[str, Any]:
    # the chain's top level uses the same names as a step; read them the same way
    values = {k: v for k, v in defaults.items() if k not in ("dtype", "device")}
    if not values:
        return {}
    job = Job.from_mapping({"task": "text2image", **values}, f"{where} (chain defaults)")
    jobs_module.check_fields(job, f"{where} (chain defaults): ")
    return {name: getattr(job, name) for name in ("model", "prior", "negative_prompt", "seed", "scheduler", "steps",
                                                  "guidance", "prior_steps", "prior_guidance", "strength", "width",
                                                  "height", "keep_unmasked", "weighting", "noise_level", "controlnet",
                                                  "controlnet_scale", "depth_model", "preset")
            if getattr(job, name) is not None}


def chain(args: Any) -> int:
    defaults, steps = read_chain(args.file)
    where = f"chain file {args.file!r}"
    if len(steps) > jobs_module.MAX_CHAIN_STEPS:
        raise UsageError(f"{where} has {len(steps)} steps, more than the limit of {jobs_module.MAX_CHAIN_STEPS}")
    check_count(len(steps) * args.num, f"--num {args.num} runs of a chain of {len(steps)} steps")
    seed = args.seed if args.seed is not None else defaults.get("seed")
    if seed is None:
        seed = random_seed()
    check_seed(seed, args.num, "the chain's seed")
    defaults = {**defaults, "seed": seed}
    dtype = args.dtype or defaults.get("dtype") or "fp32"
    device = args.device or defaults.get("device")
    if not isinstance(dtype, str) or dtype not in jobs_module.models.DTYPES:
        raise UsageError(f"{where}: dtype must be one of {', '.join(jobs_module.models.DTYPES)}, got "
                         f"{jobs_module.shown(dtype)}")
    if device is not None and not isinstance(device, str):
        raise UsageError(f"{where}: device must be a torch device such as cpu or cuda, got "
                         f"{jobs_module.shown(device)}")
    inside = None if getattr(args, "allow_outside_paths", False) else os.getcwd()
    runs = [build_chain(defaults, steps, args.file, i, dtype, device, inside=inside) for i in range(args.num)]
    for built in runs:
        for job, _, _ in built:
            job.fast = bool(args.fast)
    paths = output_paths(args.out, args.num, f"chain-{seed}")
    step_paths = {number: output_paths(out, args.num, "", f"chain step {number + 1}: out")
                  for number, (_, _, out) in enumerate(runs[0]) if out}
    for built in runs:
        for number, (job, _, _) in enumerate(built, start=1):
            settle(job, where=f"chain step {number}: ")
    for number, (job, _, _) in enumerate(runs[0], start=1):
        for note in advice(job):
            _say(args.quiet, f"sfumato: warning: chain step {number}: {note}")
    device = runs[0][0][0].device
    loader = Loader(dtype, device, args.quiet, fast=bool(args.fast))
    loader.preload([step for job, _, _ in runs[0] for step in plan(job)[-1:]])
    for index, built in enumerate(runs):
        for number, (job, source, _) in enumerate(built):
            label = f"step {number + 1}/{len(built)}" + (f", run {index + 1}/{args.num}" if args.num > 1 else "")
            source.picture = run(job, loader, label, args.quiet)
            last = number == len(built) - 1
            targets = ([paths[index]] if last else []) + ([step_paths[number][index]] if number in step_paths else [])
            for target in targets:
                _announce(write_png(source.picture, target, picture_record(job, "chain", index, args.num)))
    return 0


# ---------------------------------------------------------------------------------------------- info & reproduce

# the order `sfumato info` prints fields in; anything else follows
_INFO_ORDER = ("task", "command", "prompt", "negative_prompt", "weighting", "items", "weights", "image", "mask", "keep_unmasked",
               "hint", "depth_model", "strength", "noise_level", "denoising_start", "denoising_end", "output_type",
               "seed", "steps", "guidance", "controlnet_scale", "control_start", "control_end", "prior_steps",
               "prior_guidance", "width", "height",
               "preset", "scheduler", "scheduler_class", "model", "prior", "controlnet", "dtype", "fast", "device", "cpu_threads",
               "index", "num", "sfumato", "input_sha256")


def _read(path: str) -> dict[str, Any]:
    try:
        return read_parameters(path)
    except MetadataError as error:
        raise UsageError(str(error)) from None


def info(args: Any) -> int:
    record = _read(args.image)
    if args.json:
        print(json.dumps(record, indent=2, ensure_ascii=False, sort_keys=True))
    else:
        for line in format_record(record):
            print(line)
    return 0


def format_record(record: dict[str, Any], indent: str = "") -> list[str]:
    """Readable ``key: value`` lines; pictures made by earlier steps are shown indented under their key.

    A PNG can come from anyone: values of unexpected types are shown as they are, and control characters
    (terminal escape sequences, line breaks) are shown escaped, never sent to the terminal.
    """
    lines = []
    keys = [k for k in _INFO_ORDER if k in record] + sorted((k for k in record if k not in _INFO_ORDER), key=str)
    for key in keys:
        value, label = record[key], _printable(key)
        if isinstance(value, dict) and key in ("image", "mask", "hint"):
            lines.append(f"{indent}{label}: made by an earlier step:")
            lines.extend(format_record(value, indent + "    "))
        elif key == "items" and isinstance(value, list) and all(isinstance(item, dict) for item in value):
            lines.append(f"{indent}items:")
            for item in value:
                if "text" in item:
                    lines.append(f"{indent}  - text: {_printable(item['text'])}")
                elif isinstance(item.get("image"), dict):
                    lines.append(f"{indent}  - image made by an earlier step:")
                    lines.extend(format_record(item["image"], indent + "      "))
                else:
                    lines.append(f"{indent}  - image: {_printable(item.get('image'))}")
        elif key == "input_sha256" and isinstance(value, dict):
            for name, digest in value.items():
                lines.append(f"{indent}sha256 of {_printable(name)}: {_printable(digest)}")
        elif key == "sfumato":
            lines.append(f"{indent}sfumato version: {_printable(value)}")
        else:
            lines.append(f"{indent}{label}: {_printable(value) if value is not None else '(none)'}")
    return lines


_CONTROL = {code: f"\\x{code:02x}" for code in [*range(32), *range(127, 160)]}


def _printable(value: Any) -> str:
    """``value`` as text with control characters escaped (``\\x1b``), so printing it cannot drive the terminal."""
    return str(value).translate(_CONTROL)


def pixel_difference(original: str | os.PathLike, picture: Any) -> str | None:
    """``None`` when ``picture`` has the same pixels as the file ``original``, else how they differ."""
    import numpy as np
    import PIL.Image

    with PIL.Image.open(original) as opened:
        if opened.size != picture.size:  # told by the header: a huge original is never decoded
            return f"size {picture.width}x{picture.height} instead of {opened.width}x{opened.height}"
        before = np.asarray(opened.convert(picture.mode))
    after = np.asarray(picture)
    if before.shape == after.shape and np.array_equal(before, after):
        return None
    if before.shape != after.shape:
        return f"size {after.shape[1]}x{after.shape[0]} instead of {before.shape[1]}x{before.shape[0]}"
    difference = np.abs(before.astype(np.int16) - after.astype(np.int16))
    return f"max difference {int(difference.max())}/255 on {int((difference.max(axis=-1) > 0).sum())} pixels"


#: The most torch threads a record may ask ``reproduce`` for (it is only information, not a request for more).
MAX_RECORDED_THREADS = 1024


def _recorded_extras(record: dict[str, Any], where: str) -> tuple[int | None, str, int, int]:
    """(cpu_threads, command, index, num) of a stored record, checked: they are copied into the new PNG."""
    threads, command = record.get("cpu_threads"), record.get("command", "reproduce")
    index, num = record.get("index", 0), record.get("num", 1)
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int)
                                or not 1 <= threads <= MAX_RECORDED_THREADS):
        raise UsageError(f"{where}: cpu_threads must be a whole number from 1 to {MAX_RECORDED_THREADS}, got "
                         f"{jobs_module.shown(threads)}")
    if not isinstance(command, str) or len(command) > 100:
        raise UsageError(f"{where}: command must be the name of a sfumato command, got {jobs_module.shown(command)}")
    for name, value, low in (("num", num, 1), ("index", index, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise UsageError(f"{where}: {name} must be a whole number of at least {low}, got "
                             f"{jobs_module.shown(value)}")
    if index >= num:
        raise UsageError(f"{where}: index {index} must be below num {num} (picture index of num pictures)")
    return threads, command, index, num


def reproduce(args: Any) -> int:
    record = _read(args.image)
    where = f"the parameters in {args.image!r}"
    threads, command, index, num = _recorded_extras(record, where)
    from .. import limits

    # the pixels are compared afterwards: a picture too large to decode is refused now, not after the work
    jobs_module._check_picture_size(args.image, "IMAGE.png", limits.max_side())
    job = Job.from_mapping(record, where, record=True)
    if job.seed is None:
        raise UsageError(f"the parameters in {args.image!r} have no seed; the picture cannot be made again")
    jobs_module.check_final(job, f"{args.image}: ")
    check(job, where=f"{args.image}: ")
    source = Path(args.image)
    out = args.out or str(source.with_name(f"{source.stem}-reproduced.png"))
    [path] = output_paths(out, 1, "")
    settle(job, where=f"{args.image}: ", override_device=args.device)
    loader = Loader(job.dtype, job.device, args.quiet, fast=job.fast)
    # the recorded thread count too: on a CPU it can change the last bit of a pixel
    with cpu_threads(threads if job.device == "cpu" else None):
        loader.preload(plan(job))
        picture = run(job, loader, "", args.quiet)
        new_record = picture_record(job, command, index, num)
    _announce(write_png(picture, path, new_record))

    detail = pixel_difference(args.image, picture)
    if detail is None:
        _say(args.quiet, f"pixels identical to {args.image}")
        return 0
    device, dtype, version = (str(record.get(key))[:40] for key in ("device", "dtype", "sfumato"))
    message = (f"pixels differ from {args.image}: {detail} (recorded: {device}, {dtype}, sfumato {version}; "
               f"bit-identical results need the same device, dtype, library "
               f"versions and model files)")
    if args.check:
        print(f"sfumato: error: {message}", file=sys.stderr)
        return 1
    _say(args.quiet, f"warning: {message}")
    return 0


def serve(args: Any) -> int:
    from ..serve import command  # the HTTP server: sfumato.serve, which runs jobs with this package's parts

    return command(args)


def batch(args: Any) -> int:
    from ..batch import command  # many jobs: sfumato.batch, which runs them with this package's parts

    return command(args)


COMMANDS = {"chain": chain, "info": info, "reproduce": reproduce, "batch": batch, "serve": serve,
            **{name: generate for name in GENERATING}}
