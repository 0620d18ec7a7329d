"""Stable Diffusion ControlNet over HTTP: folders the server's operator registers (``sfumato serve --controlnet
NAME=FOLDER --depth-model NAME=FOLDER``), named by jobs; never a folder named by a client.

The tiny random folders come from the pipeline tests' builders (a "small" Stable Diffusion pipeline, its
ControlNetModel, a DPT depth model); the server's picture is checked against the command line's for the same
parameters, and is made again from its record both through the API and by ``sfumato reproduce --check``.
"""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import PIL.Image
import pytest

from sfumato.metadata import read_parameters

from ..image.test_depth import dpt_folder  # noqa: F401 - a tiny depth-estimation model folder (module fixture)
from .helpers import data_url, wait_for

PROMPT = "a lighthouse on a cliff"


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    from ..pipelines.stable_diffusion import builders as sd
    from ..pipelines.stable_diffusion import builders_upscale as upscale

    root = tmp_path_factory.mktemp("serve-controlnet")
    return {"sd": str(sd.save(root / "sd", "small")), "controlnet": str(upscale.save_controlnet(root / "cn", "small"))}


@pytest.fixture
def photo(tmp_path) -> Path:
    """A 32x32 random photo (the depth model makes the hint from it)."""
    array = np.random.default_rng(4).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    path = tmp_path / "photo.png"
    PIL.Image.fromarray(array).save(path)
    return path


def _pixels(data: bytes | Path) -> np.ndarray:
    with PIL.Image.open(io.BytesIO(data) if isinstance(data, bytes) else data) as picture:
        return np.asarray(picture.convert("RGB")).copy()


def _server(make_app, folders, dpt, **options):
    return make_app(models=[folders["sd"]], controlnets={"depth": folders["controlnet"]},
                    depth_models={"dpt": str(dpt)}, **options)


def test_a_registered_controlnet_makes_the_command_lines_picture(make_app, folders, dpt_folder, photo,  # noqa: F811
                                                                 tmp_path, monkeypatch):
    client = _server(make_app, folders, dpt_folder, start_worker=True)
    listed = client.get("/api/models").json()
    entry = listed["models"][0]
    assert "controlnet" in entry["workflows"] and entry["controlnets"] == ["depth"]
    assert listed["controlnets"] == [{"name": "depth", "cross_attention_dim": 32}]
    assert listed["depth_models"] == [{"name": "dpt", "model_type": "dpt"}]

    response = client.post("/api/jobs", json={
        "task": "controlnet", "model": folders["sd"], "prompt": PROMPT, "hint": data_url(PIL.Image.open(photo)),
        "controlnet": "depth", "depth_model": "dpt", "controlnet_scale": 0.6, "seed": 9, "steps": 2})
    assert response.status_code == 202, response.text
    assert (response.json()["request"]["controlnet"], response.json()["request"]["depth_model"]) == ("depth", "dpt")
    job = wait_for(client, response.json()["id"])
    assert job["state"] == "done", job
    record = job["images"][0]["record"]
    # the record holds the folders, as the command line writes them: `sfumato reproduce` works on it
    assert record["controlnet"] == str(Path(folders["controlnet"]).resolve())
    assert record["depth_model"] == str(Path(dpt_folder).resolve())
    assert record["weighting"] is True
    served = client.get(job["images"][0]["url"]).content
    (tmp_path / "served.png").write_bytes(served)
    # reproduced through the API: the record's folders are the registered ones
    again = wait_for(client, client.post("/api/jobs", json={"reproduce": job["images"][0]["ref"]}).json()["id"])
    assert again["state"] == "done" and again["result"]["reproduced"]["identical"] is True, again

    from sfumato.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(["controlnet", str(photo), PROMPT, "--model", folders["sd"], "--controlnet", folders["controlnet"],
                 "--depth-model", str(dpt_folder), "--controlnet-scale", "0.6", "--seed", "9", "--steps", "2",
                 "-o", "cli.png", "-q"]) == 0
    made = read_parameters(tmp_path / "cli.png")
    assert {k: v for k, v in made.items() if k != "hint"} == {k: v for k, v in record.items() if k != "hint"}
    assert np.array_equal(_pixels(tmp_path / "cli.png"), _pixels(served))
    assert main(["reproduce", "served.png", "-o", "again.png", "--check", "-q"]) == 0


