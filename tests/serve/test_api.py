"""The job API over real HTTP (uvicorn on a loopback port, in this process), with the built-in model:
every workflow, progress pushed as Server-Sent Events, cancelling, and results that are the command line's
own PNGs."""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import PIL.Image
import pytest

from sfumato.metadata import read_parameters

from .helpers import FAST, data_url, disc, right_half_mask, wait_for


def pixels(data: bytes) -> np.ndarray:
    with PIL.Image.open(io.BytesIO(data)) as picture:
        return np.asarray(picture.convert("RGB")).copy()


def png_record(data: bytes) -> dict:
    with PIL.Image.open(io.BytesIO(data)) as picture:
        picture.load()
        return json.loads(picture.text["sfumato"])


def submit(api, payload: dict) -> dict:
    response = api.post("/api/jobs", json=payload)
    assert response.status_code == 202, response.text
    job = response.json()
    assert len(job["id"]) == 32 and job["state"] == "queued" and job["position"] >= 1
    assert response.headers["location"] == f"/api/jobs/{job['id']}"
    return job


def run(api, payload: dict) -> dict:
    job = wait_for(api, submit(api, payload)["id"])
    assert job["state"] == "done", job
    return job


def test_text_to_image_makes_the_command_lines_pictures(api, tmp_path, monkeypatch):
    """Same parameters, same PNG record and the same pixels as `sfumato generate`."""
    job = run(api, {"task": "text2image", "prompt": "a red circle on a blue background", "seed": 5, "num": 2, **FAST})
    assert [image["n"] for image in job["images"]] == [0, 1]
    assert job["summary"]["pictures"] == 2 and job["progress"]["fraction"] == 1.0
    served = []
    for image in job["images"]:
        response = api.get(image["url"])
        assert response.status_code == 200 and response.headers["content-type"] == "image/png"
        assert png_record(response.content) == image["record"]
        served.append(response.content)
    assert [image["record"]["seed"] for image in job["images"]] == [5, 6]

    from sfumato.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(["generate", "a red circle on a blue background", "--seed", "5", "--num", "2", "--steps", "3",
                 "--prior-steps", "2", "-o", "cli.png", "-q"]) == 0
    for index, content in enumerate(served):
        assert read_parameters(tmp_path / f"cli-{index}.png") == png_record(content)
        assert np.array_equal(pixels((tmp_path / f"cli-{index}.png").read_bytes()), pixels(content))


def test_every_workflow(api):
    circle = data_url(disc())
    records = {}
    records["image2image"] = run(api, {"task": "image2image", "prompt": "a yellow circle on a blue background",
                                       "image": circle, "strength": 0.7, "seed": 1, **FAST})
    records["inpaint"] = run(api, {"task": "inpaint", "prompt": "a white square on a blue background",
                                   "image": circle, "mask": data_url(right_half_mask()), "seed": 2, **FAST})
    records["controlnet"] = run(api, {"task": "controlnet", "prompt": "a green circle on a black background",
                                      "hint": data_url(disc((255, 255, 255), (0, 0, 0))), "seed": 3, **FAST})
    records["interpolate"] = run(api, {"task": "interpolate", "seed": 4, "weights": [0.5, 0.5],
                                       "items": ["a red circle on a blue background", circle], **FAST})
    for task, job in records.items():
        record = job["images"][0]["record"]
        assert record["task"] == task
        assert record["model"].startswith("builtin:")
    # inputs are kept under --data by the SHA-256 of their pixels, recorded like the command line's files
    inpaint = records["inpaint"]["images"][0]["record"]
    assert set(inpaint["input_sha256"]) == {"image", "mask"} and inpaint["keep_unmasked"] is True
    assert inpaint["image"].endswith(f"{inpaint['input_sha256']['image']}.png")
    assert records["inpaint"]["request"]["image"].startswith("upload:")  # never a server path

    # a result as the next job's input, the "use as input" of the page
    reused = run(api, {"task": "image2image", "prompt": "a green circle on a blue background",
                       "image": records["image2image"]["images"][0]["ref"], "strength": 0.7, "seed": 5, **FAST})
    assert reused["images"][0]["record"]["image"].endswith("/0.png")


def test_a_sampler_preset_through_the_api(api):
    """``preset`` fills what the job leaves open, as `--preset` does; the record holds the values it chose (the
    queue keeps the checked record, so the preset's name, only informational, is not in it)."""
    job = run(api, {"task": "text2image", "prompt": "a red circle on a blue background", "seed": 6, "steps": 3,
                    "preset": "fast"})
    record = job["images"][0]["record"]
    assert (record["scheduler"], record["steps"], record["prior_steps"]) == ("dpm++-karras", 3, 10)
    response = api.post("/api/jobs", json={"task": "text2image", "prompt": "a red circle", "preset": "turbo"})
    assert response.status_code == 422 and response.json() == {"detail": "preset must be one of fast, got 'turbo'",
                                                               "field": "preset"}, response.text


def test_chain_from_yaml_text_shows_marked_steps(api):
    chain = """
model: builtin
steps:
  - task: text2image
    prompt: a red circle on a blue background
    steps: 3
    prior_steps: 2
    out: first.png
  - task: image2image
    prompt: a yellow circle on a blue background
    strength: 0.7
    steps: 3
    prior_steps: 2
"""
    job = run(api, {"chain": chain, "seed": 42})
    assert job["kind"] == "chain"
    first, final = (image["record"] for image in job["images"])
    assert first["task"] == "text2image" and first["seed"] == 42
    assert final["task"] == "image2image" and final["image"]["task"] == "text2image"  # the record nests step 1
    assert final["command"] == "chain"


