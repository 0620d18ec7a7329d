"""From an API request to the pictures a job makes, with the command line's own checks and runner.

A request is one of three things, all in the job record's words (the names
``sfumato info`` prints, chain steps use and the PNGs store):

* a job record: ``{"task": "text2image", "prompt": ..., "seed": ..., "num": 2}``
  (``num`` pictures, seeds ``seed``, ``seed + 1``, ...). A PNG's own record
  (it has a ``sfumato`` key) is one picture, made again as it was;
* a chain: ``{"chain": <what a chain file holds, or its YAML / JSON text>,
  "seed": ..., "num": ...}``;
* a reproduction: ``{"reproduce": <a PNG as a data URL, result:JOB/N, or its
  record>}``: the same pixels again, compared with the original's.

Pictures inside a request are data URLs, ``upload:DIGEST`` (``POST
/api/uploads``) or ``result:JOB/N`` (a finished job's picture); a path is
accepted only inside ``--data`` (the records of pictures this server made) or
when an uploaded picture has the SHA-256 the record gives for it. Models are
the server's (``--model``), named as ``GET /api/models`` lists them; so are a
Stable Diffusion ControlNet job's ``controlnet`` and any ControlNet job's
``depth_model``: names the server's operator registered (``--controlnet
NAME=FOLDER``, ``--depth-model NAME=FOLDER``), which become the folders before
the command line's checks see the job, so that the pictures' records hold the
folders as the command line writes them (``sfumato reproduce`` works on them).

:func:`Requests.submission` checks a request completely at submission
(``jobs.check`` and ``jobs.settle``: files, checkpoint folders, defaults,
step and size limits, the server's limits) and turns it into complete
records, one per picture, with their seeds fixed: what is stored in the
queue, and what :func:`jobs.from_record` makes into a job again when it runs,
after a restart too.
"""

from __future__ import annotations

import json
import numbers
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import limits as library_limits
from ..cli import jobs
from ..cli.commands import GENERATING, build_chain, chain_steps, random_seed
from ..cli.errors import UsageError
from ..cli.models import BUILTIN, BUILTIN_FOLDERS, parse_model
from .config import ServeConfig
from .errors import ApiError, from_usage
from .pictures import (RESULT_PREFIX, UPLOAD_PREFIX, Uploads, decode, file_bytes, is_inline, open_picture,
                       record_of)

#: The command each task's pictures record, as the command line would.
COMMAND_FOR_TASK = {task: command for command, task in GENERATING.items()}
WORKFLOWS = (*jobs.TASKS, "chain", "reproduce")
_PICTURE_FIELDS = ("image", "mask", "hint")


@dataclass
class Submission:
    """A checked request: what the queue stores and what the caller is told."""

    kind: str  # job | chain | reproduce
    payload: dict  # the request as sent, pictures replaced by references (for "use these settings")
    entries: list[dict]  # one per run: record, command, index, count, threads, also (chain steps shown too)
    summary: dict
    warnings: list[str] = field(default_factory=list)
    original: str | None = None  # reproduce: the PNG to compare with

    @property
    def pictures(self) -> int:
        return sum(1 + len(entry.get("also", ())) for entry in self.entries)

    def stored(self) -> dict:
        return {"payload": self.payload, "entries": self.entries, "original": self.original}


