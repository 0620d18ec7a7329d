"""Reading a batch's job file into checked pictures, before any work starts.

Three forms, which may be mixed:

* job records, one JSON object per line (``.jsonl``): the same shape as a
  chain step or the record stored in a PNG (``sfumato info --json``), plus
  ``num`` for several seeds (``seed``, ``seed + 1``, ...); a line without a
  ``task`` is text-to-image. A PNG's own record (it has a ``sfumato``
  key) is one picture, made again as ``sfumato reproduce`` would;
* plain prompts, one per line (any other suffix; a line starting with ``{``
  is a job record there too, ``#`` starts a comment), taking everything
  else from the command line's defaults;
* sweeps: ``{"template": {...}, "values": {"colour": [...], ...}}`` (a line
  of either file, or a whole ``.json`` / ``.yaml`` document, alone or in a
  list), expanded to the cartesian product of the lists. ``{name}`` in a
  template string is replaced by the value (a string that is exactly
  ``{name}`` takes the value as it is, e.g. a number); a values key that the
  template does not mention sets that job field (``seed``, ``steps``,
  ``size``, ...).

Each job goes through the command line's own checks (:func:`jobs.check` and
:func:`jobs.settle`: files, checkpoint folders, defaults, step limits, size
limits) and becomes the complete record a worker runs with
:func:`jobs.from_record`. A job's output name is derived from what decides
its pixels, so the layout is the same on every run and a re-run finds what is
done.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
import numbers
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from ..cli import jobs, models
from ..cli.errors import UsageError

#: Suffixes read as one document (a sweep, or a list of jobs and sweeps) rather than line by line.
DOCUMENT_SUFFIXES = (".json", ".yaml", ".yml")
#: Suffixes whose every line must be a JSON object.
JSONL_SUFFIXES = (".jsonl", ".ndjson")
#: Keys of a job line that are about running it, not about the picture.
RUN_KEYS = ("num", "cpu_threads")
# record keys that say how or where a picture was made, not what it is: left out of its identity
_NOT_IDENTITY = {"sfumato", "device", "scheduler_class", "cpu_threads", "command", "index", "num"}
_PLACEHOLDER = re.compile(r"\{(\w+)\}")


@dataclass
class Picture:
    """One picture to make: the complete job record a worker runs, and where it goes."""

    number: int  # position in the run (the manifest's order)
    where: str  # "jobs.jsonl line 3" (", picture 2 of 4")
    line: int | None  # line in the job file, where it has lines
    record: dict[str, Any]  # jobs.Job.to_record() of the checked, settled job, without a device
    threads: int  # torch CPU threads to make it with
    name: str  # output file name, derived from the job
    key: str  # SHA-256 of what decides the pixels
    index: int = 0  # its place among its line's `num` pictures
    count: int = 1


@dataclass
class Problem:
    """A job that cannot run, found before any work."""

    where: str
    line: int | None
    message: str
    fatal: bool = False  # e.g. an unknown model: stops the run even without --strict


@dataclass
class JobFile:
    pictures: list[Picture] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    duplicates: int = 0


@dataclass
class Defaults:
    """The command line's settings for jobs that set none (job field names), and the run-wide ones."""

    fields: dict[str, Any] = field(default_factory=dict)  # model, steps, width, ... (None: unset)
    seed: int = 0  # jobs without a seed: the same pictures on every run
    num: int | None = None
    threads: int = 1
    device: str | None = None  # the run's device (None: each worker's best)


# ---------------------------------------------------------------------------------------------- reading


