"""The AUTOMATIC1111 web UI API (``/sdapi/v1/...``), so that its existing clients work against sfumato.

A txt2img or img2img request becomes an ordinary job of the queue (it has an
id, progress, and its pictures are kept under ``--data`` like any other);
the call waits for it and answers in that API's shape: ``images`` as base64
PNGs (with sfumato's parameters inside), ``parameters`` (the request) and
``info`` (a JSON string: seeds, sizes, infotexts, and what was ignored).

Fields honoured (:data:`HONOURED`): ``prompt``, ``negative_prompt``,
``steps``, ``cfg_scale``, ``seed`` (-1: random), ``width``, ``height``,
``batch_size`` and ``n_iter`` (pictures: their product, seeds ``seed``,
``seed + 1``, ...), ``sampler_name`` / ``sampler_index`` (:data:`SAMPLERS`),
``override_settings.sd_model_checkpoint``, ``send_images``, and for img2img
``init_images`` (the first), ``denoising_strength`` (image-to-image's
strength), ``mask`` (inpainting, white = repaint) and
``inpainting_mask_invert``. sfumato's own ``prior_steps`` and
``prior_guidance`` are read too. Every other field is accepted and ignored,
and listed in ``info`` under ``ignored``.

ControlNet, as the sd-webui-controlnet extension's clients send it
(``alwayson_scripts.controlnet.args``: a list of units): one enabled unit
turns txt2img into a ControlNet job and img2img into ControlNet
image-to-image (from ``init_images[0]``, ``denoising_strength``), or with a
``mask`` into ControlNet inpainting (Stable Diffusion models). A unit's
``image`` (or ``input_image``; on img2img, ``init_images[0]`` when it has
none) is the hint; ``module`` ``none`` takes it as it is, a ``depth...``
module makes its depth map with the depth model the server's operator
registered; ``model`` names a ControlNet the operator registered for a
Stable Diffusion model (``GET /controlnet/model_list``; a trailing
`` [hash]`` is dropped), ``weight`` is its scale and ``guidance_start`` /
``guidance_end`` the share of the steps it steers in; a Kandinsky 2.2
ControlNet model steers with its own ControlNet, at every step. Several enabled units
(multi-ControlNet) and other modules are refused with a 422 naming the
field; the unit's other settings are listed as ignored.
"""

from __future__ import annotations

import json
import math
import numbers
import time
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from .. import __version__
from ..cli.models import SCHEDULER_OPTIONS
from .app import read_json
from .errors import ApiError
from .pictures import decode, encode_png, file_bytes, open_picture, record_of

# the API's sampler names -> sfumato's --scheduler names (Karras sigma spacing is not available)
SAMPLERS = {
    "Euler a": ("euler-a", ["k_euler_a", "k_euler_ancestral", "Euler Ancestral"]),
    "Euler": ("euler", ["k_euler"]),
    "LMS": ("lms", ["k_lms"]),
    "LMS Karras": ("lms", ["k_lms_ka"]),
    "DPM++ 2M": ("dpm", ["k_dpmpp_2m", "DPM++ 2M SDE"]),
    "DPM++ 2M Karras": ("dpm++-karras", ["k_dpmpp_2m_ka"]),
    "DDIM": ("ddim", ["ddim"]),
    "PLMS": ("pndm", ["plms", "PNDM"]),
    "DDPM": ("ddpm", ["ddpm"]),
}
_SAMPLER_NAMES = {name.lower(): name for name in SAMPLERS}
_SAMPLER_NAMES.update({alias.lower(): name for name, (_, aliases) in SAMPLERS.items() for alias in aliases})
_SAMPLER_FOR_CLASS = {"EulerAncestralDiscreteScheduler": "Euler a", "EulerDiscreteScheduler": "Euler",
                      "LMSDiscreteScheduler": "LMS", "DPMSolverMultistepScheduler": "DPM++ 2M",
                      "DDIMScheduler": "DDIM", "PNDMScheduler": "PLMS", "DDPMScheduler": "DDPM",
                      "UnCLIPScheduler": "UnCLIP"}


# the --scheduler names that set more than a class (Karras sigmas), by the AUTOMATIC1111 sampler that names them
_SAMPLER_FOR_OPTIONS = {short: name for name, (short, _) in SAMPLERS.items() if short in SCHEDULER_OPTIONS}


