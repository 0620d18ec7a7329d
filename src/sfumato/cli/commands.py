"""What each subcommand does: build jobs, check them, load models once, make and write pictures."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import sys
import tempfile
from pathlib import Path
from typing import Any, Iterator

from ..metadata import MetadataError, read_parameters, write_png
from . import jobs as jobs_module
from .errors import UsageError
from .jobs import Job, Source, advice, check, check_seed, run, settle, with_seed
from .models import Loader

# subcommand -> task
GENERATING = {"generate": "text2image", "img2img": "image2image", "inpaint": "inpaint",
              "controlnet": "controlnet", "interpolate": "interpolate"}


def random_seed() -> int:
    # 32 bits: short enough to read and type back, plenty for picking pictures
    return secrets.randbelow(2 ** 32)


def output_paths(out: str | None, count: int, default_stem: str, where: str = "--out") -> list[Path]:
    """Where ``count`` pictures go: OUT itself for one, OUT-0.png ... OUT-{count-1}.png for more.

    Checked before any work: the name is a .png file, not a folder, and its
    folder exists (it is created) and can be written in.
    """
    path = Path(out).expanduser() if out else Path(f"{default_stem}.png")
    if path.is_dir() or (out and out.endswith((os.sep, "/"))) or path.name in ("", ".", ".."):
        raise UsageError(f"{where} {out!r} is a folder; name the .png file to write in it, e.g. "
                         f"{os.path.join(out, 'picture.png')!r}")
    if path.suffix == "":
        path = path.with_name(path.name + ".png")
    elif path.suffix.lower() != ".png":
        raise UsageError(f"{where} must name a .png file (the parameters are stored in a PNG text chunk), "
                         f"got {out!r}")
    paths = [path] if count == 1 else [path.with_name(f"{path.stem}-{i}{path.suffix}") for i in range(count)]
    for target in paths:
        if target.is_dir():
            raise UsageError(f"{where}: {str(target)!r} is a folder; name another .png file to write")
    _check_writable(path.parent, where, out)
    return paths


def _check_writable(folder: Path, where: str, out: str | None) -> None:
    """Create ``folder`` if needed and write a probe file in it, so a bad output fails before the work."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UsageError(f"{where} {out!r}: cannot create the folder {str(folder)!r}: "
                         f"{error.strerror or error}") from None
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".sfumato-probe-", suffix=".png"):
            pass
    except OSError as error:
        raise UsageError(f"{where} {out!r}: cannot write in the folder {str(folder)!r}: "
                         f"{error.strerror or error}") from None


def picture_record(job: Job, command: str, index: int = 0, count: int = 1) -> dict[str, Any]:
    """The parameters written into a picture's PNG."""
    record = job.to_record()
    record["command"] = command
    if count > 1:
        record.update(index=index, num=count)
    if job.device == "cpu":
        import torch

        # CPU kernels split sums by thread, so the last bit of a pixel can depend on the thread count
        record["cpu_threads"] = torch.get_num_threads()
    return record


@contextlib.contextmanager
def cpu_threads(count: int | None) -> Iterator[None]:
    """Run with ``count`` torch CPU threads (``None``: as is), restoring the count afterwards."""
    import torch

    before = torch.get_num_threads()
    if count:
        torch.set_num_threads(int(count))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _announce(path: Path) -> None:
    # the result of the command: stdout, even with --quiet, so scripts can pick the files up
    print(path, flush=True)


def _say(quiet: bool, message: str) -> None:
    if not quiet:
        print(message, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------- generate & co


def job_from_args(args: Any) -> Job:
    task = GENERATING[args.command]
    job = Job(task=task, model=args.model, prior=args.prior, prompt=getattr(args, "prompt", None),
              negative_prompt=args.negative, steps=args.steps, guidance=args.guidance,
              prior_steps=args.prior_steps, prior_guidance=args.prior_guidance,
              strength=getattr(args, "strength", None), scheduler=args.scheduler, dtype=args.dtype,
              device=args.device)
    if args.size is not None:
        job.width, job.height = args.size
    if task in ("image2image", "inpaint"):
        job.image = Source(path=args.image)
    if task == "inpaint":
        job.mask = Source(path=args.mask)
        job.keep_unmasked = args.keep_unmasked
    if task == "controlnet":
        job.hint = Source(path=args.hint)
    if task == "interpolate":
        job.items = [jobs_module.classify_item(item) for item in args.items]
        job.weights = args.weights
    return job


def generate(args: Any) -> int:
    """generate / img2img / inpaint / controlnet / interpolate: --num pictures of one job."""
    job = check(job_from_args(args))
    seed = args.seed if args.seed is not None else random_seed()
    check_seed(seed, args.num)
    paths = output_paths(args.out, args.num, f"{args.command}-{seed}")
    settle(job)
    for note in advice(job):
        _say(args.quiet, f"sfumato: warning: {note}")
    loader = Loader(job.dtype, job.device, args.quiet)
    loader.preload([(job.task, job.model_ref, job.prior_ref)])
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
                   "prior_guidance_scale", "prior_guidance", "strength", "keep_unmasked"}