def entries(path: str) -> Iterator[tuple[str, int | None, Any]]:
    """(where, line, mapping) for every job or sweep in the file; a :class:`Problem` instead of the mapping
    for an entry that cannot even be read."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise UsageError(f"job file {path!r}: no such file")
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise UsageError(f"job file {path!r} cannot be read as UTF-8 text: {error}") from None
    name = file.name
    suffix = file.suffix.lower()
    if suffix in DOCUMENT_SUFFIXES:
        data = _document(text, path, suffix)
        items = data if isinstance(data, list) else [data]
        if not items:
            raise UsageError(f"job file {path!r} holds an empty list")
        for number, item in enumerate(items, start=1):
            yield (f"{name}" if not isinstance(data, list) else f"{name} item {number}"), None, item
        return
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        where = f"{name} line {number}"
        if not line or line.startswith("#"):
            continue
        if line.startswith("{") or suffix in JSONL_SUFFIXES:
            try:
                data = json.loads(line)
            except json.JSONDecodeError as error:
                yield where, number, Problem(where, number, f"{where}: not a JSON object: {error.msg} "
                                                            f"(column {error.colno})")
                continue
            yield where, number, data
        else:
            yield where, number, {"prompt": line}


def _document(text: str, path: str, suffix: str) -> Any:
    if suffix == ".json":
        try:
            return json.loads(text)
        except json.JSONDecodeError as error:
            raise UsageError(f"job file {path!r} is not valid JSON: {error}") from None
    try:
        import yaml
    except ImportError:
        raise UsageError(f"reading the YAML job file {path!r} needs PyYAML (pip install pyyaml); or write it as "
                         f"JSON") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise UsageError(f"job file {path!r} is not valid YAML: {' '.join(str(error).split())}") from None


def expand(where: str, data: Any) -> Iterator[tuple[str, Any]]:
    """(where, job mapping) for a job, or for each job of a sweep."""
    if not (isinstance(data, dict) and "template" in data):
        yield where, data
        return
    unknown = sorted(set(data) - {"template", "values"})
    template, values = data.get("template"), data.get("values") or {}
    if unknown:
        raise UsageError(f"{where}: a sweep takes `template` and `values`, not {unknown}")
    if not isinstance(template, dict):
        raise UsageError(f"{where}: the sweep's template must be a mapping of job fields, got {template!r}")
    if not isinstance(values, dict) or not all(isinstance(v, list) and v for v in values.values()):
        raise UsageError(f"{where}: the sweep's values must map names to non-empty lists, got {values!r}")
    used = set(_placeholders(template))
    missing = sorted(used - set(values))
    if missing:
        raise UsageError(f"{where}: the template uses {', '.join('{' + m + '}' for m in missing)} but values "
                         f"has no list for {', '.join(missing)}")
    names = list(values)
    for number, combination in enumerate(itertools.product(*(values[n] for n in names)), start=1):
        chosen = dict(zip(names, combination))
        job = _fill(copy.deepcopy(template), chosen)
        for name, value in chosen.items():
            if name not in used:
                job[name] = value
        label = ", ".join(f"{name}={value}" for name, value in chosen.items())
        yield f"{where} sweep job {number} ({label})", job


def _placeholders(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield from _PLACEHOLDER.findall(value)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _placeholders(item)
    elif isinstance(value, list):
        for item in value:
            yield from _placeholders(item)


def _fill(value: Any, chosen: dict[str, Any]) -> Any:
    if isinstance(value, str):
        whole = _PLACEHOLDER.fullmatch(value)
        if whole:
            return chosen[whole.group(1)]
        return _PLACEHOLDER.sub(lambda match: str(chosen[match.group(1)]), value)
    if isinstance(value, dict):
        return {key: _fill(item, chosen) for key, item in value.items()}
    if isinstance(value, list):
        return [_fill(item, chosen) for item in value]
    return value


# ---------------------------------------------------------------------------------------------- checking


def read(path: str, defaults: Defaults) -> JobFile:
    """Every picture of the job file, checked; problems are collected, not raised (see :class:`Problem`)."""
    with models.remembering_checks():  # jobs on one model read its files once
        return _read(path, defaults)


def _read(path: str, defaults: Defaults) -> JobFile:
    result = JobFile()
    seen: dict[str, Picture] = {}
    notes: dict[str, list[str]] = {}
    for where, line, data in entries(path):
        if isinstance(data, Problem):
            result.problems.append(data)
            continue
        try:
            expanded = list(expand(where, data))
        except UsageError as error:
            result.problems.append(Problem(where, line, str(error)))
            continue
        for job_where, mapping in expanded:
            try:
                pictures = _pictures(job_where, line, mapping, defaults, notes)
            except UsageError as error:
                result.problems.append(Problem(job_where, line, str(error), fatal=_is_fatal(error)))
                continue
            for picture in pictures:
                if picture.key in seen:
                    result.duplicates += 1
                    result.warnings.append(f"{picture.where} makes the same picture as {seen[picture.key].where}; "
                                           f"it is made once")
                    continue
                picture.number = len(result.pictures)
                seen[picture.key] = picture
                result.pictures.append(picture)
    for note, places in notes.items():
        shown = ", ".join(places[:3]) + (f" and {len(places) - 3} more" if len(places) > 3 else "")
        result.warnings.append(f"{shown}: {note}")
    return result


class _ModelError(UsageError):
    """The job names a model that does not exist: every job naming it would fail, so the run stops."""


def _is_fatal(error: UsageError) -> bool:
    return isinstance(error, _ModelError)


def _pictures(where: str, line: int | None, data: Any, defaults: Defaults,
              notes: dict[str, list[str]]) -> list[Picture]:
    if not isinstance(data, dict):
        raise UsageError(f"{where}: a job must be a JSON object of job fields (task, prompt, seed, ...) or a "
                         f"prompt, got {type(data).__name__}")
    data = dict(data)
    stored = "sfumato" in data  # a PNG's own record: one picture, exactly as it was made
    threads = data.pop("cpu_threads", None) if not stored else data.get("cpu_threads")
    num = None if stored else data.pop("num", None)
    if stored:
        data.pop("device", None)  # where it was made; this run's --device decides
    elif "device" in data:
        raise UsageError(f"{where}: device is set for the whole run (--device), not per job")
    data.setdefault("task", "text2image")
    if num is not None:
        jobs._positive_int(num, f"{where}: num")
    if threads is not None:
        jobs._positive_int(threads, f"{where}: cpu_threads")
    job = jobs.Job.from_mapping(data, where, record=stored,
                                defaults={k: v for k, v in defaults.fields.items() if v is not None})
    count = num or (1 if stored else defaults.num or 1)
    if job.seed is None:
        job.seed = defaults.seed
    jobs.check_seed(job.seed, count, f"{where}: seed")
    _check_models(job, where)
    jobs.check(job, where=f"{where}: ")
    # settled here for its defaults and limits; the device is each worker's (see Defaults.device)
    jobs.settle(job, where=f"{where}: ", override_device="cpu")
    _forget_device(job, defaults.device)
    for note in jobs.advice(job):
        notes.setdefault(note, []).append(where)
    pictures = []
    for index in range(count):
        picture_job = jobs.with_seed(job, job.seed + index)
        record = picture_job.to_record()
        key = job_key(record)
        label = f"{where}, picture {index + 1} of {count}" if count > 1 else where
        pictures.append(Picture(number=0, where=label, line=line, record=record, threads=threads or defaults.threads,
                                name=output_name(record, key), key=key, index=index, count=count))
    _release(job)
    return pictures


def _check_models(job: jobs.Job, where: str) -> None:
    """A model or prior that cannot be found is no one line's mistake: it stops the run before any work."""
    for name, value in (("--model", job.model), ("--prior", job.prior)):
        if value is None and name == "--prior":
            continue
        try:
            models.parse_model(value, job.task, f"{where}: {name}")
        except UsageError as error:
            raise _ModelError(str(error)) from None


