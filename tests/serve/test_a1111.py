"""The AUTOMATIC1111 API, spoken to the way its clients speak it: plain JSON over HTTP, base64 pictures,
full default payloads with many fields sfumato does not have."""

from __future__ import annotations

import base64
import io
import json
import threading
import time
import urllib.request

import numpy as np
import PIL.Image
import pytest

from .helpers import data_url, disc, right_half_mask

# what a typical client sends (its defaults), with few steps
TXT2IMG = {
    "enable_hr": False, "denoising_strength": 0, "firstphase_width": 0, "firstphase_height": 0, "hr_scale": 2,
    "prompt": "a yellow triangle on a black background", "styles": [], "seed": 1234, "subseed": -1,
    "subseed_strength": 0, "seed_resize_from_h": -1, "seed_resize_from_w": -1, "sampler_name": "Euler a",
    "batch_size": 2, "n_iter": 1, "steps": 3, "cfg_scale": 4, "width": 64, "height": 64, "restore_faces": False,
    "tiling": False, "do_not_save_samples": False, "do_not_save_grid": False, "negative_prompt": "", "eta": 0,
    "s_churn": 0, "s_tmax": 0, "s_tmin": 0, "s_noise": 1, "override_settings": {"CLIP_stop_at_last_layers": 2},
    "override_settings_restore_afterwards": True, "script_args": [], "sampler_index": "Euler",
    "send_images": True, "save_images": False, "alwayson_scripts": {}, "prior_steps": 2,
}


def post(url: str, path: str, body: dict, headers: dict | None = None) -> tuple[int, dict]:
    """urllib, as the simplest clients do it."""
    request = urllib.request.Request(url + path, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=300) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def get(url: str, path: str) -> dict:
    with urllib.request.urlopen(url + path, timeout=60) as response:
        return json.loads(response.read())


def decoded(picture: str) -> PIL.Image.Image:
    image = PIL.Image.open(io.BytesIO(base64.b64decode(picture)))
    image.load()
    return image


def test_txt2img_with_a_full_client_payload(live):
    status, answer = post(live.url, "/sdapi/v1/txt2img", TXT2IMG)
    assert status == 200, answer
    assert len(answer["images"]) == 2
    pictures = [decoded(p) for p in answer["images"]]
    assert all(p.size == (64, 64) for p in pictures)
    records = [json.loads(p.text["sfumato"]) for p in pictures]
    assert [r["seed"] for r in records] == [1234, 1235]
    assert records[0]["scheduler"] == "euler-a" and records[0]["guidance"] == 4.0 and records[0]["steps"] == 3
    info = json.loads(answer["info"])
    assert info["seed"] == 1234 and info["all_seeds"] == [1234, 1235] and info["sampler_name"] == "Euler a"
    assert info["width"] == 64 and info["cfg_scale"] == 4.0 and len(info["infotexts"]) == 2
    assert info["infotexts"][0].startswith("a yellow triangle on a black background\nSteps: 3, Sampler: Euler a")
    assert {"enable_hr", "styles", "restore_faces", "eta", "subseed",
            "override_settings.CLIP_stop_at_last_layers"} <= set(info["ignored"])
    assert not {"prompt", "seed", "steps", "cfg_scale", "batch_size", "sampler_name"} & set(info["ignored"])
    assert answer["parameters"]["prompt"] == TXT2IMG["prompt"]


