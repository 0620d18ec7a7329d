"""Load and restart check for `sfumato serve` (a script, not collected by pytest; loopback only, bounded).

    .venv/bin/python tests/serve/load_restart.py [--jobs 200] [--clients 8] [--kills 2] [--cli-sample 10]

Starts `sfumato serve` on a free loopback port with a fresh --data folder; CLIENTS threads submit JOBS
text-to-image jobs of the built-in model between them (each client its own X-Sfumato-Client), then follow
them; while they run, the server is killed with SIGKILL KILLS times (when a share of the jobs is done, and
with a job running) and started again on the same folder. At the end every job must be done exactly once
(or failed with a reason): no job lost, no picture twice, every PNG whole and carrying its record, no
half-written file left. It prints the throughput (pictures per minute, restarts included) and the p50 / p95
latency (submitted -> done), and the same for a sample of the jobs run one by one through `sfumato generate`
(each a new process, as a script would call it). Exit status 0 when every check holds.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import PIL.Image

COLOURS = ("red", "green", "blue", "yellow", "white", "black")
SHAPES = ("circle", "square", "triangle")


def job(number: int, steps: int, prior_steps: int) -> dict:
    colour, shape = COLOURS[number % 6], SHAPES[number // 6 % 3]
    background = COLOURS[(number + 3) % 6]
    return {"task": "text2image", "prompt": f"a {colour} {shape} on a {background} background", "seed": number,
            "steps": steps, "prior_steps": prior_steps}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Server:
    def __init__(self, data: Path, port: int):
        self.data, self.port, self.url = data, port, f"http://127.0.0.1:{port}"
        self.process: subprocess.Popen | None = None
        self.log = open(data.parent / "serve.log", "a")

    def start(self) -> float:
        started = time.monotonic()
        environment = {k: v for k, v in os.environ.items() if k != "SFUMATO_BUILTIN_MODEL"}
        self.process = subprocess.Popen([sys.executable, "-m", "sfumato", "serve", "--port", str(self.port),
                                         "--data", str(self.data), "--max-queued", "100000"],
                                        env=environment, stdout=self.log, stderr=subprocess.STDOUT)
        while True:
            if self.process.poll() is not None:
                raise SystemExit(f"sfumato serve exited with {self.process.returncode}; see {self.log.name}")
            try:
                if httpx.get(f"{self.url}/api/server", timeout=2).status_code == 200:
                    return time.monotonic() - started
            except httpx.HTTPError:
                time.sleep(0.1)

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(30)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()


def call(method: str, url: str, client: str, **options):
    """One request, retried while the server is down (being restarted)."""
    deadline = time.monotonic() + 300
    while True:
        try:
            return httpx.request(method, url, headers={"X-Sfumato-Client": client}, timeout=60, **options)
        except httpx.HTTPError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--kills", type=int, default=2)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--prior-steps", type=int, default=2)
    parser.add_argument("--cli-sample", type=int, default=10, help="jobs also run through `sfumato generate`")
    parser.add_argument("--timeout", type=float, default=1800, help="give up after this many seconds")
    args = parser.parse_args()

    folder = Path(tempfile.mkdtemp(prefix="sfumato-load-"))
    server = Server(folder / "data", free_port())
    print(f"data: {folder}; server {server.url}", flush=True)
    print(f"server ready in {server.start():.1f} s", flush=True)
    numbers = {f"client-{c}": list(range(c, args.jobs, args.clients)) for c in range(args.clients)}
    submitted: dict[str, tuple[str, int]] = {}  # job id -> (client, job number)
    lock = threading.Lock()
    began = time.time()

    def submit_all(client: str) -> None:
        for number in numbers[client]:
            response = call("POST", f"{server.url}/api/jobs", client, json=job(number, args.steps, args.prior_steps))
            assert response.status_code == 202, response.text
            with lock:
                submitted[response.json()["id"]] = (client, number)

    threads = [threading.Thread(target=submit_all, args=(client,)) for client in numbers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    print(f"{len(submitted)} jobs submitted by {args.clients} clients in {time.time() - began:.1f} s", flush=True)

    def finished() -> dict[str, dict]:
        views = {}
        for client in numbers:
            listed = call("GET", f"{server.url}/api/jobs?limit=500", client).json()["jobs"]
            views.update({view["id"]: view for view in listed})
        return views

    kills, restarts = [], []
    deadline = time.monotonic() + args.timeout
    while True:
        views = finished()
        done = sum(view["state"] in ("done", "failed", "cancelled") for view in views.values())
        if done == len(submitted):
            break
        if time.monotonic() > deadline:
            print(f"TIMEOUT: {done} of {len(submitted)} jobs ended", flush=True)
            server.stop()
            return 1
        running = any(view["state"] == "running" for view in views.values())
        if len(kills) < args.kills and done >= len(submitted) * (len(kills) + 1) / (args.kills + 1) and running:
            server.kill()
            kills.append(done)
            restarts.append(server.start())
            recovered = httpx.get(f"{server.url}/api/server").json()["recovered"]
            print(f"SIGKILL with {done} jobs done; restarted in {restarts[-1]:.1f} s; recovered {recovered}",
                  flush=True)
        time.sleep(0.5)
    ended = time.time()

    # every job: done once, its picture whole, with its record; nothing half-written
    problems, latencies, pictures = [], [], 0
    for job_id, (client, number) in submitted.items():
        view = call("GET", f"{server.url}/api/jobs/{job_id}", client).json()
        if view["state"] != "done":
            problems.append(f"job {number}: {view['state']} {view.get('error')}")
            continue
        latencies.append(view["finished"] - view["created"])
        images = view["images"]
        files = sorted(p.name for p in (server.data / "results" / job_id).iterdir())
        if len(images) != 1 or files != ["0.png"]:
            problems.append(f"job {number}: {len(images)} pictures recorded, files {files}")
        for image in images:
            content = call("GET", server.url + image["url"], client).content
            try:
                with PIL.Image.open(io.BytesIO(content)) as picture:
                    picture.load()
                    record = json.loads(picture.text["sfumato"])
            except Exception as error:  # noqa: BLE001 - any failure to read it back is a corrupt picture
                problems.append(f"job {number}: corrupt PNG ({error})")
                continue
            if record["seed"] != number or record != image["record"]:
                problems.append(f"job {number}: the PNG's record is not the job's")
            pictures += 1
    partial = [str(p) for p in (server.data / "results").rglob("*.partial")]
    ids = [view["id"] for view in finished().values()]
    server.stop()

    minutes = (ended - began) / 60
    print(f"\nserver: {len(submitted)} jobs, {pictures} pictures in {ended - began:.1f} s with {len(kills)} SIGKILLs "
          f"(restarts took {', '.join(f'{r:.1f}' for r in restarts)} s): {pictures / minutes:.1f} pictures/min; "
          f"latency p50 {statistics.median(latencies):.1f} s, p95 {_p95(latencies):.1f} s (queued behind the "
          f"others: all were submitted at once)")
    print(f"lost: {len(submitted) - len(set(ids) & set(submitted))}, duplicated jobs: {len(ids) - len(set(ids))}, "
          f"problems: {len(problems)}, half-written files: {len(partial)}")
    for problem in problems[:20]:
        print("  " + problem)

    if args.cli_sample:
        seconds = []
        environment = {k: v for k, v in os.environ.items() if k != "SFUMATO_BUILTIN_MODEL"}
        for number in range(args.cli_sample):
            spec = job(number, args.steps, args.prior_steps)
            started = time.monotonic()
            subprocess.run([sys.executable, "-m", "sfumato", "generate", spec["prompt"], "--seed", str(number),
                            "--steps", str(args.steps), "--prior-steps", str(args.prior_steps), "-q",
                            "-o", str(folder / f"cli-{number}.png")], check=True, env=environment,
                           stdout=subprocess.DEVNULL)
            seconds.append(time.monotonic() - started)
        print(f"command line, one by one ({args.cli_sample} of the jobs): {60 / statistics.mean(seconds):.1f} "
              f"pictures/min; per job p50 {statistics.median(seconds):.1f} s, p95 {_p95(seconds):.1f} s")
    ok = not problems and not partial and len(set(ids)) == len(ids) and set(submitted) <= set(ids)
    print("OK" if ok else "FAILED")
    return 0 if ok else 1


def _p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(0.95 * (len(ordered) - 1))))]


if __name__ == "__main__":
    sys.exit(main())