def _forget_device(job: jobs.Job, device: str | None) -> None:
    job.device = device
    for _, source in job._sources():
        if source.job is not None:
            _forget_device(source.job, device)


def _release(job: jobs.Job) -> None:
    # a worker opens the input pictures again (and checks their SHA-256); thousands of jobs on one
    # picture should not hold thousands of copies here
    for _, source in job._sources():
        source.picture = None
        if source.job is not None:
            _release(source.job)


# ---------------------------------------------------------------------------------------------- names


def identity(record: Any) -> Any:
    """What decides a picture's pixels: its record without how or where it was made, input files by the
    SHA-256 of their pixels rather than their path."""
    if not isinstance(record, dict):
        return record
    hashes = record.get("input_sha256") or {}
    result = {}
    for key, value in record.items():
        if key in _NOT_IDENTITY or key == "input_sha256":
            continue
        if key in ("image", "mask", "hint") and isinstance(value, str) and key in hashes:
            value = f"sha256:{hashes[key]}"
        elif key == "items" and isinstance(value, list):
            value = [{"image": f"sha256:{hashes[f'items.{i}']}"} if isinstance(item, dict)
                     and isinstance(item.get("image"), str) and f"items.{i}" in hashes else identity(item)
                     for i, item in enumerate(value)]
        else:
            value = identity(value)
        result[key] = value
    return result


def job_key(record: dict[str, Any]) -> str:
    canonical = json.dumps(identity(record), sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def output_name(record: dict[str, Any], key: str) -> str:
    """``<prompt words>-<seed>-<10 hex digits of the key>.png``: readable, and the same on every run."""
    text = record.get("prompt")
    if not text and record.get("items"):
        text = " + ".join(item["text"] for item in record["items"] if isinstance(item, dict) and "text" in item)
    slug = re.sub(r"[^a-z0-9]+", "-", (text or record.get("task") or "picture").lower()).strip("-")[:48].strip("-")
    seed = record.get("seed") if isinstance(record.get("seed"), numbers.Integral) else "x"
    return f"{slug or record.get('task', 'picture')}-{seed}-{key[:10]}.png"