class Requests:
    """Checks requests against the server's models, pictures and limits."""

    def __init__(self, config: ServeConfig, store, uploads: Uploads, device: str):
        self.config, self.store, self.uploads, self.device = config, store, uploads, device
        self.limits = config.limits
        self.data = config.data.resolve()
        self.results = self.data / "results"
        self.names = model_names(config.models)
        self.default_model = config.models[0]
        # registered folders (--controlnet / --depth-model NAME=FOLDER, resolved by config.check()): name -> folder
        self.registered = {"controlnet": dict(config.controlnets), "depth_model": dict(config.depth_models)}
        self._folder_names = {folder: name for folders in self.registered.values() for name, folder in folders.items()}

    # ------------------------------------------------------------------------ submission

    def submission(self, payload: Any, owner: str) -> Submission:
        if not isinstance(payload, dict):
            raise ApiError(422, f"the request must be a JSON object (a job record, {{\"chain\": ...}} or "
                                f"{{\"reproduce\": ...}}), got {type(payload).__name__}", None)
        try:
            if "reproduce" in payload:
                return self._reproduce(payload, owner)
            if "chain" in payload:
                return self._chain(payload, owner)
            return self._single(payload, owner)
        except UsageError as error:
            raise self._explained(from_usage(error)) from None
        except library_limits.RequestTooLarge as error:
            raise ApiError(413, str(error), _size_field(str(error))) from None

    def _single(self, payload: dict, owner: str) -> Submission:
        data = dict(payload)
        stored = "sfumato" in data  # a PNG's own record: one picture, exactly as it was made
        num = 1 if stored else data.pop("num", 1)
        _count(num, "num", self.limits.max_images)
        if stored:
            data.pop("device", None)  # where it was made; this server's device decides
        else:  # what `sfumato info` shows beside the parameters (a record copied without its version)
            for key in ("command", "index", "scheduler_class", "input_sha256", "cpu_threads"):
                data.pop(key, None)
        if not stored and "device" in data:
            raise ApiError(422, f"device: this server runs every job on its own device ({self.device}); leave "
                                f"device out", "device")
        data.setdefault("task", "text2image")
        data.setdefault("model", self.default_model)
        clean = self._sanitize(data, "", owner, record=stored)
        job = jobs.Job.from_mapping(clean, "the job", record=stored)
        self._limit(job, "")
        if job.seed is None:
            job.seed = random_seed()
        jobs.check_seed(job.seed, num, "seed")
        library_limits.check_count(num, "num")
        jobs.check(job)
        jobs.settle(job, override_device=self.device)
        self._limit(job, "")
        threads = data.get("cpu_threads") if stored else None
        command = data.get("command", COMMAND_FOR_TASK[job.task]) if stored else COMMAND_FOR_TASK[job.task]
        entries = []
        for index in range(num):
            picture = jobs.with_seed(job, job.seed + index)
            entries.append(dict(record=picture.to_record(), command=command,
                                index=data.get("index", 0) if stored else index,
                                count=data.get("num", 1) if stored else num, threads=_threads(threads)))
        return Submission("job", self._named(_shown(clean)), entries, _summary(job, "job", num), jobs.advice(job))

    def _chain(self, payload: dict, owner: str) -> Submission:
        unknown = sorted(set(payload) - {"chain", "seed", "num", "dtype"})
        if unknown:
            raise ApiError(422, f"{unknown[0]}: a chain request takes chain (the steps, as a chain file holds them), "
                                f"seed, num and dtype; put other settings in the chain", unknown[0])
        data = payload["chain"]
        if isinstance(data, str):
            data = _chain_text(data)
        defaults, steps = chain_steps(data, "chain")
        if not steps:
            raise ApiError(422, "chain has no steps", "chain")
        if len(steps) > self.limits.max_chain_steps:
            raise ApiError(413, f"chain has {len(steps)} steps, more than the limit of {self.limits.max_chain_steps}",
                           "chain")
        num = payload.get("num", 1)
        _count(num, "num", self.limits.max_images)
        for key in ("device",):
            if key in defaults:
                raise ApiError(422, f"chain: device: this server runs every job on its own device ({self.device}); "
                                    f"leave device out", "device")
        defaults = self._sanitize(defaults, "chain defaults: ", owner, record=False)
        defaults.setdefault("model", self.default_model)
        clean_steps, shown_out = [], []
        for number, step in enumerate(steps, start=1):
            where = f"chain step {number}: "
            if not isinstance(step, dict):
                raise ApiError(422, f"{where}must be a mapping (task: ..., prompt: ...), got {step!r}", "chain")
            step = self._sanitize(step, where, owner, record=False, chain=True)
            if "out" in step:
                if not isinstance(step["out"], str):
                    raise ApiError(422, f"{where}out must be a file name, got {step['out']!r}", "out")
                step["out"] = f"step-{number}.png"  # shown as a result of its own; the name is not used
                shown_out.append(number - 1)
            clean_steps.append(step)
        seed = payload.get("seed", defaults.get("seed"))
        if seed is None:
            seed = random_seed()
        jobs.check_seed(seed, num, "seed")
        library_limits.check_count(num, "num")
        defaults["seed"] = seed
        dtype = payload.get("dtype") or defaults.pop("dtype", None) or "fp32"
        entries, warnings, first = [], [], None
        for index in range(num):
            built = build_chain(defaults, clean_steps, "chain", index, dtype, self.device)
            for number, (job, _, _) in enumerate(built, start=1):
                self._limit(job, f"chain step {number}: ")
                jobs.settle(job, where=f"chain step {number}: ", override_device=self.device)
                self._limit(job, f"chain step {number}: ")
                if index == 0:
                    warnings += [f"chain step {number}: {note}" for note in jobs.advice(job)]
            final = built[-1][0]
            also = [_path_to(final, built[k][0]) for k in shown_out if k != len(built) - 1]
            entries.append(dict(record=final.to_record(), command="chain", index=index, count=num, threads=None,
                                also=[path for path in also if path is not None]))
            first = first or final
        shown = {"chain": {**defaults, "steps": clean_steps}, "num": num, "dtype": dtype}
        return Submission("chain", self._named(_shown(shown)), entries, _summary(first, "chain", num, len(steps)),
                          warnings)

    def _reproduce(self, payload: dict, owner: str) -> Submission:
        unknown = sorted(set(payload) - {"reproduce"})
        if unknown:
            raise ApiError(422, f"{unknown[0]}: a reproduce request takes only reproduce (a PNG as a data URL, "
                                f"result:JOB/N, or its record)", unknown[0])
        value, original = payload["reproduce"], None
        if isinstance(value, str) and is_inline(value):
            record, original = self._png_record(value)
        elif isinstance(value, str) and value.startswith(RESULT_PREFIX):
            path = self._result(value, "reproduce", owner)
            record, original = self._read_record(path, "reproduce"), str(path)
        elif isinstance(value, dict):
            record = value
        else:
            raise ApiError(422, "reproduce must be a PNG written by sfumato (as a data URL), result:JOB/N, or the "
                                "record stored in such a PNG", "reproduce")
        where = "the parameters of the picture"
        clean = self._sanitize({k: v for k, v in record.items() if k != "device"}, "", owner, record=True)
        job = jobs.Job.from_mapping(clean, where, record=True)
        self._limit(job, "")
        if job.seed is None:
            raise ApiError(422, f"{where} have no seed; the picture cannot be made again", "seed")
        jobs.check(job)
        jobs.settle(job, override_device=self.device)
        entry = dict(record=job.to_record(), command=record.get("command", "reproduce"),
                     index=record.get("index", 0), count=record.get("num", 1),
                     threads=_threads(record.get("cpu_threads")))
        return Submission("reproduce", {"reproduce": self._named(_shown(original or clean))}, [entry],
                          _summary(job, "reproduce", 1), jobs.advice(job), original)

    # ------------------------------------------------------------------------ pieces of a request

    def _sanitize(self, mapping: Any, where: str, owner: str, record: bool, chain: bool = False) -> Any:
        """The mapping with models checked against the server's and pictures turned into files under --data."""
        if not isinstance(mapping, dict):
            return mapping  # Job.from_mapping says what it should be
        hashes = mapping.get("input_sha256") if record and isinstance(mapping.get("input_sha256"), dict) else {}
        clean = {}
        for key, value in mapping.items():
            name = jobs.ALIASES.get(key, key)
            if name in ("model", "prior"):
                clean[key] = self._model(value, name, where)
            elif name in ("controlnet", "depth_model") and value is not None:
                clean[key] = self._registered_folder(value, name, where)
            elif name in _PICTURE_FIELDS:
                clean[key] = self._picture(value, f"{where}{name}", owner, record, chain, hashes.get(name))
            elif name == "items" and isinstance(value, list):
                if len(value) > self.limits.max_items:
                    raise ApiError(413, f"{where}items has {len(value)} prompts and pictures, more than the limit of "
                                        f"{self.limits.max_items}", "items")
                clean[key] = [self._item(item, f"{where}items[{i}]", owner, record, chain, hashes.get(f"items.{i}"))
                              for i, item in enumerate(value)]
            elif name in ("prompt", "negative_prompt") and isinstance(value, str) \
                    and len(value) > self.limits.max_prompt:
                raise ApiError(413, f"{where}{name} has {len(value)} characters, more than the limit of "
                                    f"{self.limits.max_prompt}", name)
            else:
                clean[key] = value
        return clean

    def _registered_folder(self, value: Any, name: str, where: str) -> str:
        """The folder the server's operator registered under the name ``value`` (--controlnet / --depth-model
        NAME=FOLDER). A record this server wrote holds the folder itself, which is taken as it is when it is one
        of the registered folders; no other folder a client names reaches the file system."""
        registered = self.registered[name]
        what = "ControlNet" if name == "controlnet" else "depth model"
        option = "--controlnet" if name == "controlnet" else "--depth-model"
        if isinstance(value, str) and value in registered:
            return registered[value]
        if isinstance(value, str) and value in registered.values():
            return value
        if registered:
            offered = f"this server has {', '.join(sorted(registered))} (GET /api/models lists them)"
        else:
            offered = f"this server has none (its operator registers them: sfumato serve {option} NAME=FOLDER)"
        if not isinstance(value, str):
            raise ApiError(422, f"{where}{name} must be the name of one of this server's {what}s, got "
                                f"{type(value).__name__}; {offered}", name)
        raise ApiError(422, f"{where}{name}: unknown {what} {value[:200]!r}: name one the server registered, not a "
                            f"folder (folders named by a client are never opened); {offered}", name)

    def _explained(self, error: ApiError) -> ApiError:
        """A command-line message that asks for a folder, in the words of a server that offers names."""
        needs = "needs controlnet FOLDER, a ControlNetModel folder (e.g. a depth ControlNet)"
        if needs in error.message:
            names = ", ".join(sorted(self.registered["controlnet"])) or \
                "none: its operator registers them with sfumato serve --controlnet NAME=FOLDER"
            error.message = error.message.replace(
                needs, f"needs controlnet: the name of a ControlNet this server offers ({names})")
        return error

    def _named(self, shown: Any) -> Any:
        """A request as shown back to its caller: registered folders by their names."""
        if isinstance(shown, dict):
            return {key: self._folder_names.get(value, value) if key in ("controlnet", "depth_model")
                    and isinstance(value, str) else self._named(value) for key, value in shown.items()}
        if isinstance(shown, list):
            return [self._named(value) for value in shown]
        return shown

    def _model(self, value: Any, name: str, where: str) -> Any:
        if value is None:  # the server's default, never a model it does not offer
            return self.default_model if name == "model" else None
        if not isinstance(value, str):
            raise ApiError(422, f"{where}{name} must be a string naming one of this server's models, got {value!r}",
                           name)
        if value not in self.names:
            known = ", ".join(sorted(self.names))
            raise ApiError(422, f"{where}{name}: unknown model {value[:200]!r}; this server has {known}", name)
        return self.names[value]

    def _picture(self, value: Any, field: str, owner: str, record: bool, chain: bool, digest: str | None) -> Any:
        short = field.rsplit(": ", 1)[-1]
        if value is None:
            return None
        if isinstance(value, dict):  # the record of the job that made it (a chain's earlier step)
            return self._sanitize(value, f"{field} (made by an earlier step): ", owner, record=True)
        if not isinstance(value, str):
            raise ApiError(422, f"{field} must be a picture: a data URL (data:image/png;base64,...), upload:ID or "
                                f"result:JOB/N, got {type(value).__name__}", short)
        if chain and value == jobs.PREVIOUS:
            return value
        if is_inline(value):
            return str(self.uploads.path(self.uploads.keep(decode(value, short, self.limits)), short))
        if value.startswith(UPLOAD_PREFIX):
            return str(self.uploads.path(value, short))
        if value.startswith(RESULT_PREFIX):
            return str(self._result(value, short, owner))
        if record:  # a path written in a PNG's record: this server's own files, or an upload with its pixels
            inside = self._inside_data(value)
            if inside is not None and inside.is_file():
                return str(inside)
            found = self.uploads.find(digest)
            if found:
                return str(self.uploads.path(found, short))
            raise ApiError(422, f"{field}: the picture {value[:200]!r} is a file of the machine that made this "
                                f"record, and no picture uploaded here has its pixels; upload it (POST /api/uploads) "
                                f"and send the record again", short)
        raise ApiError(422, f"{field} must be a picture: a data URL (data:image/png;base64,...), upload:ID or "
                            f"result:JOB/N; the server opens no file paths or URLs it is sent, got {value[:200]!r}",
                       short)

    def _item(self, value: Any, field: str, owner: str, record: bool, chain: bool, digest: str | None) -> Any:
        if isinstance(value, str) and not record:
            if value.startswith((UPLOAD_PREFIX, RESULT_PREFIX)) or is_inline(value) or \
                    isinstance(jobs.classify_item(value), jobs.Source):
                return {"image": self._picture(value, field, owner, record, chain, digest)}
            return value
        if isinstance(value, dict) and set(value) == {"image"}:
            return {"image": self._picture(value["image"], field, owner, record, chain, digest)}
        return value

    def _inside_data(self, value: str) -> Path | None:
        """``value`` as a path inside --data, decided on the name alone before the file system is asked."""
        if "\x00" in value or not os.path.isabs(value):
            return None
        normal = Path(os.path.normpath(value))
        if self.data not in normal.parents:
            return None
        real = normal.resolve()
        return real if self.data in real.parents else None

    def _result(self, reference: str, field: str, owner: str) -> Path:
        """The file of ``result:JOB/N``, a finished picture of the caller's."""
        job_id, _, n = reference[len(RESULT_PREFIX):].partition("/")
        job = self.store.get(job_id) if len(job_id) == 32 and job_id.isalnum() else None
        if job is None or job["owner"] != owner:
            raise ApiError(422, f"{field}: {reference[:80]!r} names no job of yours", field)
        if not n.isdigit() or int(n) >= (len(self.store.images(job_id)) if job["state"] == "done" else 0):
            raise ApiError(422, f"{field}: job {job_id} has no picture {n!r} (it is {job['state']})", field)
        return self.results / job_id / f"{int(n)}.png"

    def _png_record(self, value: str) -> tuple[dict, str]:
        """(record, the original kept as an upload) from a PNG sent as a data URL."""
        raw = file_bytes(value, "reproduce", self.limits)
        picture = open_picture(raw, "reproduce", self.limits)  # pixel limit, decoded for real
        record = record_of(raw, "reproduce", self.data / "tmp")
        return record, str(self.uploads.path(self.uploads.keep(picture), "reproduce"))

    def _read_record(self, path: Path, field: str) -> dict:
        from ..metadata import MetadataError, read_parameters

        try:
            return read_parameters(path)
        except MetadataError as error:
            raise ApiError(422, f"{field}: {error}", field) from None

    def _limit(self, job: jobs.Job, where: str) -> None:
        """The server's bounds on one picture (and the pictures it is made from), before and after defaults."""
        limits = self.limits
        for name in ("steps", "prior_steps"):
            value = getattr(job, name)
            if isinstance(value, numbers.Integral) and value > limits.max_steps:
                raise ApiError(413, f"{where}{name}={value} is more than this server's limit of {limits.max_steps} "
                                    f"steps", name)
        for name in ("width", "height"):
            value = getattr(job, name)
            if isinstance(value, numbers.Integral) and value > limits.max_side:
                raise ApiError(413, f"{where}{name}={value} is larger than this server's limit of {limits.max_side} "
                                    f"pixels per side", name)
        for name, source in job._sources():
            if source.job is not None:
                self._limit(source.job, f"{where}{name.split('.')[0]} (made by an earlier step): ")

    # ------------------------------------------------------------------------ models

    def models(self) -> list[dict]:
        """What GET /api/models lists: each model, the workflows it runs and its defaults (and, for a Stable
        Diffusion model with registered ControlNets of its UNet, their names)."""
        from ..cli.models import check_task, checkpoint_kind, component_config, folder_defaults

        listed = []
        for value in self.config.models:
            workflows, controlnets = [], None
            for task in jobs.TASKS:
                try:
                    ref = parse_model(value, task)
                    index = check_task(ref, task)
                    if task == "controlnet" and index is not None and checkpoint_kind(index, ref) == "stable-diffusion":
                        # a Stable Diffusion ControlNet job needs a ControlNetModel of its UNet, which only the
                        # server's operator registers
                        unet = component_config(ref, "unet") or {}
                        controlnets = [name for name, dim in self._controlnet_dims().items()
                                       if dim is None or dim == unet.get("cross_attention_dim")]
                        if not controlnets:
                            continue
                    workflows.append(task)
                except UsageError:
                    continue
            try:
                ref = parse_model(value, workflows[0] if workflows else "text2image")
                defaults, spec = folder_defaults(ref), ref.spec
            except UsageError:
                defaults, spec = {}, value
            entry = {"name": value, "spec": spec, "default": value == self.default_model,
                     "workflows": workflows + ["chain", "reproduce"], "defaults": defaults}
            if controlnets is not None:
                entry["controlnets"] = sorted(controlnets)  # the names its controlnet jobs may give
            if value == BUILTIN or value.startswith(BUILTIN + ":"):
                from ..demo import vocabulary_text

                entry["note"] = f"the built-in demo model knows only {vocabulary_text()}"
            listed.append(entry)
        return listed

    def _controlnet_dims(self) -> dict[str, int | None]:
        """Each registered ControlNet's cross_attention_dim (the UNet it was made for)."""
        dims = {}
        for name, folder in self.registered["controlnet"].items():
            try:
                config = json.loads((Path(folder) / "config.json").read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, json.JSONDecodeError):
                config = {}
            dim = config.get("cross_attention_dim") if isinstance(config, dict) else None
            dims[name] = dim if isinstance(dim, int) else None
        return dims

    def registered_listing(self) -> dict[str, list[dict]]:
        """The registered ControlNets and depth models, by name, as GET /api/models lists them."""
        controlnets = [{"name": name, "cross_attention_dim": dim}
                       for name, dim in sorted(self._controlnet_dims().items())]
        depth_models = []
        for name, folder in sorted(self.registered["depth_model"].items()):
            try:
                config = json.loads((Path(folder) / "config.json").read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, json.JSONDecodeError):
                config = {}
            depth_models.append({"name": name, "model_type": config.get("model_type")
                                 if isinstance(config, dict) else None})
        return {"controlnets": controlnets, "depth_models": depth_models}


