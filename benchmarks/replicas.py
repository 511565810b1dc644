"""Scale-out on one machine: scoring throughput with 1, 2 and 4 scoring replicas (`patchshift
serve`, PATCHSHIFT_RUN_JOBS=0) on one PostgreSQL database and one model store, job pickup delay
of the worker pool (`patchshift worker`), and the lag of an activation reaching every replica.

    python -m benchmarks.replicas [--replicas 1 2 4] [--clients 4] [--duration 30]
        [--postgres postgresql://postgres@127.0.0.1:5432/test]

The product is the sample screws (docs/sample/screws, 576 x 224 px), fitted once into a fresh
store; a fresh database is created on the server and dropped afterwards. Each configuration gets
the machine's cores divided among its replicas (OMP_NUM_THREADS); clients send batches of 4 images
round-robin over the replicas. Writes benchmarks/results/replicas.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from contextlib import ExitStack, contextmanager
from pathlib import Path

from .helpers import RESULTS, machine, markdown
from .load import drive, free_port, wait_ready

SAMPLE = Path(__file__).resolve().parents[1] / "docs" / "sample" / "screws"


class Process:
    """A `patchshift serve` or `patchshift worker` process on loopback."""

    def __init__(self, command: str, env: dict, log: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.command, self.log = command, log
        self.process = subprocess.Popen(
            [sys.executable, "-m", "patchshift.service.cli", command, "--port", str(self.port)],
            env={**os.environ, **env},
            stdout=open(log, "ab"),
            stderr=subprocess.STDOUT,
        )

    def wait_ready(self, timeout: float = 180) -> None:
        probe = "/readyz" if self.command == "serve" else "/metrics"  # a worker: once it claims
        wait_ready(self.url, self.process, timeout, probe)

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()


@contextmanager
def database(admin_url: str):
    import psycopg

    name = f"patchshift_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin_url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
        try:
            base = admin_url.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://")
            yield f"{base}/{name}"
        finally:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def fit_store(models: Path) -> None:
    from patchshift.core.artifact import save_model
    from patchshift.core.engine.model_config import ModelConfig
    from patchshift.core.engine.patchcore import fit

    model = fit(
        sorted((SAMPLE / "train/good").glob("*.jpg")),
        ModelConfig(image_size=(224, 576)),
        device="cpu",
    )
    save_model(model, models / "screws" / "v1")
    (models / "screws" / "ACTIVE").write_text("v1\n")


def activation_lags(urls: list[str], n: int = 20) -> list[float]:
    """Seconds from an activation on the first replica until every replica serves it."""
    import httpx

    lags = []
    with httpx.Client(timeout=30) as http:
        for i in range(n):
            version = ("v1", "v2")[i % 2]
            sent = time.perf_counter()
            assert (
                http.post(
                    f"{urls[i % len(urls)]}/v1/models/screws/versions/{version}/activate"
                ).status_code
                == 200
            )
            waiting = set(urls)
            while waiting:
                waiting = {
                    u
                    for u in waiting
                    if http.get(u + "/readyz").json()["serving"].get("screws") != version
                }
                time.sleep(0.01)
            lags.append(time.perf_counter() - sent)
    return lags


def pickup_delays(url: str, files: list, n: int) -> list[float]:
    """Seconds from submission to a worker starting each of `n` adaptation jobs (one at a time)."""
    from datetime import datetime

    import httpx

    delays = []
    with httpx.Client(base_url=url, timeout=120) as http:
        for _ in range(n):
            answer = http.post(
                "/v1/models/screws/adapt",
                files=[("files", f) for f in files],
                data={"activate": "false"},
            )
            assert answer.status_code == 202, answer.text
            job = http.get(f"/v1/jobs/{answer.json()['job_id']}", params={"wait": 300}).json()
            assert job["status"] == "succeeded", job
            delays.append(
                (
                    datetime.fromisoformat(job["started"]) - datetime.fromisoformat(job["created"])
                ).total_seconds()
            )
    return delays


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.replicas",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--replicas", type=int, nargs="*", default=[1, 2, 4])
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--duration", type=float, default=30.0)
    parser.add_argument("--jobs", type=int, default=5, help="adaptation jobs for the pickup delay")
    parser.add_argument("--postgres", default="postgresql://postgres@127.0.0.1:5432/test")
    parser.add_argument("--out", default=str(RESULTS / "replicas.json"))
    args = parser.parse_args(argv)

    scored = [
        (p.name, p.read_bytes(), "image/jpeg")
        for p in sorted((SAMPLE / "new-lighting/test").glob("*/*.jpg"))
    ]
    adaptation = [
        (p.name, p.read_bytes(), "image/jpeg")
        for p in sorted((SAMPLE / "new-lighting/batch").glob("*.jpg"))[:40]
    ]
    cores = os.cpu_count() or 1
    rows = []
    with tempfile.TemporaryDirectory() as folder, database(args.postgres) as url:
        models = Path(folder) / "models"
        fit_store(models)
        for count in args.replicas:
            env = {
                "PATCHSHIFT_MODELS_DIR": str(models),
                "PATCHSHIFT_DATABASE_URL": url,
                "PATCHSHIFT_DEVICE": "cpu",
                "OMP_NUM_THREADS": str(max(1, cores // count)),
            }
            with ExitStack() as stack:
                scorers = []
                for i in range(count):
                    log = Path(folder) / f"scorer{count}-{i}.log"
                    process = Process("serve", {**env, "PATCHSHIFT_RUN_JOBS": "0"}, log)
                    stack.callback(process.stop)
                    scorers.append(process)
                worker = Process("worker", env, Path(folder) / f"worker{count}.log")
                stack.callback(worker.stop)
                for process in [*scorers, worker]:
                    process.wait_ready()
                urls = [s.url for s in scorers]
                load = drive(urls, "screws", scored, args.clients, 4, args.duration, False)
                delays = pickup_delays(urls[0], adaptation, args.jobs if count == 1 else 1)
                lags = activation_lags(urls)
            row = {
                "replicas": count,
                "omp_threads": max(1, cores // count),
                **load,
                "pickup_s": statistics.median(delays),
                "lag_p50_s": statistics.median(lags),
                "lag_max_s": max(lags),
            }
            rows.append(row)
            print(row, flush=True)
    table = markdown(
        rows,
        [
            ("replicas", "scoring replicas", ""),
            ("omp_threads", "threads each", ""),
            ("images_per_s", "images/s", ".1f"),
            ("p50_ms", "p50 ms (4 images)", ".0f"),
            ("p95_ms", "p95 ms", ".0f"),
            ("errors", "failed requests", ""),
            ("pickup_s", "job pickup s (median)", ".3f"),
            ("lag_p50_s", "activation lag p50 s", ".3f"),
            ("lag_max_s", "activation lag max s", ".3f"),
        ],
    )
    print(f"\n{machine()}, {args.clients} clients, {args.duration:g} s each\n\n{table}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": machine(), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
