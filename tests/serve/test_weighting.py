"""The prompt weighting syntax over HTTP: ``(word:1.3)``, ``(word)``, ``[word]`` are read by default (the record's
``weighting``: true), ``"weighting": false`` reads a prompt as plain text, and a malformed prompt is refused at
once with the field and the position of the mistake. The AUTOMATIC1111 endpoints keep weighting on, as A1111 does.
"""

from __future__ import annotations

import io

import httpx
import numpy as np
import PIL.Image
import pytest

from .helpers import FAST, wait_for

WEIGHTED = "a (red:1.3) circle on a [blue] background"


def pixels(content: bytes) -> np.ndarray:
    with PIL.Image.open(io.BytesIO(content)) as picture:
        return np.asarray(picture.convert("RGB")).copy()


@pytest.fixture
def client(make_app):
    return make_app()


@pytest.mark.parametrize("body, field, position", [
    ({"prompt": "a (red"}, "prompt", 2),
    ({"prompt": "a red)"}, "prompt", 5),
    ({"prompt": "a (red:much) circle"}, "prompt", None),
    ({"prompt": "a red circle", "negative_prompt": "x [y"}, "negative_prompt", 2),
    ({"chain": {"steps": [{"task": "text2image", "prompt": "a (red"}]}}, "prompt", 2),
])
def test_malformed_syntax_names_the_field_and_position(client, body, field, position):
    response = client.post("/api/jobs", json=body)
    assert response.status_code == 422, response.text
    answer = response.json()
    assert answer["field"] == field and "weighting: false" in answer["detail"], answer
    if position is not None:
        assert answer["position"] == position and f"at position {position}" in answer["detail"], answer


def test_weighting_is_a_true_or_false_field(client):
    response = client.post("/api/jobs", json={"prompt": "a (red", "weighting": False})
    assert response.status_code == 202, response.text
    assert response.json()["request"]["weighting"] is False
    for value in ("yes", 1, "true"):
        response = client.post("/api/jobs", json={"prompt": "a red circle", "weighting": value})
        assert response.status_code == 422 and response.json()["field"] == "weighting", response.text
        assert "weighting must be true or false" in response.json()["detail"]


def test_the_a1111_endpoints_read_the_syntax(client):
    response = client.post("/sdapi/v1/txt2img", json={"prompt": "a (red", "steps": 3})
    assert response.status_code == 422 and response.json()["field"] == "prompt", response.text
    assert response.json()["position"] == 2


def test_records_say_whether_prompts_were_weighted(api):
    made = {}
    for weighting in (None, False):
        body = {"prompt": WEIGHTED, "seed": 3, **FAST, **({} if weighting is None else {"weighting": weighting})}
        response = api.post("/api/jobs", json=body)
        assert response.status_code == 202, response.text
        job = wait_for(api, response.json()["id"])
        assert job["state"] == "done", job
        record = job["images"][0]["record"]
        assert record["prompt"] == WEIGHTED and record["weighting"] is (weighting is None)
        made[weighting] = pixels(api.get(job["images"][0]["url"]).content)
    assert not np.array_equal(made[None], made[False])  # the weights changed the picture


def test_the_page_mentions_the_syntax(live):
    page = httpx.get(live.url + "/", headers={"X-Sfumato-Client": "page"}).text
    assert 'id="weighting"' in page and "(word:1.3)" in page
