"""The in-process job worker: one background thread runs fit and adaptation jobs one at a time.

Uploaded images are written under MODELS_DIR/.uploads/<job id>/ before the job record exists and
removed when the job ends, so a restart can re-run queued jobs and never finds a job without its
images. Cancellation is cooperative: core checks the flag between steps.
"""

from __future__ import annotations

import logging
import os
import queue
import shutil
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from patchshift.core.common.errors import CancelledError, PatchshiftError
from patchshift.core.common.fileio import fsync_dir, fsync_file
from patchshift.service.http_errors import NotFound, Unavailable, redact_paths
from patchshift.service.job_store import (
    CANCELLED,
    FAILED,
    QUEUED,
    RUNNING,
    SUCCEEDED,
    Job,
    JobStore,
)
from patchshift.service.lifecycle import Lifecycle
from patchshift.service.prometheus import ServiceMetrics

log = logging.getLogger("patchshift.service")

SOURCE_PREFIX = "source-"  # uploads of the source domain (UDA) sit beside the job's images


@dataclass(frozen=True)
class JobInputs:
    """A job's stored uploads: the images it works on and, for UDA, normal images of the source
    domain."""

    images: list[Path]
    source_images: list[Path] = field(default_factory=list)


# A task gets (job, inputs, progress(fraction, stage), cancelled()) and returns (version, result).
Task = Callable[
    [Job, JobInputs, Callable[[float, str], None], Callable[[], bool]], tuple[str | None, dict]
]

# where each core stage sits in a job's overall progress (fit: features, coreset, threshold;
STAGES = {
    # BatchNorm adaptation: statistics, adapt (trained methods only), threshold; uda: uda)
    "features": (0.0, 0.6),
    "coreset": (0.6, 0.95),
    "threshold": (0.95, 1.0),
    "statistics": (0.0, 0.3),
    "adapt": (0.3, 0.95),
    "uda": (0.05, 0.95),
}


