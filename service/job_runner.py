"""Running one queued job to its end: the same code whichever queue handed it over (the in-process
thread on SQLite, a worker of the pool on PostgreSQL).

A run starts by moving the record queued -> running, which counts one more attempt; that count is
the run's fencing token. Every later write of the run (progress, the version it writes, its end) is
conditional on it, so a run whose worker was presumed dead and whose job was given to another run
writes nothing more. A job's uploads live under MODELS_DIR/.uploads/<job id>/ until the job ends.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from patchshift.core.common.errors import CancelledError, PatchshiftError
from patchshift.service.http_errors import redact_paths
from patchshift.service.job_store import (
    CANCELLED,
    FAILED,
    SUCCEEDED,
    UNFINISHED,
    Job,
    JobStore,
)
from patchshift.service.prometheus import ServiceMetrics

log = logging.getLogger("patchshift.service")

SOURCE_PREFIX = "source-"  # uploads of the source domain (uda-global) sit beside the job's images
INTERRUPTED_STAGE = "interrupted; queued to run again"
END_RETRY_SECONDS = 300.0  # how long a run waits for the database to record its end


class LeaseLost(PatchshiftError):
    """This run's job was given to another run (its worker missed its heartbeats)."""


@dataclass(frozen=True)
class JobInputs:
    """A job's stored uploads: the images it works on and, for uda-global, normal images of the
    source domain."""

    images: list[Path]
    source_images: list[Path] = field(default_factory=list)


# A task gets (job, inputs, progress(fraction, stage), cancelled()) and returns (version, result).
Task = Callable[
    [Job, JobInputs, Callable[[float, str], None], Callable[[], bool]], tuple[str | None, dict]
]

# where each core stage sits in a job's overall progress (fit: features, coreset, threshold;
STAGES = {
    # BatchNorm adaptation: statistics, adapt (trained methods only), threshold; target memory and
    # uda: target-features, filter, coreset, threshold; uda-global: uda)
    "features": (0.0, 0.6),
    # target memory and uda: the new images' features, which of their patches the others vouch for
    "target-features": (0.0, 0.3),
    "filter": (0.3, 0.6),
    "coreset": (0.6, 0.95),
    "threshold": (0.95, 1.0),
    "statistics": (0.0, 0.3),
    "adapt": (0.3, 0.95),
    "uda": (0.05, 0.95),  # uda-global's training
}


def stage_progress(report: Callable[[float, str], None]) -> Callable[[str, int, int], None]:
    """Adapt core's (stage, done, total) callback to one overall fraction."""

    def progress(stage: str, done: int, total: int) -> None:
        low, high = STAGES.get(stage, (0.0, 1.0))
        report(low + (high - low) * (done / total if total else 1.0), stage)

    return progress


