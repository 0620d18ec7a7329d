"""The durable job queue: one SQLite file (stdlib ``sqlite3``) under ``--data``, beside the result PNGs.

A job is a row: who submitted it, its request (as the API normalised it, with
its seed fixed, so running it again makes the same pictures), its state and
its error. A job's pictures are written (atomically, ``metadata.write_png``)
to ``results/JOB/N.png`` before the one transaction that records them and
marks the job done, so a job is either done with all its pictures or not
done; a job that was running when the server died is queued again at the
next start and runs from the start, overwriting the same file names, so it
never has its pictures twice. WAL journaling and ``synchronous=FULL``: a
committed state survives a killed process (and a power cut).

States: ``queued`` -> ``running`` -> ``done`` | ``failed`` | ``cancelled``
(``queued`` -> ``cancelled`` too). Finished jobs leave the store when their
submitter removes them or, with ``sfumato serve --keep-days``, once they are
that old (:meth:`Store.remove`, :meth:`Store.expired`); their rows go first, in
one transaction, then their files, so a crash in between leaves only files
that the next sweep deletes.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
import uuid
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 1
FINAL = ("done", "failed", "cancelled")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    owner TEXT NOT NULL,
    kind TEXT NOT NULL,
    request TEXT NOT NULL,
    summary TEXT NOT NULL,
    pictures INTEGER NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    error TEXT,
    error_field TEXT,
    result TEXT,
    created REAL NOT NULL,
    started REAL,
    finished REAL
);
CREATE INDEX IF NOT EXISTS jobs_by_state ON jobs (state, seq);
CREATE INDEX IF NOT EXISTS jobs_by_owner ON jobs (owner, seq);
CREATE TABLE IF NOT EXISTS images (
    job_id TEXT NOT NULL,
    n INTEGER NOT NULL,
    record TEXT NOT NULL,
    PRIMARY KEY (job_id, n)
);
CREATE TABLE IF NOT EXISTS idempotency (
    owner TEXT NOT NULL,
    key TEXT NOT NULL,
    job_id TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    PRIMARY KEY (owner, key)
);
CREATE TABLE IF NOT EXISTS uploads (
    digest TEXT PRIMARY KEY,
    file TEXT NOT NULL,
    created REAL NOT NULL
);
"""


