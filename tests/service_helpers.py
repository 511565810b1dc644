"""Start the real service with uvicorn on 127.0.0.1 (a free port) in a child process and talk HTTP
to it."""

from __future__ import annotations

import io
import os
import signal
import socket
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import httpx
import numpy as np
from PIL import Image


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(
        self,
        models_dir: Path,
        env: dict[str, str] | None = None,
        log: Path | None = None,
        command: str = "serve",
    ) -> None:
        self.models_dir = models_dir
        self.env = env or {}
        self.command = command  # serve, or worker (its port serves /metrics only)
        self.log = log or models_dir.parent / f"{command}.log"
        self.port = free_port()
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 90) -> Server:
        return self.launch().wait_ready(timeout)

    def launch(self) -> Server:
        """Start the process without waiting for it (several start side by side)."""
        env = {
            **os.environ,
            "PATCHSHIFT_MODELS_DIR": str(self.models_dir),
            "PATCHSHIFT_DEVICE": "cpu",
            "OMP_NUM_THREADS": "2",
            **self.env,
        }
        handle = open(self.log, "ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "patchshift.service.cli", self.command]
            + ["--port", str(self.port)],
            env=env,
            stdout=handle,
            stderr=subprocess.STDOUT,
        )
        return self

    def wait_ready(self, timeout: float = 90) -> Server:
        assert self.process is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"server exited with {self.process.returncode}:\n{self.log.read_text()[-3000:]}"
                )
            try:
                # /healthz answers once start-up (loading every model) is done; readiness is the
                # tests' to check. A worker's /metrics answers once it claims jobs.
                probe = "/healthz" if self.command == "serve" else "/metrics"
                if httpx.get(self.url + probe, timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError("server did not become ready:\n" + self.log.read_text()[-3000:])

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def kill9(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    def client(self, key: str | None = None, timeout: float = 120) -> httpx.Client:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=timeout)


def png_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def files_field(items: list[tuple[str, bytes]]) -> list[tuple[str, tuple[str, bytes, str]]]:
    return [("files", (name, data, "application/octet-stream")) for name, data in items]


FINISHED = ("succeeded", "failed", "cancelled")


def wait_job(client, job_id: str, timeout: float = 300, until: tuple[str, ...] = FINISHED) -> dict:
    """The job once its status is one of `until`: the server's long poll waits for a job to end;
    for another status (e.g. running) the job is read until it gets there."""
    deadline = time.monotonic() + timeout
    long_poll = set(until) <= set(FINISHED)
    while True:
        # a long poll never outlasts the client's own read timeout
        longest = min(600.0, max((client.timeout.read or 600.0) - 5.0, 1.0))
        wait = min(max(deadline - time.monotonic(), 0.0), longest) if long_poll else 0
        job = client.get(f"/v1/jobs/{job_id}", params={"wait": wait}).json()
        if job["status"] in until:
            return job
        if time.monotonic() >= deadline:
            raise AssertionError(f"job {job_id} still {job['status']} after {timeout} s")
        time.sleep(0.05)


def worker_and_lifecycle(folder: Path, tasks: dict):
    """A job worker over a fresh job store and model store in `folder`, with its lifecycle."""
    import torch

    from patchshift.service.activation_log import ActivationLog
    from patchshift.service.job_store import JobStore
    from patchshift.service.lifecycle import Lifecycle
    from patchshift.service.prometheus import ServiceMetrics
    from patchshift.service.serving import Serving
    from patchshift.service.store import ModelStore
    from patchshift.service.worker import Worker

    jobs, metrics = JobStore.open(folder / "jobs.sqlite"), ServiceMetrics()
    store, log = ModelStore(folder), ActivationLog(jobs.engine)
    lifecycle = Lifecycle(store, jobs, Serving(store, metrics, torch.device("cpu")), metrics, log)
    return Worker(jobs, folder / "uploads", metrics, tasks, lifecycle), lifecycle


def darkened(items: list[tuple[str, bytes]], factor: float = 0.45) -> list[tuple[str, bytes]]:
    """The same images under a darker light (PNG)."""
    out = []
    for name, data in items:
        rgb = np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).astype(np.float32)
        out.append((f"dark-{name}", png_bytes((rgb * factor).astype(np.uint8))))
    return out


def named_bytes(paths: list[Path]) -> list[tuple[str, bytes]]:
    """(file name, content) of each path: what an upload sends."""
    return [(p.name, p.read_bytes()) for p in paths]


def store_state(models: Path, model: str = "widget") -> tuple[list[str], str]:
    """(the model's version folders, its ACTIVE pointer) as they are on disk."""
    folder = models / model
    active = folder / "ACTIVE"
    return sorted(p.name for p in folder.iterdir() if p.is_dir()), (
        active.read_text() if active.exists() else ""
    )


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height and whose data is tiny (a decompression-bomb
    shape)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + chunk(b"IEND", b"")
    )
