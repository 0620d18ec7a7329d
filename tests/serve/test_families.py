"""The server offers the command line's new families and the upscale workflow: GET /api/models lists what each
folder can do, and POST /api/jobs runs an upscale job into the command line's own PNG."""

from __future__ import annotations

import io

import PIL.Image
import pytest

from .helpers import data_url, disc, wait_for


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    from ..pipelines.stable_diffusion import builders as sd
    from ..pipelines.stable_diffusion import builders_upscale as upscale

    root = tmp_path_factory.mktemp("serve-families")
    return {"sd": str(sd.save(root / "sd", "small")), "x4": str(upscale.save_x4(root / "x4", "small"))}


def test_models_list_the_new_families_and_upscale_runs(make_app, folders):
    client = make_app(start_worker=True, models=[folders["sd"], folders["x4"]])
    listed = {entry["name"]: set(entry["workflows"]) for entry in client.get("/api/models").json()["models"]}
    # a Stable Diffusion folder's ControlNet needs a ControlNetModel folder, which clients cannot name
    assert listed[folders["sd"]] == {"text2image", "image2image", "inpaint", "chain", "reproduce"}
    assert listed[folders["x4"]] == {"upscale", "chain", "reproduce"}

    response = client.post("/api/jobs", json={"task": "upscale", "model": folders["x4"], "image": data_url(disc(size=16)),
                                              "prompt": "a disc", "noise_level": 30, "steps": 2, "seed": 3})
    assert response.status_code == 202, response.text
    job = wait_for(client, response.json()["id"])
    assert job["state"] == "done", job
    record = job["images"][0]["record"]
    assert (record["task"], record["noise_level"], record["width"], record["height"]) == ("upscale", 30, 64, 64)
    with PIL.Image.open(io.BytesIO(client.get(job["images"][0]["url"]).content)) as picture:
        assert picture.size == (64, 64)


def test_folders_named_by_a_client_are_refused(make_app, folders):
    client = make_app(models=[folders["sd"]])
    response = client.post("/api/jobs", json={"task": "controlnet", "model": folders["sd"], "prompt": "a disc",
                                              "hint": data_url(disc(size=32)), "controlnet": "/etc"})
    assert response.status_code == 422 and response.json()["field"] == "controlnet"
    response = client.post("/api/jobs", json={"task": "upscale", "model": folders["sd"], "image": data_url(disc())})
    assert response.status_code == 422 and "cannot do upscale" in response.json()["detail"]