def read_chain(path: str) -> tuple[dict[str, Any], list[Any]]:
    """(defaults, steps) from a YAML or JSON workflow file."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise UsageError(f"chain file {path!r}: no such file")
    text = file.read_text(encoding="utf-8")
    suffix = file.suffix.lower()
    if suffix == ".json":
        data = _parse_json(text, path)
    elif suffix in (".yaml", ".yml"):
        data = _parse_yaml(text, path)
    else:  # JSON is valid YAML; try the strict one first for its clearer errors
        try:
            data = json.loads(text)
        except json.JSONDecodeError:
            data = _parse_yaml(text, path)
    if isinstance(data, list):
        return {}, data
    if isinstance(data, dict) and isinstance(data.get("steps"), list):
        defaults = {k: v for k, v in data.items() if k != "steps"}
        unknown = sorted(set(defaults) - _CHAIN_DEFAULTS)
        if unknown:
            raise UsageError(f"chain file {path!r}: unknown top-level keys {unknown}; the top level takes "
                             f"`steps` (the list) and defaults for every step: {', '.join(sorted(_CHAIN_DEFAULTS))}")
        return defaults, data["steps"]
    raise UsageError(f"chain file {path!r} must hold a list of steps, or a mapping with a `steps` list")


def _parse_json(text: str, path: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise UsageError(f"chain file {path!r} is not valid JSON: {error}") from None


def _parse_yaml(text: str, path: str) -> Any:
    try:
        import yaml
    except ImportError:
        raise UsageError(f"reading YAML chain file {path!r} needs PyYAML (pip install pyyaml); "
                         f"or write the chain as JSON") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise UsageError(f"chain file {path!r} is not valid YAML: {' '.join(str(error).split())}") from None


def build_chain(defaults: dict[str, Any], steps: list[Any], path: str, seed_offset: int,
                dtype: str, device: str | None) -> list[tuple[Job, Source, str | None]]:
    """Checked jobs of one run of the chain (see ``jobs.check``), each with the Source its picture fills
    and its ``out``."""
    if not steps:
        raise UsageError(f"chain file {path!r} has no steps")
    built: list[tuple[Job, Source, str | None]] = []
    previous: Source | None = None
    for number, step in enumerate(steps, start=1):
        where = f"chain step {number}"
        if not isinstance(step, dict):
            raise UsageError(f"{where} must be a mapping (task: ..., prompt: ...), got {step!r}")
        step = dict(step)
        out = step.pop("out", None)
        if out is not None and not isinstance(out, str):
            raise UsageError(f"{where}: out must be a file name, got {out!r}")
        for key in ("dtype", "device"):
            if key in step:
                raise UsageError(f"{where}: {key} is set for the whole chain (top level or --{key}), not per step")
        job = Job.from_mapping(step, where, defaults={k: v for k, v in _step_defaults(defaults, where).items()})
        job.dtype, job.device = dtype, device
        job.seed = job.seed + seed_offset if isinstance(job.seed, int) and not isinstance(job.seed, bool) else job.seed
        check(job, where=f"{where}: ", previous=previous)
        previous = Source(job=job)
        built.append((job, previous, out))
    return built


def _step_defaults(defaults: dict[str, Any], where: str) -> dict[str, Any]:
    # the chain's top level uses the same names as a step; read them the same way
    values = {k: v for k, v in defaults.items() if k not in ("dtype", "device")}
    if not values:
        return {}
    job = Job.from_mapping({"task": "text2image", **values}, f"{where} (chain defaults)")
    return {name: getattr(job, name) for name in ("model", "prior", "negative_prompt", "seed", "scheduler", "steps",
                                                  "guidance", "prior_steps", "prior_guidance", "strength", "width",
                                                  "height", "keep_unmasked") if getattr(job, name) is not None}


def chain(args: Any) -> int:
    defaults, steps = read_chain(args.file)
    seed = args.seed if args.seed is not None else defaults.get("seed")
    if seed is None:
        seed = random_seed()
    check_seed(seed, args.num, "the chain's seed")
    defaults = {**defaults, "seed": seed}
    dtype = args.dtype or defaults.get("dtype") or "fp32"
    device = args.device or defaults.get("device")
    runs = [build_chain(defaults, steps, args.file, i, dtype, device) for i in range(args.num)]
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
    loader = Loader(dtype, device, args.quiet)
    loader.preload([(job.task, job.model_ref, job.prior_ref) for job, _, _ in runs[0]])
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
_INFO_ORDER = ("task", "command", "prompt", "negative_prompt", "items", "weights", "image", "mask", "keep_unmasked",
               "hint", "strength", "seed", "steps", "guidance", "prior_steps", "prior_guidance", "width", "height",
               "scheduler", "scheduler_class", "model", "prior", "dtype", "device", "cpu_threads", "index", "num",
               "sfumato", "input_sha256")


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
    """Readable ``key: value`` lines; pictures made by earlier steps are shown indented under their key."""
    lines = []
    keys = [k for k in _INFO_ORDER if k in record] + sorted(k for k in record if k not in _INFO_ORDER)
    for key in keys:
        value = record[key]
        if isinstance(value, dict) and key in ("image", "mask", "hint"):
            lines.append(f"{indent}{key}: made by an earlier step:")
            lines.extend(format_record(value, indent + "    "))
        elif key == "items":
            lines.append(f"{indent}items:")
            for item in value:
                if "text" in item:
                    lines.append(f"{indent}  - text: {item['text']}")
                elif isinstance(item.get("image"), dict):
                    lines.append(f"{indent}  - image made by an earlier step:")
                    lines.extend(format_record(item["image"], indent + "      "))
                else:
                    lines.append(f"{indent}  - image: {item.get('image')}")
        elif key == "input_sha256":
            for name, digest in value.items():
                lines.append(f"{indent}sha256 of {name}: {digest}")
        elif key == "sfumato":
            lines.append(f"{indent}sfumato version: {value}")
        else:
            lines.append(f"{indent}{key}: {value if value is not None else '(none)'}")
    return lines


def reproduce(args: Any) -> int:
    import numpy as np
    import PIL.Image

    record = _read(args.image)
    job = Job.from_mapping(record, f"the parameters in {args.image!r}", record=True)
    if job.seed is None:
        raise UsageError(f"the parameters in {args.image!r} have no seed; the picture cannot be made again")
    check(job, where=f"{args.image}: ")
    source = Path(args.image)
    out = args.out or str(source.with_name(f"{source.stem}-reproduced.png"))
    [path] = output_paths(out, 1, "")
    settle(job, where=f"{args.image}: ", override_device=args.device)
    loader = Loader(job.dtype, job.device, args.quiet)
    # the recorded thread count too: on a CPU it can change the last bit of a pixel
    with cpu_threads(record.get("cpu_threads") if job.device == "cpu" else None):
        loader.preload(_plan(job))
        picture = run(job, loader, "", args.quiet)
        new_record = picture_record(job, record.get("command", "reproduce"), record.get("index", 0),
                                    record.get("num", 1))
    _announce(write_png(picture, path, new_record))

    with PIL.Image.open(args.image) as original:
        before = np.asarray(original.convert(picture.mode))
    after = np.asarray(picture)
    if before.shape == after.shape and np.array_equal(before, after):
        _say(args.quiet, f"pixels identical to {args.image}")
        return 0
    if before.shape != after.shape:
        detail = f"size {after.shape[1]}x{after.shape[0]} instead of {before.shape[1]}x{before.shape[0]}"
    else:
        difference = np.abs(before.astype(np.int16) - after.astype(np.int16))
        detail = (f"max difference {int(difference.max())}/255 on {int((difference.max(axis=-1) > 0).sum())} "
                  f"pixels")
    message = (f"pixels differ from {args.image}: {detail} (recorded: {record.get('device')}, {record.get('dtype')}, "
               f"sfumato {record.get('sfumato')}; bit-identical results need the same device, dtype, library "
               f"versions and model files)")
    if args.check:
        print(f"sfumato: error: {message}", file=sys.stderr)
        return 1
    _say(args.quiet, f"warning: {message}")
    return 0


def _plan(job: Job) -> list[tuple[str, Any, Any]]:
    """Every (task, model, prior) a job needs, earlier steps first."""
    plan = []
    for _, source in job._sources():
        if source.job is not None:
            plan.extend(_plan(source.job))
    return plan + [(job.task, job.model_ref, job.prior_ref)]


COMMANDS = {"chain": chain, "info": info, "reproduce": reproduce, **{name: generate for name in GENERATING}}
