"""Bad requests get a 4xx at once, with a message naming the field (no worker runs here)."""

from __future__ import annotations

import base64
import io

import numpy as np
import PIL.Image
import pytest

from sfumato.serve.config import Limits

from .helpers import data_url, disc, right_half_mask

CIRCLE = data_url(disc())


@pytest.fixture
def client(make_app):
    return make_app(limits=Limits(max_steps=50, max_side=512, max_images=4, max_upload=64 * 1024,
                                  max_pixels=512 * 512, max_queued=3))


BAD = [
    # (request, status, field, words in the message)
    ({"prompt": "a red circle on a blue background", "steps": "ten"}, 422, "steps", "steps must be a positive whole"),
    ({"prompt": "a red circle on a blue background", "steps": 0}, 422, "steps", "positive whole number"),
    ({"prompt": "a red circle on a blue background", "guidance": "high"}, 422, "guidance", "guidance must be a number"),
    ({"prompt": "a red circle on a blue background", "seed": -3}, 422, "seed", "seed must be a whole number"),
    ({"prompt": "a red circle on a blue background", "width": 100, "height": 64}, 422, "width", "multiple of"),
    ({"prompt": "a red circle on a blue background", "sizes": "64x64"}, 422, "sizes", "unknown key 'sizes'"),
    ({"prompt": 42}, 422, "prompt", "prompt must be a string"),
    ({"prompt": "   "}, 422, "prompt", "prompt is empty"),
    ({"task": "image2image", "prompt": "a red circle on a blue background"}, 422, "image", "needs image"),
    ({"task": "outpaint", "prompt": "x"}, 422, "task", "unknown task"),
    ({"task": "upscale", "prompt": "x"}, 422, "image", "upscale needs image"),
    ({"task": "upscale", "image": CIRCLE}, 422, "model", "the built-in model has no upscale checkpoint"),
    ({"prompt": "a red circle on a blue background", "model": "../../etc"}, 422, "model", "unknown model"),
    ({"prompt": "a red circle on a blue background", "model": "kandinsky-community/kandinsky-2-2-decoder"}, 422,
     "model", "unknown model"),
    ({"prompt": "a red circle on a blue background", "steps": 51}, 413, "steps", "limit of 50 steps"),
    ({"prompt": "a red circle on a blue background", "width": 1024, "height": 64}, 413, "width", "limit of 512"),
    ({"prompt": "a red circle on a blue background", "num": 5}, 413, "num", "limit of 4 pictures"),
    ({"prompt": "a red circle on a blue background", "num": "2"}, 422, "num", "num must be a positive whole"),
    ({"prompt": "x" * 3000}, 413, "prompt", "limit of 2000"),
    ({"prompt": "a red circle on a blue background", "device": "cuda"}, 422, "device", "own device"),
    ({"task": "image2image", "prompt": "a", "image": "/etc/passwd"}, 422, "image", "opens no file paths"),
    ({"task": "image2image", "prompt": "a", "image": "http://example.com/a.png"}, 422, "image", "opens no file paths"),
    ({"task": "image2image", "prompt": "a", "image": 7}, 422, "image", "must be a picture"),
    ({"task": "image2image", "prompt": "a", "image": "data:text/plain;base64,aGVsbG8="}, 415, "image", "text/plain"),
    ({"task": "image2image", "prompt": "a", "image": "data:image/png;base64,aGVsbG8gd29ybGQ="}, 415, "image",
     "not a picture"),
    ({"task": "image2image", "prompt": "a", "image": "data:image/png;base64,@@@"}, 422, "image", "not valid base64"),
    ({"task": "image2image", "prompt": "a", "image": "upload:" + "0" * 64}, 422, "image", "no picture uploaded"),
    ({"task": "image2image", "prompt": "a", "image": "result:" + "0" * 32 + "/0"}, 422, "image", "no job of yours"),
    ({"task": "inpaint", "prompt": "a", "image": CIRCLE, "mask": "mask.png"}, 422, "mask", "opens no file paths"),
    ({"task": "interpolate", "items": ["a red circle", "/tmp/x.png"]}, 422, "items[1]", "opens no file paths"),
    ({"task": "interpolate", "items": ["a red circle", "a blue square"], "weights": [1]}, 422, "weights",
     "one weight per item"),
    ({"task": "text2image", "prompt": "a", "strength": 0.5}, 422, "strength", "does not apply to text2image"),
    ({"chain": [{"task": "text2image", "prompt": "a", "steps": 0}]}, 422, "steps", "chain step 1: steps"),
    ({"chain": "steps: [unclosed"}, 422, "chain", "not valid YAML"),
    ({"chain": [{"task": "image2image", "prompt": "a", "image": "/etc/hosts"}]}, 422, "image", "opens no file"),
    ({"chain": [], "model": "builtin"}, 422, "model", "a chain request takes"),
    ({"reproduce": "data:image/png;base64," + base64.b64encode(b"\x89PNG\r\n\x1a\n").decode()}, 415, "reproduce",
     "not a picture"),
    ({"reproduce": CIRCLE}, 422, "reproduce", "without sfumato parameters"),
    ({"reproduce": {"task": "text2image", "prompt": "a"}}, 422, "seed", "no seed"),
    ({"reproduce": {"task": "image2image", "prompt": "a", "seed": 1, "image": "/home/someone/in.png",
                    "input_sha256": {"image": "ab" * 32}}}, 422, "image", "upload it"),
]


