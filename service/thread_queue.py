"""The embedded job queue (SQLite, one process): a background thread runs jobs one at a time in
the order they were queued. Cancellation is cooperative: core checks the job's flag between
steps."""

from __future__ import annotations

import logging
import queue
import shutil
import threading

from sqlalchemy import Connection

from patchshift.service.job_runner import JobRunner
from patchshift.service.job_store import FAILED, Job

log = logging.getLogger("patchshift.service")


class ThreadQueue:
    shared = False  # only this process runs what it queues

    def __init__(self, runner: JobRunner, runs_jobs: bool) -> None:
        self.runner = runner
        self.runs_jobs = runs_jobs
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._cancel: dict[str, threading.Event] = {}
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="patchshift-worker", daemon=True)

    def start(self) -> None:
        if not self.runs_jobs:
            return
        jobs = self.runner.jobs
        interrupted, queued = jobs.recover()
        for job in interrupted:
            log.warning(
                "job %s (%s of %s) was interrupted by a restart; marked failed",
                job.id,
                job.kind,
                job.model,
            )
            self.runner.metrics.jobs.labels(job.kind, FAILED).inc()
        keep = {job.id for job in queued}
        uploads = self.runner.uploads
        uploads.mkdir(parents=True, exist_ok=True)
        for leftover in uploads.iterdir():  # uploads of jobs that never got a record, or ended
            if leftover.name not in keep:
                shutil.rmtree(leftover, ignore_errors=True)
        for job in queued:
            self.queued(job)
        self.runner.update_depth()
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        if not self.runs_jobs:
            return
        self._stopping.set()  # the running job goes back to the queue, run again at next start
        self._queue.put(None)
        self._thread.join(timeout)

    def alive(self) -> bool:
        return self._thread.is_alive() or not self.runs_jobs

    def enqueue(self, connection: Connection, job: Job) -> None:
        """Nothing to write: the thread hears of the job once its record is committed."""
        return None

    def queued(self, job: Job) -> None:
        self._cancel[job.id] = threading.Event()
        self._queue.put(job.id)

    def withdraw(self, job: Job) -> None:
        """A queued job was cancelled: the thread skips it when it comes up."""

    def can_abort(self, job: Job) -> bool:
        return self.runs_jobs

    def abort(self, job: Job) -> None:
        if (flag := self._cancel.get(job.id)) is not None:
            flag.set()

    def _run(self) -> None:
        while True:
            job_id = self._queue.get()
            if job_id is None:
                return
            flag = self._cancel.setdefault(job_id, threading.Event())
            try:
                self.runner.run(
                    job_id,
                    cancelled=lambda flag=flag: flag.is_set() or self._stopping.is_set(),
                    stopping=self._stopping.is_set,
                )
            finally:
                self._cancel.pop(job_id, None)