def test_img2img_and_inpainting_with_base64_pictures(live):
    bare = data_url(disc()).split(",", 1)[1]  # clients send bare base64, or data URLs
    body = {"init_images": [bare], "prompt": "a yellow circle on a blue background", "denoising_strength": 0.7,
            "seed": 5, "steps": 3, "prior_steps": 2, "cfg_scale": 1, "sampler_name": "DDIM", "include_init_images": False}
    status, answer = post(live.url, "/sdapi/v1/img2img", body)
    assert status == 200, answer
    record = json.loads(decoded(answer["images"][0]).text["sfumato"])
    assert record["task"] == "image2image" and record["strength"] == 0.7 and record["scheduler"] == "ddim"
    assert answer["parameters"]["init_images"] is None

    body.update(mask=data_url(right_half_mask()), inpainting_fill=1, mask_blur=4, inpainting_mask_invert=0,
                prompt="a white square on a blue background", sampler_name="DPM++ 2M Karras")
    status, answer = post(live.url, "/sdapi/v1/img2img", body)
    assert status == 200, answer
    record = json.loads(decoded(answer["images"][0]).text["sfumato"])
    assert record["task"] == "inpaint" and "mask" in record
    assert (record["scheduler"], record["scheduler_class"]) == ("dpm++-karras", "DPMSolverMultistepScheduler")
    info = json.loads(answer["info"])
    assert info["sampler_name"] == "DPM++ 2M Karras" and "Sampler: DPM++ 2M Karras" in info["infotexts"][0]
    assert "Karras" not in json.dumps(info.get("notes", ""))
    assert {"inpainting_fill", "mask_blur", "denoising_strength"} <= set(info["ignored"])


def test_png_info_options_models_and_samplers(live):
    status, answer = post(live.url, "/sdapi/v1/txt2img", {"prompt": "a red square on a white background", "seed": 3,
                                                           "steps": 3, "prior_steps": 2})
    assert status == 200, answer
    status, info = post(live.url, "/sdapi/v1/png-info", {"image": "data:image/png;base64," + answer["images"][0]})
    assert status == 200
    assert info["info"].startswith("a red square on a white background\nSteps: 3, Sampler: DDPM")
    assert info["parameters"]["Seed"] == 3 and "sfumato" in info["items"]
    status, plain = post(live.url, "/sdapi/v1/png-info", {"image": data_url(disc())})
    assert status == 200 and plain["info"] == "" and plain["parameters"] == {}

    assert get(live.url, "/sdapi/v1/options")["sd_model_checkpoint"] == "builtin"
    models = get(live.url, "/sdapi/v1/sd-models")
    assert models[0]["title"] == "builtin" and models[0]["model_name"] == "builtin"
    names = [sampler["name"] for sampler in get(live.url, "/sdapi/v1/samplers")]
    assert {"Euler a", "Euler", "DPM++ 2M", "DPM++ 2M Karras", "DDIM", "LMS", "PLMS"} <= set(names)
    status, answer = post(live.url, "/sdapi/v1/options", {"sd_model_checkpoint": "builtin", "show_progressbar": True})
    assert status == 200 and answer == {"ignored": ["show_progressbar"]}
    status, answer = post(live.url, "/sdapi/v1/options", {"sd_model_checkpoint": "v1-5-pruned.safetensors"})
    assert status == 422 and answer["field"] == "sd_model_checkpoint"


@pytest.mark.parametrize("body, field", [
    ({"prompt": "a red square", "sampler_name": "UniPC"}, "sampler_name"),
    ({"prompt": "a red square", "steps": "many"}, "steps"),
    ({"prompt": "a red square", "batch_size": 0}, "batch_size"),
    ({"prompt": "a red square", "width": 100000}, "width"),
    ({"prompt": "a red square", "override_settings": {"sd_model_checkpoint": "sdxl"}},
     "override_settings.sd_model_checkpoint"),
    ({"prompt": ""}, "prompt"),
])
def test_txt2img_refusals_name_the_field(live, body, field):
    status, answer = post(live.url, "/sdapi/v1/txt2img", body)
    assert 400 <= status < 500 and answer["field"] == field, answer


def _silhouette() -> PIL.Image.Image:
    array = np.zeros((64, 64, 3), dtype=np.uint8)
    array[12:52, 20:44] = 255
    return PIL.Image.fromarray(array)


def _unit(**fields) -> dict:
    """A ControlNet unit as the sd-webui-controlnet extension's clients send it."""
    return {"enabled": True, "module": "none", "model": "None", "weight": 1.0, "resize_mode": "Crop and Resize",
            "lowvram": False, "processor_res": 512, "guidance_start": 0.0, "guidance_end": 1.0,
            "control_mode": "Balanced", "pixel_perfect": False, **fields}