def _sampler_name(record: dict) -> str | None:
    """The AUTOMATIC1111 sampler name of a record: its --scheduler name where that sets options, else its class."""
    named = _SAMPLER_FOR_OPTIONS.get(record.get("scheduler"))
    return named or _SAMPLER_FOR_CLASS.get(record.get("scheduler_class"), record.get("scheduler_class"))


HONOURED = ("prompt", "negative_prompt", "steps", "cfg_scale", "seed", "width", "height", "batch_size", "n_iter",
            "sampler_name", "sampler_index", "override_settings", "send_images", "prior_steps", "prior_guidance",
            "alwayson_scripts")
# a ControlNet unit's fields that are read; its others (resize_mode, control_mode, guidance_start, ...) are listed
# as ignored
_UNIT_FIELDS = ("enabled", "image", "input_image", "module", "model", "weight", "guidance_start", "guidance_end")
HONOURED_IMG2IMG = HONOURED + ("init_images", "denoising_strength", "mask", "inpainting_mask_invert")


def register(app, server) -> None:
    """Add the /sdapi/v1 endpoints to ``app``."""
    chosen_models: dict[str, str] = {}  # caller -> the model POST /sdapi/v1/options chose for it

    async def generate(request: Request, img2img: bool):
        body = await read_json(request)
        who = request.state.owner
        payload, ignored, notes = await run_in_threadpool(to_job, body, img2img, server, chosen_models.get(who))
        view = await run_in_threadpool(server.submit, payload, who)
        job = await server.wait(view["id"])
        return JSONResponse(response(body, job, server, ignored, notes, view.get("warnings", [])))

    @app.post("/sdapi/v1/txt2img", tags=["AUTOMATIC1111"], summary="Text to image; waits and returns base64 PNGs")
    async def txt2img(request: Request):
        return await generate(request, img2img=False)

    @app.post("/sdapi/v1/img2img", tags=["AUTOMATIC1111"],
              summary="Image to image (init_images), or inpainting with mask; waits and returns base64 PNGs")
    async def img2img(request: Request):
        return await generate(request, img2img=True)

    @app.get("/sdapi/v1/progress", tags=["AUTOMATIC1111"], summary="Progress of the caller's running job")
    async def progress(request: Request):
        who = request.state.owner
        running = server.store.list(who, 1, ("running",))
        queued = server.store.list(who, 1000, ("queued",))
        state = {"skipped": False, "interrupted": False, "job": "", "job_count": len(running) + len(queued),
                 "job_timestamp": "0", "job_no": 0, "sampling_step": 0, "sampling_steps": 0}
        fraction, eta = 0.0, 0.0
        if running:
            job = running[0]
            step = server.worker.progress.get(job["id"]) or {}
            fraction = float(step.get("fraction", 0.0))
            elapsed = time.time() - (job["started"] or time.time())
            eta = elapsed / fraction - elapsed if fraction > 0 else 0.0
            state.update(job=job["id"], job_timestamp=time.strftime("%Y%m%d%H%M%S", time.localtime(job["started"])),
                         interrupted=job["cancel_requested"], sampling_step=step.get("step", 0),
                         sampling_steps=step.get("steps", 0), job_no=max(0, step.get("picture", 1) - 1))
        return {"progress": round(fraction, 4), "eta_relative": round(eta, 2), "state": state,
                "current_image": None, "textinfo": None}

    @app.post("/sdapi/v1/interrupt", tags=["AUTOMATIC1111"], summary="Stop the caller's running job at its next step")
    async def interrupt(request: Request):
        who = request.state.owner
        cancelled = []
        for job in server.store.list(who, 10, ("running",)):
            await run_in_threadpool(server.cancel, job["id"], who)
            cancelled.append(job["id"])
        return {"cancelled": cancelled}

    @app.post("/sdapi/v1/png-info", tags=["AUTOMATIC1111"], summary="The parameters stored in a PNG")
    async def png_info(request: Request):
        body = await read_json(request)
        if not isinstance(body, dict) or "image" not in body:
            raise ApiError(422, "image: send {\"image\": \"<base64 PNG>\"}", "image")
        return await run_in_threadpool(png_information, body["image"], server)

    @app.get("/sdapi/v1/options", tags=["AUTOMATIC1111"], summary="Settings: the model in use")
    async def get_options(request: Request):
        model = chosen_models.get(request.state.owner, server.config.models[0])
        return {"sd_model_checkpoint": model, "samples_format": "png", "sd_checkpoint_hash": None,
                "outdir_samples": "", "CLIP_stop_at_last_layers": 1}

    @app.post("/sdapi/v1/options", tags=["AUTOMATIC1111"],
              summary="Choose the caller's model (sd_model_checkpoint); other settings are ignored")
    async def set_options(request: Request):
        body = await read_json(request)
        if not isinstance(body, dict):
            raise ApiError(422, "the options must be a JSON object", None)
        if "sd_model_checkpoint" in body:
            chosen_models[request.state.owner] = _model(body["sd_model_checkpoint"], server, "sd_model_checkpoint")
        return {"ignored": sorted(k for k in body if k != "sd_model_checkpoint")}

    @app.get("/controlnet/version", tags=["AUTOMATIC1111"], summary="ControlNet extension API version")
    async def controlnet_version():
        return {"version": 2}

    @app.get("/controlnet/model_list", tags=["AUTOMATIC1111"],
             summary="The ControlNets the server's operator registered (for Stable Diffusion models)")
    async def controlnet_models():
        return {"model_list": sorted(server.requests.registered["controlnet"])}

    @app.get("/controlnet/module_list", tags=["AUTOMATIC1111"],
             summary="Hint preprocessors: none, and depth where the server has a depth model")
    async def controlnet_modules():
        modules = ["none"] + (["depth"] if server.requests.registered["depth_model"] else [])
        return {"module_list": modules, "module_detail": {}}

    @app.get("/sdapi/v1/sd-models", tags=["AUTOMATIC1111"], summary="The server's models")
    async def sd_models():
        listed = await run_in_threadpool(server.requests.models)
        return [{"title": model["name"], "model_name": model["name"], "hash": None, "sha256": None,
                 "filename": model["spec"], "config": None} for model in listed]

    @app.get("/sdapi/v1/samplers", tags=["AUTOMATIC1111"], summary="Sampler names accepted, and the scheduler each runs")
    async def samplers():
        return [{"name": name, "aliases": aliases, "options": {"sfumato_scheduler": ours}}
                for name, (ours, aliases) in SAMPLERS.items()]