class JobRunner:
    def __init__(
        self, jobs: JobStore, uploads: Path, metrics: ServiceMetrics, tasks: dict[str, Task]
    ) -> None:
        self.jobs = jobs
        self.uploads = uploads
        self.metrics = metrics
        self.tasks = tasks
        self.current: str | None = None  # the job this process runs now (one at a time)

    def run(
        self,
        job_id: str,
        cancelled: Callable[[], bool],
        stopping: Callable[[], bool] = lambda: False,
        queue_id: int | None = None,
    ) -> bool:
        """Run a queued job to its end (given `queue_id`, only while that queue entry is the
        job's). When the process is stopping (`stopping()` true as the job gives up), the job goes
        back to the queue instead: returns False, and the caller's queue runs it again; else
        True."""
        job = None
        try:
            job = self.jobs.start(job_id, queue_id)
            if job is None:
                return True  # cancelled while queued
            self.current = job_id
            log.info("job %s (%s of %s) started: run %d", job_id, job.kind, job.model, job.attempts)
            return self._execute(job, cancelled, stopping)
        except BaseException:  # a worker must survive anything a job does
            log.exception("job %s: unexpected failure in the worker", job_id)
            self.jobs.finish(
                job_id,
                FAILED,
                error="internal error in the worker; see the service log",
                attempt=job.attempts if job else None,
            )
            return True
        finally:
            self.current = None
            self.discard_uploads_if_ended(job_id)
            self.update_depth()

    def _record_end(
        self,
        job_id: str,
        status: str,
        error: str | None,
        version: str | None,
        result: dict,
        attempt: int,
    ) -> bool:
        """Write the job's end, waiting out a database outage (a restart): a job that ran must not
        stay 'running'. Gives up after END_RETRY_SECONDS; the queue's sweep then ends it."""
        deadline = time.monotonic() + END_RETRY_SECONDS
        pause = 0.5
        while True:
            try:
                return self.jobs.finish(
                    job_id,
                    status,
                    error=error,
                    result_version=version,
                    result=result,
                    attempt=attempt,
                )
            except Exception as exc:  # the database is away
                if time.monotonic() + pause > deadline:
                    raise
                log.warning(
                    "job %s: its end (%s) not recorded yet (%s); retrying", job_id, status, exc
                )
                time.sleep(pause)
                pause = min(pause * 2, 10.0)

    def inputs(self, job_id: str) -> JobInputs:
        folder = self.uploads / job_id
        return JobInputs(
            sorted(folder.glob("[0-9]*.img")), sorted(folder.glob(f"{SOURCE_PREFIX}*.img"))
        )

    def discard_uploads_if_ended(self, job_id: str) -> None:
        job = self.jobs.get(job_id)
        if job is not None and job.status not in UNFINISHED:
            shutil.rmtree(self.uploads / job_id, ignore_errors=True)

    def update_depth(self) -> None:
        self.metrics.queue_depth.set(len(self.jobs.unfinished()))

    def _execute(
        self, job: Job, cancelled: Callable[[], bool], stopping: Callable[[], bool]
    ) -> bool:
        attempt = job.attempts
        last = [0.0]

        def progress(fraction: float, stage: str) -> None:
            if time.monotonic() - last[0] > 0.5 or fraction >= 1:
                last[0] = time.monotonic()
                value = round(min(max(fraction, 0.0), 1.0), 4)
                try:
                    self.jobs.progress(job.id, value, stage, attempt)
                except Exception as exc:  # progress is for people: the job goes on without it
                    log.warning("job %s: progress not recorded (%s)", job.id, exc)

        if job.started and attempt == 1:
            waited = datetime.fromisoformat(job.started) - datetime.fromisoformat(job.created)
            self.metrics.job_pickup.labels(job.kind).observe(max(waited.total_seconds(), 0.0))
        started = time.perf_counter()
        status, error, version, result = FAILED, None, None, {}
        try:
            version, result = self.tasks[job.kind](job, self.inputs(job.id), progress, cancelled)
            status = SUCCEEDED
        except CancelledError:
            if stopping() and self.jobs.requeue(job, INTERRUPTED_STAGE):
                log.info(
                    "job %s (%s of %s) interrupted by shutdown; queued", job.id, job.kind, job.model
                )
                return False
            status, error = CANCELLED, "cancelled by request; no version was written"
        except LeaseLost as exc:
            log.error("job %s: %s", job.id, exc)
            return True
        except PatchshiftError as exc:
            error = redact_paths(str(exc))
        except Exception as exc:
            log.exception("job %s failed", job.id)
            error = redact_paths(f"internal error ({type(exc).__name__}: {exc})")
        if not self._record_end(job.id, status, error, version, result, attempt):
            log.error(
                "job %s ended %s but its record had already ended or passed to another run; "
                "version %s is not in any job result",
                job.id,
                status,
                version,
            )
        self.metrics.jobs.labels(job.kind, status).inc()
        self.metrics.job_seconds.labels(job.kind).observe(time.perf_counter() - started)
        log.info(
            "job %s (%s of %s) %s%s",
            job.id,
            job.kind,
            job.model,
            status,
            f": {error}" if error else "",
        )
        return True