def model_names(configured: list[str]) -> dict[str, str]:
    """Every name a client may give a model (or prior) -> the server's --model value it means."""
    from ..cli.models import read_index, resolve_prior

    names: dict[str, str] = {}
    for value in configured:
        if value == BUILTIN or value.startswith(BUILTIN + ":"):
            names[BUILTIN] = names.get(BUILTIN, value if value == BUILTIN else BUILTIN)
            for folder in BUILTIN_FOLDERS:
                names[f"{BUILTIN}:{folder}"] = f"{BUILTIN}:{folder}"
            continue
        ref = parse_model(value, "text2image")
        names.update({value: value, ref.spec: value})
        if ref.folder is not None:
            names.setdefault(ref.folder.name, value)
            try:
                index = read_index(ref)
                prior = resolve_prior(ref, index, None)
            except UsageError:
                prior = None
            if prior is not None:
                names.setdefault(prior.spec, prior.spec)
    return names


def estimated_steps(record: Any) -> int:
    """Denoising steps a record's picture takes, earlier steps' pictures included (for progress)."""
    if not isinstance(record, dict):
        return 0
    steps = record.get("steps") or 0
    if record.get("task") == "image2image" and isinstance(record.get("strength"), (int, float)):
        steps = int(steps * record["strength"])
    total = steps + (record.get("prior_steps") or 0)
    for name in _PICTURE_FIELDS:
        total += estimated_steps(record.get(name))
    for item in record.get("items") or []:
        if isinstance(item, dict):
            total += estimated_steps(item.get("image"))
    return total