def to_job(body: Any, img2img: bool, server, chosen_model: str | None) -> tuple[dict, list[str], list[str]]:
    """(a job record for the queue, the fields ignored, notes) from an AUTOMATIC1111 request."""
    if not isinstance(body, dict):
        raise ApiError(422, f"the request must be a JSON object, got {type(body).__name__}", None)
    honoured = HONOURED_IMG2IMG if img2img else HONOURED
    ignored = sorted(key for key in body if key not in honoured)
    notes: list[str] = []
    job: dict[str, Any] = {"task": "text2image"}
    prompt = body.get("prompt", "")
    job["prompt"] = prompt
    negative = body.get("negative_prompt")
    if negative not in (None, ""):
        job["negative_prompt"] = negative
    for theirs, ours in (("steps", "steps"), ("cfg_scale", "guidance"), ("width", "width"), ("height", "height"),
                         ("prior_steps", "prior_steps"), ("prior_guidance", "prior_guidance")):
        if body.get(theirs) is not None:
            job[ours] = _number(body[theirs], theirs, whole=ours in ("steps", "width", "height", "prior_steps"))
    seed = body.get("seed", -1)
    if seed is not None and seed != -1:
        job["seed"] = _number(seed, "seed", whole=True)
    batch_size = 1 if body.get("batch_size") is None else body["batch_size"]
    n_iter = 1 if body.get("n_iter") is None else body["n_iter"]
    for name, value in (("batch_size", batch_size), ("n_iter", n_iter)):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
            raise ApiError(422, f"{name} must be a positive whole number, got {value!r}", name)
    job["num"] = batch_size * n_iter
    sampler = body.get("sampler_name") or body.get("sampler_index")
    if sampler:
        name = _SAMPLER_NAMES.get(str(sampler).strip().lower())
        if name is None:
            field = "sampler_name" if body.get("sampler_name") else "sampler_index"
            raise ApiError(422, f"{field}: sampler {str(sampler)[:80]!r} is not available; use one of "
                                f"{', '.join(SAMPLERS)} (GET /sdapi/v1/samplers)", field)
        job["scheduler"] = SAMPLERS[name][0]
        if "Karras" in name and SAMPLERS[name][0] not in SCHEDULER_OPTIONS:
            notes.append(f"sampler {sampler!r}: Karras sigma spacing is not available; ran {name.replace(' Karras', '')}")
    model = chosen_model
    overrides = body.get("override_settings")
    if isinstance(overrides, dict):
        if overrides.get("sd_model_checkpoint"):
            model = _model(overrides["sd_model_checkpoint"], server, "override_settings.sd_model_checkpoint")
        ignored += sorted(f"override_settings.{key}" for key in overrides if key != "sd_model_checkpoint")
    elif overrides is not None:
        raise ApiError(422, "override_settings must be a JSON object", "override_settings")
    if model:
        job["model"] = model
    if img2img:
        images = body.get("init_images")
        if not isinstance(images, list) or not images:
            raise ApiError(422, "init_images must be a list with at least one base64 picture", "init_images")
        if len(images) > 1:
            notes.append(f"init_images has {len(images)} pictures; the first is used for every picture")
        limits = server.config.limits
        image = decode(images[0], "init_images[0]", limits, bare_base64=True)
        job["image"] = server.uploads.keep(image)
        mask = body.get("mask")
        if mask:
            picture = decode(mask, "mask", limits, bare_base64=True)
            if body.get("inpainting_mask_invert") in (1, True):
                import PIL.ImageOps

                picture = PIL.ImageOps.invert(picture)
            job["task"], job["mask"] = "inpaint", server.uploads.keep(picture)
            if "denoising_strength" in body:
                ignored.append("denoising_strength")  # inpainting repaints the white part whole
        elif body.get("denoising_strength") is not None:
            job["task"] = "image2image"
            job["strength"] = _number(body["denoising_strength"], "denoising_strength")
        else:
            job["task"] = "image2image"
    scripts = body.get("alwayson_scripts")
    if scripts is not None:
        inpainting = job["task"] == "inpaint"
        ignored += _controlnet(scripts, job, img2img, server, notes)
        if inpainting and job["task"] == "controlnet" and body.get("denoising_strength") is not None:
            # ControlNet inpainting (Stable Diffusion) starts from the picture noised to the strength
            job["strength"] = _number(body["denoising_strength"], "denoising_strength")
            ignored.remove("denoising_strength")
    return job, sorted(set(ignored)), notes