def test_controlnet_and_depth_model_names_only(make_app, folders, dpt_folder, photo, tmp_path):  # noqa: F811
    client = _server(make_app, folders, dpt_folder)
    job = {"task": "controlnet", "model": folders["sd"], "prompt": PROMPT, "hint": data_url(PIL.Image.open(photo)),
           "steps": 2}
    copy = shutil.copytree(folders["controlnet"], tmp_path / "another-controlnet")  # a real one, not registered
    for field, value, words in (
            ("controlnet", "canny", ("unknown ControlNet 'canny'", "this server has depth")),
            ("controlnet", str(copy), ("unknown ControlNet", "never opened", "this server has depth")),
            ("controlnet", "/etc", ("unknown ControlNet '/etc'",)),
            ("controlnet", 5, ("must be the name of one of this server's ControlNets",)),
            ("depth_model", "midas", ("unknown depth model 'midas'", "this server has dpt")),
            ("depth_model", str(tmp_path), ("unknown depth model",))):
        response = client.post("/api/jobs", json={**job, "controlnet": "depth", field: value})
        assert response.status_code == 422 and response.json()["field"] == field, (value, response.text)
        assert all(word in response.json()["detail"] for word in words), response.json()["detail"]
    # a Stable Diffusion ControlNet job without one: the names it may give
    response = client.post("/api/jobs", json=job)
    assert response.status_code == 422 and response.json()["field"] == "controlnet", response.text
    assert "the name of a ControlNet this server offers (depth)" in response.json()["detail"]
    # in a chain step too
    response = client.post("/api/jobs", json={"chain": {"model": folders["sd"], "steps": [
        {"task": "text2image", "prompt": PROMPT, "width": 32, "height": 32, "steps": 2},
        {"task": "controlnet", "prompt": PROMPT, "controlnet": "canny", "steps": 2}]}})
    assert response.status_code == 422 and response.json()["field"] == "controlnet", response.text
    response = client.post("/api/jobs", json={"chain": {"model": folders["sd"], "steps": [
        {"task": "text2image", "prompt": PROMPT, "width": 32, "height": 32, "steps": 2},
        {"task": "controlnet", "prompt": PROMPT, "controlnet": "depth", "steps": 2}]}})
    assert response.status_code == 202, response.text
    assert response.json()["request"]["chain"]["steps"][1]["controlnet"] == "depth"
    # a record this server wrote names the registered folder itself, which is accepted as it is
    response = client.post("/api/jobs", json={**job, "controlnet": str(Path(folders["controlnet"]).resolve()),
                                              "depth_model": str(Path(dpt_folder).resolve())})
    assert response.status_code == 202, response.text
    assert (response.json()["request"]["controlnet"], response.json()["request"]["depth_model"]) == ("depth", "dpt")


def test_a_server_without_registrations_refuses_controlnet_folders(make_app, folders):
    client = make_app(models=[folders["sd"]])
    listed = client.get("/api/models").json()
    assert "controlnet" not in listed["models"][0]["workflows"] and listed["controlnets"] == []
    response = client.post("/api/jobs", json={"task": "controlnet", "model": folders["sd"], "prompt": PROMPT,
                                              "hint": data_url(PIL.Image.new("RGB", (32, 32))),
                                              "controlnet": folders["controlnet"]})
    assert response.status_code == 422 and response.json()["field"] == "controlnet"
    assert "sfumato serve --controlnet NAME=FOLDER" in response.json()["detail"]


