"""Fit and adaptation jobs: submission, cancellation, and the queue that runs them.

On SQLite (one process) the queue is a thread of this process (service/thread_queue.py); on
PostgreSQL it is the worker pool's queue (service/postgres_queue.py), which every replica writes to
and every worker claims from. Uploaded images are written under MODELS_DIR/.uploads/<job id>/
before the job record exists and removed when the job ends, so a restart can re-run queued jobs and
never finds a job without its images.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Protocol

from sqlalchemy import Connection

from patchshift.core.common.fileio import fsync_dir, fsync_file
from patchshift.service.http_errors import NotFound, Unavailable
from patchshift.service.job_runner import SOURCE_PREFIX, JobRunner, Task
from patchshift.service.job_store import CANCELLED, QUEUED, RUNNING, Job, JobStore
from patchshift.service.lifecycle import Lifecycle
from patchshift.service.postgres_queue import PostgresQueue
from patchshift.service.prometheus import ServiceMetrics
from patchshift.service.thread_queue import ThreadQueue

log = logging.getLogger("patchshift.service")
# reads of a job being cancelled while it changes hands (queued -> running -> queued again)
CANCEL_ATTEMPTS = 5


class JobQueue(Protocol):
    shared: bool  # jobs queued here may run in another process

    def start(self) -> None: ...
    def stop(self, timeout: float = ...) -> None: ...
    def alive(self) -> bool: ...
    def enqueue(self, connection: Connection, job: Job) -> int | None: ...
    def queued(self, job: Job) -> None: ...
    def withdraw(self, job: Job) -> None: ...
    def can_abort(self, job: Job) -> bool: ...
    def abort(self, job: Job) -> None: ...


class Worker:
    def __init__(
        self,
        jobs: JobStore,
        uploads,
        metrics: ServiceMetrics,
        tasks: dict[str, Task],
        lifecycle: Lifecycle,
        runs_jobs: bool = True,
        lease: float = 30.0,
    ) -> None:
        self.jobs = jobs
        # False on a scoring replica (PATCHSHIFT_RUN_JOBS=0): other processes run the jobs
        self.runs_jobs = runs_jobs
        self.lifecycle = lifecycle
        self.uploads = uploads
        self.metrics = metrics
        self.runner = JobRunner(jobs, uploads, metrics, tasks)
        self.queue: JobQueue = (
            PostgresQueue(jobs.engine, self.runner, lifecycle.store, runs_jobs, lease)
            if jobs.engine.dialect.name == "postgresql"
            else ThreadQueue(self.runner, runs_jobs)
        )

    @property
    def current(self) -> str | None:
        return self.runner.current

    @property
    def accepts_jobs(self) -> bool:
        """Whether jobs submitted here will run: this process runs them, or a pool shares them."""
        return self.runs_jobs or self.queue.shared

    def start(self) -> None:
        self.queue.start()

    def stop(self, timeout: float = 5.0) -> None:
        self.queue.stop(timeout)

    def alive(self) -> bool:
        return self.queue.alive()

    # submission and cancellation
    def require_jobs(self) -> None:
        """503 where nothing would run a job: before reading a request's images, and at submit."""
        if not self.accepts_jobs:
            raise Unavailable(
                "this replica runs no jobs (PATCHSHIFT_RUN_JOBS=0) and its database is not "
                "shared with workers (SQLite): send fit and adaptation requests to the replica "
                "that runs jobs"
            )

    def submit(
        self,
        kind: str,
        model: str,
        params: dict,
        files: Sequence[tuple[str, bytes]],
        source_files: Sequence[tuple[str, bytes]] = (),
    ) -> Job:
        """Store the images, then the record and its queue entry; one unfinished job per model
        (else 409)."""
        self.require_jobs()
        with self.lifecycle.job_slot(model, "submit it again"):
            job_id = os.urandom(16).hex()
            self._write_uploads(job_id, files, source_files)
            os.rename(
                self.uploads / f".{job_id}", self.uploads / job_id
            )  # a crash before the record: removed later
            counts = {
                "n_images": len(files),
                **({"n_source_images": len(source_files)} if source_files else {}),
            }
            job = self.jobs.create(
                kind, model, {**params, **counts}, job_id=job_id, enqueue=self.queue.enqueue
            )
            self.queue.queued(job)
        self.runner.update_depth()
        log.info("job %s queued: %s of %s with %d images", job.id, kind, model, len(files))
        return job

    def cancel(self, job_id: str) -> Job:
        job = self.jobs.get(job_id)
        if job is None:
            raise NotFound(f"no job {job_id!r}")
        if job.status == RUNNING and not self.queue.can_abort(job):
            raise Unavailable(
                "this replica runs no jobs (PATCHSHIFT_RUN_JOBS=0): cancel a running job on the "
                "replica that runs it"
            )
        # The job may change hands meanwhile (a worker starts it; the sweep queues a dead worker's
        # job again): follow it until the cancel lands on the state it is in.
        for _ in range(CANCEL_ATTEMPTS):
            if job.status == QUEUED and self.jobs.cancel_queued(
                job_id, "cancelled by request before it started"
            ):
                self.metrics.jobs.labels(job.kind, CANCELLED).inc()
                self.queue.withdraw(job)
                self.runner.discard_uploads_if_ended(job_id)
                break
            if job.status == RUNNING:
                self.queue.abort(job)
            now = self.jobs.get(job_id)
            if now.status not in (QUEUED, RUNNING) or (
                now.status == RUNNING and job.status == RUNNING and now.queue_id == job.queue_id
            ):
                break  # ended, or still running on the entry the abort reached
            job = now
        self.runner.update_depth()
        return self.jobs.get(job_id)

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