def _controlnet(scripts: Any, job: dict, img2img: bool, server, notes: list[str]) -> list[str]:
    """Make ``job`` a ControlNet job from the request's enabled ControlNet unit, if any; returns what was ignored."""
    if not isinstance(scripts, dict):
        raise ApiError(422, f"alwayson_scripts must be a JSON object of scripts, got {type(scripts).__name__}",
                       "alwayson_scripts")
    ignored = [f"alwayson_scripts.{name}" for name in scripts if str(name).lower() != "controlnet"]
    entry = next((value for name, value in scripts.items() if str(name).lower() == "controlnet"), None)
    if entry is None:
        return ignored
    field = "alwayson_scripts.controlnet.args"
    units = entry.get("args") if isinstance(entry, dict) else None
    if not isinstance(units, list) or not all(isinstance(unit, dict) for unit in units):
        raise ApiError(422, f"{field} must be a list of ControlNet units (JSON objects), got {str(units)[:80]!r}",
                       field)
    enabled = [(i, unit) for i, unit in enumerate(units) if unit.get("enabled", True) not in (False, 0)]
    if not enabled:
        return ignored
    if len(enabled) > 1:
        raise ApiError(422, f"{field}: {len(enabled)} ControlNet units are enabled; sfumato runs one ControlNet per "
                            f"picture (multi-ControlNet is not available)", field)
    number, unit = enabled[0]
    where = f"{field}[{number}]"
    ignored += [f"{where}.{key}" for key in unit if key not in _UNIT_FIELDS]
    # the hint: the unit's picture, or on img2img the picture it starts from
    picture = unit.get("image") if unit.get("image") not in (None, "") else unit.get("input_image")
    if isinstance(picture, dict):  # {"image": ..., "mask": ...} in newer clients
        picture = picture.get("image")
    if picture in (None, ""):
        if not img2img:
            raise ApiError(422, f"{where}.image: a ControlNet unit of txt2img needs a picture (base64): the hint, e.g. "
                                f"a depth map", f"{where}.image")
        job["hint"] = job["image"]
        notes.append(f"{where} has no picture: init_images[0] is the hint too")
    else:
        job["hint"] = server.uploads.keep(decode(picture, f"{where}.image", server.config.limits, bare_base64=True))
    module = str(unit.get("module") or "none").strip().lower()
    if module.startswith("depth"):
        depth_models = sorted(server.requests.registered["depth_model"])
        if not depth_models:
            raise ApiError(422, f"{where}.module {module!r} makes a depth map, but this server has no depth model (its "
                                f"operator adds one with sfumato serve --depth-model NAME=FOLDER); send the depth map "
                                f"itself with module \"none\"", f"{where}.module")
        job["depth_model"] = depth_models[0]
        if module != "depth":
            notes.append(f"{where}.module {module!r}: the depth map comes from the server's depth model "
                         f"{depth_models[0]!r}")
    elif module != "none":
        raise ApiError(422, f"{where}.module {module!r} is not available; use none (the picture is the hint) or depth "
                            f"(GET /controlnet/module_list)", f"{where}.module")
    model = job.get("model") or server.requests.default_model
    listed = next((entry for entry in server.requests.models() if entry["name"] == model), None)
    if listed is None or "controlnet" not in listed["workflows"]:
        raise ApiError(422, f"{where}: the model {model!r} runs no ControlNet on this server (a Kandinsky 2.2 "
                            f"ControlNet model, or Stable Diffusion with a ControlNet its operator registered)", where)
    wanted = unit.get("model")
    if "controlnets" in listed:  # Stable Diffusion: a ControlNetModel the operator registered, by name
        job["controlnet"] = _controlnet_name(wanted, listed["controlnets"], model, f"{where}.model")
        for theirs, ours in (("weight", "controlnet_scale"), ("guidance_start", "control_start"),
                             ("guidance_end", "control_end")):
            if unit.get(theirs) is not None:
                job[ours] = _number(unit[theirs], f"{where}.{theirs}")
    else:  # a Kandinsky 2.2 ControlNet decoder steers with its own, at every step
        if wanted not in (None, "", "None", "none"):
            notes.append(f"{where}.model {str(wanted)[:80]!r}: {model!r} steers with its own ControlNet")
        ignored += [f"{where}.{key}" for key, default in (("weight", 1), ("guidance_start", 0), ("guidance_end", 1))
                    if unit.get(key) not in (None, default)]
    job["task"] = "controlnet"
    return ignored


