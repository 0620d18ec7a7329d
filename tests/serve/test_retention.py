"""Finished jobs leave the server: their submitter deletes them (``DELETE /api/jobs/ID?remove=true``), or with
``sfumato serve --keep-days N`` they go N days after they ended, with their pictures and the uploaded pictures
no remaining job uses. The queue is the real SQLite file; "N days ago" is written into it, as time would."""

from __future__ import annotations

import sqlite3

import pytest

from .helpers import FAST, data_url, disc, wait_for

JOB = {"prompt": "a green square on a black background", **FAST}
DAY = 86400


def _age(data, job_id: str, days: float) -> None:
    """Make a finished job (and the uploads) look ``days`` older, as the clock would."""
    with sqlite3.connect(data / "sfumato.sqlite3") as db:
        db.execute("UPDATE jobs SET created=created-?, finished=finished-? WHERE id=?", (days * DAY, days * DAY, job_id))
        db.execute("UPDATE uploads SET created=created-?", (days * DAY,))


def test_a_client_deletes_its_finished_job_and_its_pictures(make_app, tmp_path):
    data = tmp_path / "data"
    client = make_app(data=data, start_worker=True, headers={"X-Sfumato-Client": "alice"})
    job = wait_for(client, client.post("/api/jobs", json={**JOB, "seed": 1, "num": 2}).json()["id"])
    assert job["state"] == "done" and (data / "results" / job["id"] / "1.png").is_file()
    for value in ("maybe", "yes"):
        response = client.delete(f"/api/jobs/{job['id']}?remove={value}")
        assert response.status_code == 422 and response.json()["field"] == "remove", response.text
    other = client.delete(f"/api/jobs/{job['id']}?remove=true", headers={"X-Sfumato-Client": "mallory"})
    assert other.status_code == 403 and "only its submitter can remove it" in other.json()["detail"]
    cancel = client.delete(f"/api/jobs/{job['id']}")  # without remove: cancelling, which a finished job refuses
    assert cancel.status_code == 409 and "nothing to cancel" in cancel.json()["detail"]

    response = client.delete(f"/api/jobs/{job['id']}?remove=true")
    assert response.status_code == 200 and response.json() == {"id": job["id"], "state": "removed"}
    assert client.get(f"/api/jobs/{job['id']}").status_code == 404
    assert client.get(job["images"][0]["url"]).status_code == 404
    assert not (data / "results" / job["id"]).exists()
    assert client.get("/api/jobs").json()["jobs"] == []
    assert client.delete(f"/api/jobs/{job['id']}?remove=true").status_code == 404


def test_an_unfinished_job_is_cancelled_before_it_can_be_removed(make_app):
    client = make_app()  # no worker: the job stays queued
    job_id = client.post("/api/jobs", json=JOB).json()["id"]
    response = client.delete(f"/api/jobs/{job_id}?remove=true")
    assert response.status_code == 409 and "cancel it first" in response.json()["detail"], response.text
    assert client.delete(f"/api/jobs/{job_id}").json()["state"] == "cancelled"
    assert client.delete(f"/api/jobs/{job_id}?remove=1").json()["state"] == "removed"


def test_keep_days_deletes_old_jobs_their_pictures_and_unused_uploads(make_app, tmp_path):
    data = tmp_path / "data"
    client = make_app(data=data, start_worker=True, keep_days=2)
    start = client.post("/api/uploads", json={"image": data_url(disc())}).json()["ref"]
    kept_start = client.post("/api/uploads", json={"image": data_url(disc(colour=(255, 255, 0)))}).json()["ref"]
    old = wait_for(client, client.post("/api/jobs", json={**JOB, "task": "image2image", "image": start,
                                                          "strength": 0.7}).json()["id"])
    recent = wait_for(client, client.post("/api/jobs", json={**JOB, "task": "image2image", "image": kept_start,
                                                             "strength": 0.7}).json()["id"])
    assert old["state"] == recent["state"] == "done"
    uploads = data / "uploads"
    assert len(list(uploads.glob("*.png"))) == 2
    _age(data, old["id"], 3)  # ended 3 days ago; the other one 1 day ago
    _age(data, recent["id"], 1)
    (data / "results" / ("0" * 32)).mkdir()  # a folder whose job is gone (a stop between rows and files)
    server = client.app.state.server

    assert server.sweep() == {"jobs": 1, "uploads": 1, "leftovers": 1}
    assert client.get(f"/api/jobs/{old['id']}").status_code == 404 and not (data / "results" / old["id"]).exists()
    assert client.get(f"/api/jobs/{recent['id']}").json()["state"] == "done"
    assert (data / "results" / recent["id"] / "0.png").is_file()
    assert [p.name for p in uploads.glob("*.png")] == [kept_start.split(":", 1)[1] + ".png"]  # its job names it
    assert not (data / "results" / ("0" * 32)).exists()
    # the kept job is still whole: it can be made again from its record
    again = wait_for(client, client.post("/api/jobs", json={"reproduce": recent["images"][0]["ref"]}).json()["id"])
    assert again["state"] == "done" and again["result"]["reproduced"]["identical"] is True, again
    assert server.sweep() == {"jobs": 0, "uploads": 0, "leftovers": 0}

    # sent again, an upload counts from then: a job may still name it
    _age(data, recent["id"], 5)
    ref = client.post("/api/uploads", json={"image": data_url(disc(colour=(255, 255, 0)))}).json()["ref"]
    assert ref == kept_start
    assert server.sweep() == {"jobs": 1, "uploads": 0, "leftovers": 0}
    assert (uploads / (kept_start.split(":", 1)[1] + ".png")).is_file()