@pytest.mark.parametrize("payload, status, field, words", BAD, ids=[f"{i}-{b[2]}" for i, b in enumerate(BAD)])
def test_bad_job_requests_name_the_field(client, payload, status, field, words):
    response = client.post("/api/jobs", json=payload)
    assert response.status_code == status, response.text
    body = response.json()
    assert body["field"] == field, body
    assert words in body["detail"], body
    assert field.split("[")[0] in body["detail"]
    assert "--" not in body["detail"]  # the API's field names, not the command line's flags


def test_oversized_and_huge_uploads(client):
    noise = PIL.Image.fromarray(np.random.default_rng(0).integers(0, 256, (200, 200, 3), dtype=np.uint8))
    big = client.post("/api/jobs", json={"task": "image2image", "prompt": "a", "image": data_url(noise)})
    assert big.status_code == 413 and big.json()["field"] == "image" and "MiB" in big.json()["detail"]
    wide = PIL.Image.new("L", (4000, 4000))  # compresses to a few kB, decodes to 16 M pixels
    huge = client.post("/api/uploads", json={"image": data_url(wide)})
    assert huge.status_code == 413 and "4000x4000" in huge.json()["detail"]
    whole_body = client.post("/api/jobs", content=b"{" + b" " * (Limits(max_upload=64 * 1024).max_body + 10) + b"}",
                             headers={"Content-Type": "application/json"})
    assert whole_body.status_code == 413


def test_malformed_bodies(client):
    assert client.post("/api/jobs", content=b"{not json", headers={"Content-Type": "application/json"}).json() == {
        "detail": "the request body is not valid JSON: Expecting property name enclosed in double quotes: line 1 "
                  "column 2 (char 1)", "field": None}
    wrong_type = client.post("/api/jobs", content=b"prompt=a", headers={"Content-Type": "text/plain"})
    assert wrong_type.status_code == 415 and wrong_type.json()["field"] == "Content-Type"
    listed = client.post("/api/jobs", json=["a", "b"])
    assert listed.status_code == 422 and "JSON object" in listed.json()["detail"]


def test_unknown_jobs_and_pictures(client):
    assert client.get("/api/jobs/" + "f" * 32).status_code == 404
    assert client.get("/api/jobs/../../etc/passwd").status_code == 404
    assert client.get("/api/jobs?limit=0").json()["field"] == "limit"
    assert client.get("/api/jobs?state=lost").json()["field"] == "state"
    job = client.post("/api/jobs", json={"prompt": "a red circle on a blue background"}).json()
    early = client.get(f"/api/jobs/{job['id']}/images/0")
    assert early.status_code == 409 and "queued" in early.json()["detail"]
    assert client.get(f"/api/jobs/{job['id']}/images/x").json()["field"] == "n"


def test_the_queue_has_a_limit_per_caller(client):
    for seed in range(3):
        assert client.post("/api/jobs", json={"prompt": "a red circle on a blue background", "seed": seed}
                           ).status_code == 202
    refused = client.post("/api/jobs", json={"prompt": "a red circle on a blue background"})
    assert refused.status_code == 429 and "3 unfinished jobs" in refused.json()["detail"]


def test_mask_and_inputs_are_checked_before_queueing(client):
    ok = client.post("/api/jobs", json={"task": "inpaint", "prompt": "a white square on a blue background",
                                        "image": CIRCLE, "mask": data_url(right_half_mask()), "seed": 1})
    assert ok.status_code == 202
    assert ok.json()["request"]["mask"].startswith("upload:")
    assert ok.json()["warnings"] == []
    noted = client.post("/api/jobs", json={"prompt": "a purple unicorn", "seed": 1})
    assert noted.status_code == 202 and "does not know 'purple'" in noted.json()["warnings"][0]