def _controlnet_name(wanted: Any, offered: list[str], model: str, field: str) -> str:
    """The registered ControlNet a unit's ``model`` names: as given, or without the " [hash]" that AUTOMATIC1111
    appends; with one offered, an empty name means it."""
    if wanted in (None, "", "None", "none") and len(offered) == 1:
        return offered[0]
    if isinstance(wanted, str):
        name = wanted.strip()
        if name.endswith("]") and " [" in name:
            name = name[:name.rindex(" [")].strip()
        for candidate in (wanted, name):
            if candidate in offered:
                return candidate
    raise ApiError(422, f"{field}: unknown ControlNet {str(wanted)[:80]!r} for {model!r}; this server offers "
                        f"{', '.join(offered) or 'none'} (GET /controlnet/model_list)", field)


def response(body: dict, job: dict, server, ignored: list[str], notes: list[str], warnings: list[str]) -> dict:
    """The AUTOMATIC1111 answer for a finished job (or the error it ended with)."""
    if job["state"] == "failed":
        raise ApiError(422 if job["error_field"] else 500, job["error"], job["error_field"])
    images = server.store.images(job["id"]) if job["state"] == "done" else []
    records = [image["record"] for image in images]
    send = body.get("send_images", True) is not False
    pictures = [encode_png(server.requests.results / job["id"] / f"{image['n']}.png") for image in images] \
        if send else []
    first = records[0] if records else {}
    info = {
        "prompt": first.get("prompt", body.get("prompt")), "all_prompts": [r.get("prompt") for r in records],
        "negative_prompt": first.get("negative_prompt") or "",
        "all_negative_prompts": [r.get("negative_prompt") or "" for r in records],
        "seed": first.get("seed"), "all_seeds": [r.get("seed") for r in records],
        "subseed": -1, "all_subseeds": [-1 for _ in records], "subseed_strength": 0,
        "width": first.get("width"), "height": first.get("height"),
        "sampler_name": _sampler_name(first),
        "cfg_scale": first.get("guidance"), "steps": first.get("steps"),
        "batch_size": body.get("batch_size", 1) or 1, "n_iter": body.get("n_iter", 1) or 1,
        "denoising_strength": first.get("strength"), "sd_model_name": first.get("model"), "sd_model_hash": None,
        "restore_faces": False, "index_of_first_image": 0, "infotexts": [infotext(r) for r in records],
        "styles": [], "job_timestamp": time.strftime("%Y%m%d%H%M%S", time.localtime(job["created"])),
        "version": f"sfumato {__version__}", "interrupted": job["state"] == "cancelled",
        "ignored": ignored, "notes": notes + warnings, "sfumato_job": job["id"], "sfumato_records": records,
    }
    parameters = {key: value for key, value in body.items() if key not in ("init_images", "mask")}
    if "init_images" in body:
        parameters["init_images"] = None
    return {"images": pictures, "parameters": parameters, "info": json.dumps(info)}