class Worker:
    def __init__(
        self,
        jobs: JobStore,
        uploads: Path,
        metrics: ServiceMetrics,
        tasks: dict[str, Task],
        lifecycle: Lifecycle,
        runs_jobs: bool = True,
    ) -> None:
        self.jobs = jobs
        # False on a scoring replica (PATCHSHIFT_RUN_JOBS=0): another replica runs the jobs
        self.runs_jobs = runs_jobs
        self.lifecycle = lifecycle
        self.uploads = uploads
        self.metrics = metrics
        self.tasks = tasks
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._cancel: dict[str, threading.Event] = {}
        self._thread = threading.Thread(target=self._run, name="patchshift-worker", daemon=True)
        self.current: str | None = None

    # lifecycle
    def start(self) -> None:
        if not self.runs_jobs:
            return  # the jobs, and their recovery after a crash, belong to the job replica
        interrupted, queued = self.jobs.recover()
        for job in interrupted:
            log.warning(
                "job %s (%s of %s) was interrupted by a restart; marked failed",
                job.id,
                job.kind,
                job.model,
            )
            self.metrics.jobs.labels(job.kind, FAILED).inc()
            self._discard_uploads(job.id)
        keep = {job.id for job in queued}
        self.uploads.mkdir(parents=True, exist_ok=True)
        for (
            leftover
        ) in self.uploads.iterdir():  # uploads of jobs that never got a record, or that ended
            if leftover.name not in keep:
                shutil.rmtree(leftover, ignore_errors=True)
        for job in queued:
            self._cancel[job.id] = threading.Event()
            self._queue.put(job.id)
        self._update_depth()
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        if not self.runs_jobs:
            return
        if self.current is not None:
            self._cancel.get(self.current, threading.Event()).set()
        self._queue.put(None)
        self._thread.join(timeout)

    def alive(self) -> bool:
        """The worker thread runs (a replica that runs no jobs needs none)."""
        return self._thread.is_alive() or not self.runs_jobs

    # submission and cancellation
    def require_jobs(self) -> None:
        """503 on a replica that runs no jobs: before reading a request's images, and at submit."""
        if not self.runs_jobs:
            raise Unavailable(
                "this replica runs no jobs (PATCHSHIFT_RUN_JOBS=0): send fit and adaptation "
                "requests to the replica that does"
            )

    def submit(
        self,
        kind: str,
        model: str,
        params: dict,
        files: Sequence[tuple[str, bytes]],
        source_files: Sequence[tuple[str, bytes]] = (),
    ) -> Job:
        """Store the images, then the record; one unfinished job per model (else 409)."""
        self.require_jobs()
        with self.lifecycle.job_slot(model, "submit it again"):
            job_id = os.urandom(16).hex()
            self._write_uploads(job_id, files, source_files)
            os.rename(
                self.uploads / f".{job_id}", self.uploads / job_id
            )  # a crash before the record: removed at start
            counts = {
                "n_images": len(files),
                **({"n_source_images": len(source_files)} if source_files else {}),
            }
            job = self.jobs.create(kind, model, {**params, **counts}, job_id=job_id)
            self._cancel[job.id] = threading.Event()
            self._queue.put(job.id)
        self._update_depth()
        log.info("job %s queued: %s of %s with %d images", job.id, kind, model, len(files))
        return job

    def cancel(self, job_id: str) -> Job:
        job = self.jobs.get(job_id)
        if job is None:
            raise NotFound(f"no job {job_id!r}")
        if job.status == RUNNING and not self.runs_jobs:
            raise Unavailable(
                "this replica runs no jobs (PATCHSHIFT_RUN_JOBS=0): cancel a running job on the "
                "replica that runs it"
            )
        if job.status == QUEUED and self.jobs.cancel_queued(
            job_id, "cancelled by request before it started"
        ):
            self.metrics.jobs.labels(job.kind, CANCELLED).inc()
            self._discard_uploads(job_id)
        elif (
            self.jobs.get(job_id).status == RUNNING
            and (flag := self._cancel.get(job_id)) is not None
        ):
            flag.set()  # also when the worker started it since the read above
        self._update_depth()
        return self.jobs.get(job_id)

    # internals
    def _write_uploads(
        self,
        job_id: str,
        files: Sequence[tuple[str, bytes]],
        source_files: Sequence[tuple[str, bytes]],
    ) -> None:
        staging = self.uploads / f".{job_id}"
        staging.mkdir(parents=True)
        for prefix, group in (("", files), (SOURCE_PREFIX, source_files)):
            for i, (_, data) in enumerate(group):
                path = staging / f"{prefix}{i:06d}.img"
                path.write_bytes(data)
                fsync_file(path)
        fsync_dir(staging)

    def _discard_uploads(self, job_id: str) -> None:
        shutil.rmtree(self.uploads / job_id, ignore_errors=True)

    def _update_depth(self) -> None:
        self.metrics.queue_depth.set(len(self.jobs.unfinished()))

    def _run(self) -> None:
        while True:
            job_id = self._queue.get()
            if job_id is None:
                return
            try:
                self._execute(job_id)
            except BaseException:  # the worker thread must survive anything a job does
                log.exception("job %s: unexpected failure in the worker", job_id)
                self.jobs.finish(
                    job_id, FAILED, error="internal error in the worker; see the service log"
                )
            finally:
                self.current = None
                self._cancel.pop(job_id, None)
                self._discard_uploads(job_id)
                self._update_depth()

    def _execute(self, job_id: str) -> None:
        if not self.jobs.start(job_id):
            return  # cancelled while queued
        job = self.jobs.get(job_id)
        self.current = job_id
        flag = self._cancel.setdefault(job_id, threading.Event())
        folder = self.uploads / job_id
        inputs = JobInputs(
            sorted(folder.glob("[0-9]*.img")), sorted(folder.glob(f"{SOURCE_PREFIX}*.img"))
        )
        last = [0.0]

        def progress(fraction: float, stage: str) -> None:
            if time.monotonic() - last[0] > 0.5 or fraction >= 1:
                last[0] = time.monotonic()
                self.jobs.progress(job_id, round(min(max(fraction, 0.0), 1.0), 4), stage)

        if job.started:
            waited = datetime.fromisoformat(job.started) - datetime.fromisoformat(job.created)
            self.metrics.job_pickup.labels(job.kind).observe(max(waited.total_seconds(), 0.0))
        started = time.perf_counter()
        status, error, version, result = FAILED, None, None, {}
        try:
            version, result = self.tasks[job.kind](job, inputs, progress, flag.is_set)
            status = SUCCEEDED
        except CancelledError:
            status, error = CANCELLED, "cancelled by request; no version was written"
        except PatchshiftError as exc:
            error = redact_paths(str(exc))
        except Exception as exc:
            log.exception("job %s failed", job_id)
            error = redact_paths(f"internal error ({type(exc).__name__}: {exc})")
        if not self.jobs.finish(job_id, status, error=error, result_version=version, result=result):
            log.error(
                "job %s ended %s but its record had already ended; version %s is not in any job "
                "result",
                job_id,
                status,
                version,
            )
        self.metrics.jobs.labels(job.kind, status).inc()
        self.metrics.job_seconds.labels(job.kind).observe(time.perf_counter() - started)
        log.info(
            "job %s (%s of %s) %s%s",
            job_id,
            job.kind,
            job.model,
            status,
            f": {error}" if error else "",
        )


def stage_progress(report: Callable[[float, str], None]) -> Callable[[str, int, int], None]:
    """Adapt core's (stage, done, total) callback to one overall fraction."""

    def progress(stage: str, done: int, total: int) -> None:
        low, high = STAGES.get(stage, (0.0, 1.0))
        report(low + (high - low) * (done / total if total else 1.0), stage)

    return progress