def test_bad_registrations_are_refused_at_start_up(folders, dpt_folder, tmp_path, capsys):  # noqa: F811
    from sfumato.cli.errors import UsageError
    from sfumato.serve.config import ServeConfig, registrations

    no_processor = shutil.copytree(dpt_folder, tmp_path / "dpt-alone")
    (no_processor / "preprocessor_config.json").unlink()
    cases = {
        "a missing folder": ({"controlnets": {"depth": str(tmp_path / "missing")}},
                             ("--controlnet depth", "no such folder")),
        "a pipeline folder": ({"controlnets": {"depth": folders["sd"]}}, ("--controlnet depth", "pipeline folder")),
        "a UNet": ({"controlnets": {"depth": folders["sd"] + "/unet"}},
                   ("--controlnet depth", "UNet2DConditionModel", "ControlNetModel")),
        "a bad name": ({"controlnets": {"../x": folders["controlnet"]}}, ("--controlnet", "NAME must be")),
        "a ControlNet as depth model": ({"depth_models": {"dpt": folders["controlnet"]}},
                                        ("--depth-model dpt", "not a depth-estimation model")),
        "a depth model without its processor": ({"depth_models": {"dpt": str(no_processor)}},
                                                ("--depth-model dpt", "preprocessor_config.json")),
        "a missing depth model": ({"depth_models": {"dpt": str(tmp_path / "missing")}},
                                  ("--depth-model dpt", "no such folder")),
    }
    for case, (options, words) in cases.items():
        with pytest.raises(UsageError) as caught:
            ServeConfig(data=tmp_path / "data", **options).check()
        assert all(word in str(caught.value) for word in words), (case, str(caught.value))
    for values, words in ((["depth"], "must be NAME=FOLDER"), (["=x"], "must be NAME=FOLDER"),
                          (["a b=x"], "NAME must be"), (["d=x", "d=y"], "given twice")):
        with pytest.raises(UsageError, match=words):
            registrations(values, "--controlnet")
    assert registrations([f"depth={folders['controlnet']}"], "--controlnet") == {"depth": folders["controlnet"]}

    from sfumato.cli import main

    # the command line refuses them before anything loads or listens
    capsys.readouterr()
    assert main(["serve", "--data", str(tmp_path / "data"), "--controlnet", f"depth={tmp_path / 'missing'}"]) == 2
    assert "--controlnet depth" in capsys.readouterr().err
    assert main(["serve", "--data", str(tmp_path / "data"), "--depth-model", "dpt"]) == 2
    assert "--depth-model must be NAME=FOLDER" in capsys.readouterr().err