def infotext(record: dict) -> str:
    """A record in the AUTOMATIC1111 "parameters" text form (what its png-info shows)."""
    lines = [record.get("prompt") or ""]
    if record.get("negative_prompt"):
        lines.append(f"Negative prompt: {record['negative_prompt']}")
    fields = [("Steps", record.get("steps")),
              ("Sampler", _sampler_name(record)),
              ("CFG scale", record.get("guidance")), ("Seed", record.get("seed")),
              ("Size", f"{record.get('width')}x{record.get('height')}" if record.get("width") else None),
              ("Model", record.get("model")), ("Denoising strength", record.get("strength")),
              ("Prior steps", record.get("prior_steps")), ("Prior CFG scale", record.get("prior_guidance")),
              ("Task", record.get("task")), ("Version", f"sfumato {record.get('sfumato', __version__)}")]
    lines.append(", ".join(f"{name}: {value}" for name, value in fields if value is not None))
    return "\n".join(lines)


def png_information(value: Any, server) -> dict:
    limits = server.config.limits
    raw = file_bytes(value, "image", limits, bare_base64=True)
    picture = open_picture(raw, "image", limits)
    del picture
    import io

    import PIL.Image

    with PIL.Image.open(io.BytesIO(raw)) as opened:
        opened.load()
        items = {key: value for key, value in (getattr(opened, "text", {}) or {}).items()}
    if "sfumato" not in items:
        # as that API does for a picture without parameters: empty info, the picture's other text chunks
        return {"info": items.get("parameters", ""), "items": items, "parameters": {}}
    record = record_of(raw, "image", server.config.data / "tmp")
    parameters = {"Prompt": record.get("prompt") or "", "Negative prompt": record.get("negative_prompt") or "",
                  "Steps": record.get("steps"), "Sampler": _sampler_name(record),
                  "CFG scale": record.get("guidance"), "Seed": record.get("seed"), "Size-1": record.get("width"),
                  "Size-2": record.get("height"), "Model": record.get("model")}
    return {"info": infotext(record), "items": items, "parameters": parameters, "sfumato": record}


def _model(value: Any, server, field: str) -> str:
    if not isinstance(value, str) or value not in server.requests.names:
        known = ", ".join(sorted(server.requests.names))
        raise ApiError(422, f"{field}: unknown model {str(value)[:200]!r}; this server has {known}", field)
    return value


def _number(value: Any, field: str, whole: bool = False):
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) \
            or (whole and value != int(value)):
        raise ApiError(422, f"{field} must be a {'whole ' if whole else ''}number, got {value!r}", field)
    return int(value) if whole else float(value)