def test_controlnet_units_make_the_command_lines_controlnet_pictures(live, tmp_path, monkeypatch):
    """The built-in model's ControlNet through alwayson_scripts: txt2img with a unit is `sfumato controlnet`,
    img2img with one is `sfumato controlnet --image` (ControlNet image-to-image)."""
    from sfumato.cli import main

    hint = _silhouette()
    hint.save(tmp_path / "hint.png")
    disc().save(tmp_path / "start.png")
    bare = data_url(hint).split(",", 1)[1]
    common = {"prompt": "a green square on a white background", "seed": 21, "steps": 4, "prior_steps": 2,
              "cfg_scale": 1, "width": 64, "height": 64}
    disabled = {"args": [_unit(enabled=False, image=bare), _unit(image=bare)]}
    status, answer = post(live.url, "/sdapi/v1/txt2img", {**common, "alwayson_scripts": {"controlnet": disabled,
                                                                                          "ADetailer": {"args": []}}})
    assert status == 200, answer
    record = json.loads(decoded(answer["images"][0]).text["sfumato"])
    assert record["task"] == "controlnet" and record["model"] == "builtin:controlnet" and "image" not in record
    info = json.loads(answer["info"])
    assert {"alwayson_scripts.ADetailer", "alwayson_scripts.controlnet.args[1].resize_mode"} <= set(info["ignored"])
    assert not [name for name in info["ignored"] if name.endswith((".image", ".module", ".model"))]
    decoded(answer["images"][0]).save(tmp_path / "served.png")

    monkeypatch.chdir(tmp_path)
    argv = ["--seed", "21", "--steps", "4", "--prior-steps", "2", "--guidance", "1", "-q"]
    assert main(["controlnet", "hint.png", common["prompt"], *argv, "-o", "cli.png"]) == 0
    assert np.array_equal(np.asarray(PIL.Image.open(tmp_path / "cli.png")),
                          np.asarray(PIL.Image.open(tmp_path / "served.png")))

    body = {**common, "init_images": [data_url(disc())], "denoising_strength": 0.75,
            "alwayson_scripts": {"controlnet": {"args": [_unit(input_image=bare)]}}}
    status, answer = post(live.url, "/sdapi/v1/img2img", body)
    assert status == 200, answer
    record = json.loads(decoded(answer["images"][0]).text["sfumato"])
    assert (record["task"], record["strength"]) == ("controlnet", 0.75) and {"image", "hint"} <= set(record)
    (tmp_path / "served-i2i.png").write_bytes(base64.b64decode(answer["images"][0]))  # with its record
    assert main(["controlnet", "hint.png", common["prompt"], "--image", "start.png", "--strength", "0.75", *argv,
                 "-o", "cli-i2i.png"]) == 0
    assert np.array_equal(np.asarray(PIL.Image.open(tmp_path / "cli-i2i.png")),
                          np.asarray(PIL.Image.open(tmp_path / "served-i2i.png")))
    assert main(["reproduce", "served-i2i.png", "-o", "again.png", "--check", "-q"]) == 0

    # img2img with a unit without a picture: the starting picture is the hint too
    body["alwayson_scripts"] = {"controlnet": {"args": [_unit()]}}
    status, answer = post(live.url, "/sdapi/v1/img2img", body)
    assert status == 200, answer
    record = json.loads(decoded(answer["images"][0]).text["sfumato"])
    assert record["input_sha256"]["hint"] == record["input_sha256"]["image"]
    assert any("init_images[0] is the hint too" in note for note in json.loads(answer["info"])["notes"])