def follow(job: jobs.Job, path: list[str]) -> jobs.Source | None:
    """The input picture reached from ``job`` along ``path`` (source names, e.g. ["image", "image"])."""
    source = None
    for name in path:
        source = dict(job._sources()).get(name)
        if source is None or source.job is None:
            return None
        job = source.job
    return source


def _path_to(final: jobs.Job, target: jobs.Job) -> list[str] | None:
    for name, source in final._sources():
        if source.job is target:
            return [name]
        if source.job is not None:
            deeper = _path_to(source.job, target)
            if deeper is not None:
                return [name, *deeper]
    return None


def _count(value: Any, name: str, most: int) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ApiError(422, f"{name} must be a positive whole number, got {value!r}", name)
    if value > most:
        raise ApiError(413, f"{name}={value} is more than this server's limit of {most} pictures per job", name)


def _threads(value: Any) -> int | None:
    return int(value) if isinstance(value, numbers.Integral) and not isinstance(value, bool) and 0 < value <= 256 \
        else None


def _size_field(message: str) -> str | None:
    for name in ("height", "width", "num"):
        if message.startswith(name):
            return name
    return "size"


def _chain_text(text: str) -> Any:
    """A chain sent as the text of a chain file (the web page's editor): JSON, else YAML."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as json_error:
        try:
            import yaml
        except ImportError:
            raise ApiError(422, f"chain is not valid JSON ({json_error}), and YAML needs PyYAML on the server",
                           "chain") from None
        try:
            return yaml.safe_load(text)
        except yaml.YAMLError as error:
            raise ApiError(422, f"chain is not valid YAML: {' '.join(str(error).split())}", "chain") from None


def _shown(clean: Any) -> Any:
    """The request as the caller may read it back: pictures as references, never server paths."""
    if isinstance(clean, dict):
        return {key: _shown(value) for key, value in clean.items()}
    if isinstance(clean, list):
        return [_shown(value) for value in clean]
    if isinstance(clean, str) and os.path.isabs(clean) and clean.endswith(".png"):
        file = Path(clean)
        if file.parent.name == "uploads":
            return UPLOAD_PREFIX + file.stem
        if file.parent.parent.name == "results":
            return f"{RESULT_PREFIX}{file.parent.name}/{file.stem}"
    return clean


def _summary(job: jobs.Job, kind: str, pictures: int, steps: int | None = None) -> dict:
    prompt = job.prompt
    if prompt is None and job.items:
        prompt = " + ".join(item if isinstance(item, str) else "(picture)" for item in job.items)
    summary = {"task": job.task if kind == "job" else kind, "prompt": prompt, "model": job.model,
               "pictures": pictures, "width": job.width, "height": job.height}
    if kind != "job":
        summary["final_task"] = job.task
    if steps is not None:
        summary["chain_steps"] = steps
    return summary


__all__ = ["Requests", "Submission", "WORKFLOWS", "estimated_steps", "follow", "model_names", "open_picture"]