class Store:
    """The queue and history in ``DATA/sfumato.sqlite3``; safe to use from several threads."""

    def __init__(self, path: Path):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None, timeout=30)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise RuntimeError(f"{path} was written by a newer sfumato (schema {version}); upgrade sfumato")
        self._db.executescript(_SCHEMA)
        self._db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _transaction(self):
        return _Transaction(self)

    # -------------------------------------------------------------------------------- jobs

    def recover(self, max_attempts: int) -> dict[str, int]:
        """After a restart: jobs that were running run again from the start (or end, when cancelled or
        when the server died in them ``max_attempts`` times)."""
        with self._transaction() as db:
            cancelled = db.execute("UPDATE jobs SET state='cancelled', finished=? WHERE state='running' AND "
                                   "cancel_requested=1", (time.time(),)).rowcount
            failed = db.execute("UPDATE jobs SET state='failed', finished=?, error=? WHERE state='running' AND "
                                "attempts>=?", (time.time(), f"the server stopped while running this job "
                                                              f"{max_attempts} times; it is not run again",
                                                max_attempts)).rowcount
            requeued = db.execute("UPDATE jobs SET state='queued', started=NULL WHERE state='running'").rowcount
        return {"requeued": requeued, "cancelled": cancelled, "failed": failed}

    def add(self, owner: str, kind: str, request: dict, summary: dict, pictures: int,
            key: tuple[str, str] | None = None) -> dict:
        """Queue a job. With ``key`` (an idempotency key and the request's fingerprint), a job the same owner
        submitted with that key before is returned instead, marked ``replayed`` (see :meth:`keyed`)."""
        job_id = uuid.uuid4().hex
        with self._transaction() as db:
            earlier = None
            if key is not None:
                row = db.execute("SELECT job_id FROM idempotency WHERE owner=? AND key=?", (owner, key[0])).fetchone()
                earlier = row[0] if row else None
                if earlier is None:
                    db.execute("INSERT INTO idempotency (owner, key, job_id, fingerprint) VALUES (?, ?, ?, ?)",
                               (owner, key[0], job_id, key[1]))
            if earlier is None:
                db.execute("INSERT INTO jobs (id, owner, kind, request, summary, pictures, state, created) "
                           "VALUES (?, ?, ?, ?, ?, ?, 'queued', ?)",
                           (job_id, owner, kind, json.dumps(request), json.dumps(summary), pictures, time.time()))
        job = self.get(earlier or job_id)
        if key is not None:
            job["replayed"] = earlier is not None  # another request with the key got there first
        return job

    def keyed(self, owner: str, key: str) -> tuple[str, str] | None:
        """(job id, request fingerprint) that ``owner`` submitted with idempotency key ``key``, if any."""
        with self._lock:
            row = self._db.execute("SELECT job_id, fingerprint FROM idempotency WHERE owner=? AND key=?",
                                   (owner, key)).fetchone()
        return (row[0], row[1]) if row else None

    def get(self, job_id: str) -> dict | None:
        with self._lock:
            row = self._db.execute("SELECT * FROM jobs WHERE id=?", (job_id,)).fetchone()
        return _job(row) if row else None

    def unfinished(self, owner: str) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM jobs WHERE owner=? AND state IN ('queued', 'running')",
                                    (owner,)).fetchone()[0]

    def list(self, owner: str, limit: int = 50, states: tuple[str, ...] | None = None) -> list[dict]:
        query, values = "SELECT * FROM jobs WHERE owner=?", [owner]
        if states:
            query += f" AND state IN ({','.join('?' * len(states))})"
            values += list(states)
        query += " ORDER BY seq DESC LIMIT ?"
        with self._lock:
            rows = self._db.execute(query, (*values, limit)).fetchall()
        return [_job(row) for row in rows]

    def position(self, job: dict) -> int | None:
        """1 for the next job to run, 0 for a running one, ``None`` for a finished one."""
        if job["state"] == "running":
            return 0
        if job["state"] != "queued":
            return None
        with self._lock:
            return 1 + self._db.execute("SELECT COUNT(*) FROM jobs WHERE state='queued' AND seq<?",
                                        (job["seq"],)).fetchone()[0]

    def counts(self) -> dict[str, int]:
        with self._lock:
            rows = self._db.execute("SELECT state, COUNT(*) FROM jobs GROUP BY state").fetchall()
        return {state: count for state, count in rows}

    def claim(self) -> dict | None:
        """The oldest queued job, now marked running."""
        with self._transaction() as db:
            row = db.execute("SELECT id FROM jobs WHERE state='queued' ORDER BY seq LIMIT 1").fetchone()
            if row is None:
                return None
            db.execute("UPDATE jobs SET state='running', attempts=attempts+1, started=? WHERE id=?",
                       (time.time(), row[0]))
        return self.get(row[0])

    def requeue(self, job_id: str) -> None:
        """A running job the server stopped on purpose (shutting down): it runs again, not counted as a try."""
        with self._transaction() as db:
            db.execute("UPDATE jobs SET state='queued', started=NULL, attempts=MAX(attempts-1, 0) "
                       "WHERE id=? AND state='running'", (job_id,))

    def finish(self, job_id: str, images: list[tuple[int, dict]], result: dict | None = None) -> None:
        """Record the pictures (already written) and mark the job done, in one transaction."""
        with self._transaction() as db:
            db.execute("DELETE FROM images WHERE job_id=?", (job_id,))
            db.executemany("INSERT INTO images (job_id, n, record) VALUES (?, ?, ?)",
                           [(job_id, n, json.dumps(record)) for n, record in images])
            db.execute("UPDATE jobs SET state='done', finished=?, result=? WHERE id=? AND state='running'",
                       (time.time(), json.dumps(result) if result else None, job_id))

    def fail(self, job_id: str, message: str, field: str | None = None) -> None:
        with self._transaction() as db:
            db.execute("UPDATE jobs SET state='failed', finished=?, error=?, error_field=? WHERE id=? "
                       "AND state='running'", (time.time(), message, field, job_id))

    def cancel(self, job_id: str) -> str:
        """Cancel a queued job now, or ask a running one to stop; returns the job's state afterwards."""
        with self._transaction() as db:
            db.execute("UPDATE jobs SET state='cancelled', finished=? WHERE id=? AND state='queued'",
                       (time.time(), job_id))
            db.execute("UPDATE jobs SET cancel_requested=1 WHERE id=? AND state='running'", (job_id,))
            return db.execute("SELECT state FROM jobs WHERE id=?", (job_id,)).fetchone()[0]

    def mark_cancelled(self, job_id: str) -> None:
        with self._transaction() as db:
            db.execute("UPDATE jobs SET state='cancelled', finished=? WHERE id=? AND state='running'",
                       (time.time(), job_id))

    def cancel_requested(self, job_id: str) -> bool:
        with self._lock:
            row = self._db.execute("SELECT cancel_requested FROM jobs WHERE id=?", (job_id,)).fetchone()
        return bool(row and row[0])

    def images(self, job_id: str) -> list[dict]:
        with self._lock:
            rows = self._db.execute("SELECT n, record FROM images WHERE job_id=? ORDER BY n", (job_id,)).fetchall()
        return [{"n": n, "record": json.loads(record)} for n, record in rows]

    def remove(self, job_ids: list[str]) -> list[str]:
        """Forget finished jobs and their pictures' records; returns the ids that were removed (unfinished ones
        stay)."""
        removed = []
        with self._transaction() as db:
            for job_id in job_ids:
                if db.execute(f"DELETE FROM jobs WHERE id=? AND state IN ({','.join('?' * len(FINAL))})",
                              (job_id, *FINAL)).rowcount:
                    db.execute("DELETE FROM images WHERE job_id=?", (job_id,))
                    db.execute("DELETE FROM idempotency WHERE job_id=?", (job_id,))
                    removed.append(job_id)
        return removed

    def expired(self, before: float) -> list[str]:
        """Ids of the jobs that finished before ``before`` (a time.time())."""
        with self._lock:
            rows = self._db.execute(f"SELECT id FROM jobs WHERE state IN ({','.join('?' * len(FINAL))}) AND "
                                    f"finished < ? ORDER BY seq", (*FINAL, before)).fetchall()
        return [row[0] for row in rows]

    def job_ids(self) -> set[str]:
        with self._lock:
            return {row[0] for row in self._db.execute("SELECT id FROM jobs").fetchall()}

    # -------------------------------------------------------------------------------- uploads

    def add_upload(self, digest: str, file: str, digests: list[str]) -> None:
        with self._transaction() as db:
            # stored again: its time is now, so that --keep-days counts from the last time a client sent it
            db.executemany("INSERT INTO uploads (digest, file, created) VALUES (?, ?, ?) "
                           "ON CONFLICT(digest) DO UPDATE SET created=excluded.created",
                           [(d, file, time.time()) for d in dict.fromkeys(digests)])

    def find_upload(self, digest: str) -> str | None:
        with self._lock:
            row = self._db.execute("SELECT file FROM uploads WHERE digest=?", (digest,)).fetchone()
        return row[0] if row else None

    def remove_unused_uploads(self, before: float) -> list[str]:
        """Forget the uploaded pictures stored before ``before`` that no job in the store names (by their
        digest, as requests and records do); returns their file names."""
        removed = []
        with self._transaction() as db:
            files = db.execute("SELECT file, MAX(created) FROM uploads GROUP BY file").fetchall()
            for file, created in files:
                digest = file[:-len(".png")]
                if created < before and db.execute("SELECT 1 FROM jobs WHERE instr(request, ?) > 0 LIMIT 1",
                                                   (digest,)).fetchone() is None:
                    db.execute("DELETE FROM uploads WHERE file=?", (file,))
                    removed.append(file)
        return removed


class _Transaction:
    def __init__(self, store: Store):
        self.store = store

    def __enter__(self) -> sqlite3.Connection:
        self.store._lock.acquire()
        self.store._db.execute("BEGIN IMMEDIATE")
        return self.store._db

    def __exit__(self, kind, value, traceback) -> None:
        try:
            self.store._db.execute("COMMIT" if kind is None else "ROLLBACK")
        finally:
            self.store._lock.release()


def _job(row: sqlite3.Row) -> dict[str, Any]:
    job = dict(row)
    for name in ("request", "summary", "result"):
        job[name] = json.loads(job[name]) if job[name] else None
    job["cancel_requested"] = bool(job["cancel_requested"])
    return job