@pytest.mark.parametrize("scripts, field, words", [
    ({"controlnet": {"args": [_unit(image="x"), _unit(image="y")]}}, "alwayson_scripts.controlnet.args",
     "2 ControlNet units are enabled"),
    ({"controlnet": {"args": [_unit()]}}, "alwayson_scripts.controlnet.args[0].image", "needs a picture"),
    ({"controlnet": {"args": [_unit(image=data_url(disc()), module="canny")]}},
     "alwayson_scripts.controlnet.args[0].module", "'canny' is not available"),
    ({"controlnet": {"args": [_unit(image=data_url(disc()), module="depth_midas")]}},
     "alwayson_scripts.controlnet.args[0].module", "this server has no depth model"),
    ({"controlnet": {"args": "none"}}, "alwayson_scripts.controlnet.args", "must be a list of ControlNet units"),
    ({"controlnet": {"args": [_unit(image="bm90IGEgcGljdHVyZQ==")]}}, "alwayson_scripts.controlnet.args[0].image",
     ""),
    ([], "alwayson_scripts", "must be a JSON object"),
])
def test_controlnet_unit_refusals_name_the_field(live, scripts, field, words):
    status, answer = post(live.url, "/sdapi/v1/txt2img", {"prompt": "a red square", "alwayson_scripts": scripts})
    assert 400 <= status < 500 and answer["field"] == field and words in answer["detail"], answer


def test_controlnet_lists_and_inpainting_refusal(live):
    assert get(live.url, "/controlnet/model_list") == {"model_list": []}
    assert get(live.url, "/controlnet/module_list")["module_list"] == ["none"]
    assert get(live.url, "/controlnet/version")["version"] >= 1
    body = {"prompt": "a red square", "init_images": [data_url(disc())], "mask": data_url(right_half_mask()),
            "alwayson_scripts": {"controlnet": {"args": [_unit(image=data_url(disc()))]}}}
    status, answer = post(live.url, "/sdapi/v1/img2img", body)
    # the built-in model's ControlNet is a Kandinsky 2.2 one, which has no inpainting pipeline
    assert status == 422 and "no inpainting pipeline" in answer["detail"], answer


def test_img2img_refusals(live):
    status, answer = post(live.url, "/sdapi/v1/img2img", {"prompt": "a red square"})
    assert status == 422 and answer["field"] == "init_images"
    status, answer = post(live.url, "/sdapi/v1/img2img", {"prompt": "a", "init_images": ["bm90IGEgcGljdHVyZQ=="]})
    assert status == 415 and answer["field"] == "init_images[0]"


def test_progress_and_interrupt(live):
    """A client that polls progress from another thread and interrupts its own generation."""
    result = {}
    body = {"prompt": "a white circle on a black background", "seed": 1, "steps": 200, "prior_steps": 2}
    worker = threading.Thread(target=lambda: result.update(zip(("status", "answer"),
                                                               post(live.url, "/sdapi/v1/txt2img", body))))
    worker.start()
    deadline = time.monotonic() + 120
    while True:
        progress = get(live.url, "/sdapi/v1/progress")
        # the decoder's steps (the prior's 2 steps come first: stopping at its step 2 would read its count)
        if progress["state"]["sampling_steps"] == 200 and progress["state"]["sampling_step"] >= 2:
            break
        assert time.monotonic() < deadline, progress
        time.sleep(0.05)
    assert 0 < progress["progress"] < 1 and progress["state"]["sampling_steps"] == 200
    assert progress["state"]["job_count"] == 1 and progress["state"]["job"]
    status, interrupted = post(live.url, "/sdapi/v1/interrupt", {})
    assert status == 200 and interrupted["cancelled"] == [progress["state"]["job"]]
    worker.join(60)
    assert result["status"] == 200 and result["answer"]["images"] == []
    assert json.loads(result["answer"]["info"])["interrupted"] is True
    assert get(live.url, "/sdapi/v1/progress")["state"]["job_count"] == 0


def test_basic_authentication_with_the_token_as_password(make_app):
    token = "a1111-token-0123456789abcdef"
    client = make_app(tokens=[token])
    assert client.get("/sdapi/v1/options").status_code == 401
    login = base64.b64encode(f"user:{token}".encode()).decode()
    answer = client.get("/sdapi/v1/options", headers={"Authorization": f"Basic {login}"})
    assert answer.status_code == 200 and answer.json()["sd_model_checkpoint"] == "builtin"