def test_reproduce_a_result_and_an_uploaded_png(api):
    made = run(api, {"prompt": "a blue square on a white background", "seed": 9, **FAST})
    again = run(api, {"reproduce": made["images"][0]["ref"]})
    assert again["kind"] == "reproduce"
    assert again["result"]["reproduced"] == {"identical": True, "difference": None}
    png = api.get(made["images"][0]["url"]).content
    uploaded = run(api, {"reproduce": "data:image/png;base64," + base64.b64encode(png).decode()})
    assert uploaded["result"]["reproduced"]["identical"] is True
    assert np.array_equal(pixels(api.get(uploaded["images"][0]["url"]).content), pixels(png))
    # a PNG record posted as a job: the same picture again
    record = run(api, made["images"][0]["record"])
    assert np.array_equal(pixels(api.get(record["images"][0]["url"]).content), pixels(png))


def test_progress_is_pushed_as_server_sent_events(api):
    # 40 steps: long enough (~1 s here) for the stream, which samples the job's state every 0.1 s, to see some
    job = submit(api, {"prompt": "a green triangle on a black background", "seed": 1, "steps": 40,
                       "prior_steps": 4})
    events = []
    with api.stream("GET", job["events"]) as stream:
        assert stream.headers["content-type"].startswith("text/event-stream")
        name = None
        for line in stream.iter_lines():
            if line.startswith("event: "):
                name = line[len("event: "):]
            elif line.startswith("data: "):
                events.append((name, json.loads(line[len("data: "):])))
    states = [view["state"] for _, view in events]
    assert states[-1] == "done" and events[-1][0] == "done"
    steps = [view["progress"] for name, view in events if view["state"] == "running" and "step" in view["progress"]]
    denoising = [p for p in steps if p["stage"] == "denoising" and p["steps"] == 40]
    assert denoising, steps
    # how many of the 40 steps are seen depends on the machine's load (the stream samples the job's state)
    assert all(1 <= p["step"] <= 40 for p in denoising)
    fractions = [p["fraction"] for p in steps]
    assert fractions == sorted(fractions)


def test_queue_lists_the_callers_jobs_only(api, live):
    job = run(api, {"prompt": "a white circle on a black background", "seed": 1, **FAST})
    listed = api.get("/api/jobs").json()
    assert [j["id"] for j in listed["jobs"]] == [job["id"]]
    assert listed["jobs"][0]["images"][0]["url"] == job["images"][0]["url"]
    with live.client("somebody-else") as other:
        assert other.get("/api/jobs").json()["jobs"] == []
        refused = other.get(f"/api/jobs/{job['id']}")
        assert refused.status_code == 403 and refused.json()["field"] == "id"
        assert other.get(job["images"][0]["url"]).status_code == 403


def test_cancel_queued_and_running_jobs(api, live):
    long = submit(api, {"prompt": "a red square on a white background", "seed": 1, "steps": 200, "prior_steps": 2})
    queued = submit(api, {"prompt": "a red square on a white background", "seed": 2, **FAST})
    with live.client("not-the-submitter") as other:
        refused = other.delete(f"/api/jobs/{queued['id']}")
        assert refused.status_code == 403
        assert refused.json() == {"detail": f"id: job {queued['id']} was submitted by another client; only its "
                                            f"submitter can cancel it", "field": "id"}
    cancelled = api.delete(f"/api/jobs/{queued['id']}")
    assert cancelled.status_code == 200 and cancelled.json()["state"] == "cancelled"
    # the long job stops at its next step once it runs
    while api.get(long["url"]).json().get("progress", {}).get("step", 0) < 2:
        pass
    assert api.delete(long["url"]).json()["cancel_requested"] is True
    ended = wait_for(api, long["id"], timeout=60)
    assert ended["state"] == "cancelled" and "images" not in ended
    again = api.delete(long["url"])
    assert again.status_code == 409 and again.json()["field"] == "id"


def test_models_server_uploads_and_info(api):
    models = api.get("/api/models").json()
    assert models["models"][0]["name"] == "builtin"
    assert set(models["models"][0]["workflows"]) == {"text2image", "image2image", "inpaint", "controlnet",
                                                     "interpolate", "chain", "reproduce"}
    assert "euler-a" in models["schedulers"]
    about = api.get("/api/server").json()
    assert about["token_required"] is False and about["limits"]["max_images"] >= 1
    raw = io.BytesIO()
    disc().save(raw, format="JPEG")
    upload = api.post("/api/uploads", content=raw.getvalue(), headers={"Content-Type": "image/jpeg"})
    assert upload.status_code == 201 and upload.json()["ref"].startswith("upload:")
    job = run(api, {"task": "image2image", "prompt": "a red circle on a blue background",
                    "image": upload.json()["ref"], "strength": 0.7, "seed": 1, **FAST})
    png = api.get(job["images"][0]["url"]).content
    info = api.post("/api/info", json={"image": "data:image/png;base64," + base64.b64encode(png).decode()})
    assert info.status_code == 200 and info.json()["record"]["seed"] == 1


def test_page_and_static_files_are_served(api):
    page = api.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert "/static/app.js" in page.text and "http" not in page.text.replace("http://www.w3.org", "")
    for name in ("app.js", "style.css"):
        assert api.get(f"/static/{name}").status_code == 200
    assert api.get("/static/../serve/app.py").status_code == 404