def test_keep_days_applies_at_start_up_and_is_checked(make_app, tmp_path):
    data = tmp_path / "data"
    first = make_app(data=data, start_worker=True)  # no keep_days: nothing is ever deleted
    job = wait_for(first, first.post("/api/jobs", json=JOB).json()["id"])
    _age(data, job["id"], 400)
    assert first.app.state.server.sweep() == {"jobs": 0, "uploads": 0, "leftovers": 0}
    first.__exit__(None, None, None)
    second = make_app(data=data, keep_days=30)  # at start-up
    assert second.get(f"/api/jobs/{job['id']}").status_code == 404
    assert not (data / "results" / job["id"]).exists()

    from sfumato.cli.errors import UsageError
    from sfumato.serve.config import ServeConfig

    for days in (0, -1, float("inf"), float("nan")):
        with pytest.raises(UsageError, match="--keep-days must be a number of days above 0"):
            ServeConfig(data=tmp_path, keep_days=days).check()


def test_an_idempotency_key_makes_a_retried_submission_return_the_same_job(make_app, tmp_path):
    """A client that sends POST /api/jobs again after a lost answer (with the same Idempotency-Key) gets the job
    its first request made, not a second one; the key is the caller's own, and bound to that request."""
    data = tmp_path / "data"
    alice = make_app(data=data, headers={"X-Sfumato-Client": "alice"})  # no worker: jobs stay queued
    key = {"Idempotency-Key": "order-7f3a"}
    first = alice.post("/api/jobs", json={**JOB, "seed": 5}, headers=key)
    assert first.status_code == 202 and "replayed" not in first.json(), first.text
    again = alice.post("/api/jobs", json={**JOB, "seed": 5}, headers=key)
    assert again.status_code == 200 and again.json()["id"] == first.json()["id"] and again.json()["replayed"] is True
    assert len(alice.get("/api/jobs").json()["jobs"]) == 1
    other = alice.post("/api/jobs", json={**JOB, "seed": 6}, headers=key)
    assert other.status_code == 422 and other.json()["field"] == "Idempotency-Key", other.text
    assert "sent before with another request" in other.json()["detail"]
    bob = alice.post("/api/jobs", json={**JOB, "seed": 5}, headers={**key, "X-Sfumato-Client": "bob"})
    assert bob.status_code == 202 and bob.json()["id"] != first.json()["id"]  # keys are per caller
    for bad in ("", "x" * 201, "tab\there"):
        response = alice.post("/api/jobs", json=JOB, headers={"Idempotency-Key": bad})
        assert response.status_code == 422 and response.json()["field"] == "Idempotency-Key", (bad, response.text)
    # the key outlives a restart (it is in the queue's database); once the job is removed, it may be used again
    alice.__exit__(None, None, None)
    alice = make_app(data=data, headers={"X-Sfumato-Client": "alice"})
    assert alice.post("/api/jobs", json={**JOB, "seed": 5}, headers=key).json()["id"] == first.json()["id"]
    alice.delete(f"/api/jobs/{first.json()['id']}")
    assert alice.delete(f"/api/jobs/{first.json()['id']}?remove=true").status_code == 200
    fresh = alice.post("/api/jobs", json={**JOB, "seed": 6}, headers=key)
    assert fresh.status_code == 202 and fresh.json()["id"] != first.json()["id"]
