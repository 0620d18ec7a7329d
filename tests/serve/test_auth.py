"""Who may use the server: loopback without a token, tokens everywhere else, jobs that belong to their
submitter, and no cross-site or rebinding requests on a loopback server."""

from __future__ import annotations

import base64

import pytest

from sfumato.cli import main
from sfumato.cli.errors import UsageError
from sfumato.serve.config import ServeConfig

ALICE, BOB = "alice-token-0123456789abcdef", "bob-token-0123456789abcdef"
JOB = {"prompt": "a red circle on a blue background", "seed": 1}


def basic(password: str, user: str = "sd-client") -> dict:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.20", "::", "example.org"])
def test_other_addresses_need_a_token(host, tmp_path):
    with pytest.raises(UsageError, match=f"--host {host} is not a loopback address.*--token"):
        ServeConfig(host=host, data=tmp_path).check()
    ServeConfig(host=host, data=tmp_path, tokens=[ALICE]).check()  # with a token it may


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "localhost"])
def test_loopback_needs_none(host, tmp_path):
    ServeConfig(host=host, data=tmp_path).check()


def test_the_command_refuses_before_loading_anything(capsys, monkeypatch):
    monkeypatch.delenv("SFUMATO_TOKEN", raising=False)
    assert main(["serve", "--host", "0.0.0.0", "--port", "7999"]) == 2
    assert "--host 0.0.0.0 is not a loopback address" in capsys.readouterr().err
    assert main(["serve", "--token", "short"]) == 2
    assert "at least 16 printable characters" in capsys.readouterr().err


def test_token_from_the_environment(monkeypatch):
    from sfumato.serve.config import tokens_from

    monkeypatch.setenv("SFUMATO_TOKEN", f"{ALICE}, {BOB}")
    assert tokens_from(None) == [ALICE, BOB]
    assert tokens_from(["given-token-0123456789"]) == ["given-token-0123456789"]


def test_every_request_needs_the_token(make_app):
    client = make_app(tokens=[ALICE, BOB])
    for method, path in (("GET", "/"), ("GET", "/api/jobs"), ("GET", "/api/models"), ("GET", "/static/app.js"),
                         ("POST", "/api/jobs"), ("GET", "/sdapi/v1/options"), ("GET", "/api/openapi.json")):
        response = client.request(method, path)
        assert response.status_code == 401, (method, path)
        assert response.json()["field"] == "Authorization"
        assert response.headers["www-authenticate"].startswith("Basic")  # browsers ask for it themselves
    wrong = client.get("/api/jobs", headers=bearer("not-" + ALICE))
    assert wrong.status_code == 401 and "a wrong token" in wrong.json()["detail"]
    assert client.get("/api/jobs", headers=bearer(ALICE)).status_code == 200
    assert client.get("/api/jobs", headers=basic(BOB)).status_code == 200  # an AUTOMATIC1111 client's --api-auth
    assert client.get("/api/jobs", headers=basic(ALICE, user="")).status_code == 200
    assert client.get("/api/jobs", headers={"Authorization": "Basic !!!"}).status_code == 401
    assert client.get("/", headers=bearer(ALICE)).status_code == 200


def test_jobs_belong_to_the_token_that_submitted_them(make_app):
    client = make_app(tokens=[ALICE, BOB])
    job = client.post("/api/jobs", json=JOB, headers=bearer(ALICE)).json()
    assert [j["id"] for j in client.get("/api/jobs", headers=basic(ALICE)).json()["jobs"]] == [job["id"]]
    assert client.get("/api/jobs", headers=bearer(BOB)).json()["jobs"] == []
    for method in ("GET", "DELETE"):
        refused = client.request(method, f"/api/jobs/{job['id']}", headers=bearer(BOB))
        assert refused.status_code == 403 and refused.json()["field"] == "id"
    assert client.post("/sdapi/v1/interrupt", headers=bearer(BOB)).json() == {"cancelled": []}
    assert client.get(f"/api/jobs/{job['id']}", headers=bearer(ALICE)).json()["state"] == "queued"
    cancelled = client.delete(f"/api/jobs/{job['id']}", headers=bearer(ALICE))
    assert cancelled.status_code == 200 and cancelled.json()["state"] == "cancelled"


def test_clients_of_one_token_are_told_apart(make_app):
    client = make_app(tokens=[ALICE])
    page = {**bearer(ALICE), "X-Sfumato-Client": "browser-1"}
    script = {**bearer(ALICE), "X-Sfumato-Client": "script-2"}
    job = client.post("/api/jobs", json=JOB, headers=page).json()
    assert client.delete(f"/api/jobs/{job['id']}", headers=script).status_code == 403
    assert client.get(f"/api/jobs/{job['id']}?client=browser-1", headers=bearer(ALICE)).status_code == 200
    bad = client.get("/api/jobs", headers={**bearer(ALICE), "X-Sfumato-Client": "../../x"})
    assert bad.status_code == 400 and bad.json()["field"] == "X-Sfumato-Client"


def test_a_loopback_server_answers_only_to_its_own_address(make_app):
    client = make_app()
    assert client.get("/api/jobs").status_code == 200
    rebound = client.get("/api/jobs", headers={"Host": "attacker.example:7860"})
    assert rebound.status_code == 403 and rebound.json()["field"] == "Host"
    assert client.get("/api/jobs", headers={"Host": "localhost:7860"}).status_code == 200
    cross_site = client.post("/api/jobs", json=JOB, headers={"Origin": "https://attacker.example"})
    assert cross_site.status_code == 403 and cross_site.json()["field"] == "Origin"
    same_site = client.post("/api/jobs", json=JOB, headers={"Origin": "http://127.0.0.1:7860"})
    assert same_site.status_code == 202