def test_automatic1111_controlnet_units_name_registered_folders(make_app, folders, dpt_folder, photo,  # noqa: F811
                                                                tmp_path, monkeypatch):
    """The sd-webui-controlnet request shape against a Stable Diffusion model: the unit's model names a registered
    ControlNet (its " [hash]" dropped), a depth module the registered depth model, weight the scale; img2img with
    a unit is ControlNet image-to-image. The pictures are the command line's."""
    import base64

    from sfumato.cli import main

    client = _server(make_app, folders, dpt_folder, start_worker=True)
    assert client.get("/controlnet/model_list").json() == {"model_list": ["depth"]}
    assert client.get("/controlnet/module_list").json()["module_list"] == ["none", "depth"]
    bare = data_url(PIL.Image.open(photo)).split(",", 1)[1]
    unit = {"enabled": True, "image": {"image": bare, "mask": None}, "module": "depth_midas",
            "model": "depth [fef5e48e]", "weight": 0.6, "control_mode": "Balanced", "guidance_start": 0.0,
            "guidance_end": 0.5}
    body = {"prompt": PROMPT, "seed": 9, "steps": 2, "cfg_scale": 7.5, "width": 32, "height": 32,
            "sampler_name": "PLMS", "override_settings": {"sd_model_checkpoint": folders["sd"]},
            "alwayson_scripts": {"controlnet": {"args": [unit]}}}
    response = client.post("/sdapi/v1/txt2img", json=body)
    assert response.status_code == 200, response.text
    (tmp_path / "served.png").write_bytes(base64.b64decode(response.json()["images"][0]))
    record = read_parameters(tmp_path / "served.png")
    assert record["controlnet"] == str(Path(folders["controlnet"]).resolve()) and record["controlnet_scale"] == 0.6
    assert record["depth_model"] == str(Path(dpt_folder).resolve())
    assert (record["control_start"], record["control_end"]) == (0.0, 0.5)
    assert "alwayson_scripts.controlnet.args[0].control_mode" in json.loads(response.json()["info"])["ignored"]
    monkeypatch.chdir(tmp_path)
    argv = [PROMPT, "--model", folders["sd"], "--controlnet", folders["controlnet"], "--depth-model", str(dpt_folder),
            "--controlnet-scale", "0.6", "--seed", "9", "--steps", "2", "--guidance", "7.5", "--scheduler", "pndm",
            "--size", "32x32", "--control-end", "0.5", "-q"]
    assert main(["controlnet", str(photo), *argv, "-o", "cli.png"]) == 0
    assert np.array_equal(_pixels(tmp_path / "cli.png"), _pixels(tmp_path / "served.png"))

    start = PIL.Image.fromarray(np.random.default_rng(7).integers(0, 256, (32, 32, 3), dtype=np.uint8))
    start.save(tmp_path / "start.png")
    body = {**body, "init_images": [data_url(start)], "denoising_strength": 0.5, "steps": 4,
            "alwayson_scripts": {"controlnet": {"args": [{**unit, "module": "none", "model": "depth"}]}}}
    response = client.post("/sdapi/v1/img2img", json=body)
    assert response.status_code == 200, response.text
    (tmp_path / "served-i2i.png").write_bytes(base64.b64decode(response.json()["images"][0]))
    record = read_parameters(tmp_path / "served-i2i.png")
    assert (record["task"], record["strength"], record.get("depth_model")) == ("controlnet", 0.5, None)
    argv = [a for a in argv if a not in ("--depth-model", str(dpt_folder))]
    argv[argv.index("--steps") + 1] = "4"
    assert main(["controlnet", str(photo), *argv, "--image", "start.png", "--strength", "0.5", "-o", "cli-i2i.png"]) == 0
    assert np.array_equal(_pixels(tmp_path / "cli-i2i.png"), _pixels(tmp_path / "served-i2i.png"))

    # img2img with a mask and a unit: ControlNet inpainting, denoising_strength its strength
    mask = np.zeros((32, 32), np.uint8)
    mask[8:24, 10:30] = 255
    PIL.Image.fromarray(mask).save(tmp_path / "mask.png")
    response = client.post("/sdapi/v1/img2img", json={**body, "mask": data_url(PIL.Image.fromarray(mask)),
                                                        "denoising_strength": 0.9})
    assert response.status_code == 200, response.text
    assert "denoising_strength" not in json.loads(response.json()["info"])["ignored"]
    (tmp_path / "served-inpaint.png").write_bytes(base64.b64decode(response.json()["images"][0]))
    record = read_parameters(tmp_path / "served-inpaint.png")
    assert (record["task"], record["strength"], record["keep_unmasked"]) == ("controlnet", 0.9, True)
    assert main(["controlnet", str(photo), *argv, "--image", "start.png", "--mask", "mask.png", "--strength", "0.9",
                 "-o", "cli-inpaint.png"]) == 0
    assert np.array_equal(_pixels(tmp_path / "cli-inpaint.png"), _pixels(tmp_path / "served-inpaint.png"))

    response = client.post("/sdapi/v1/txt2img", json={**body, "alwayson_scripts": {"controlnet": {"args": [
        {**unit, "model": "canny [abc]"}]}}})
    assert response.status_code == 422, response.text
    assert response.json()["field"] == "alwayson_scripts.controlnet.args[0].model"
    assert "unknown ControlNet 'canny [abc]'" in response.json()["detail"]
    assert "this server offers depth" in response.json()["detail"]
