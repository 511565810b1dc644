"""Job records in the service's database: fit and adaptation jobs survive restarts and are never
left 'running'."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import Connection, Engine, insert, select, update

from patchshift.service.database import connect, migrate, sqlite_url
from patchshift.service.tables import jobs

QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED = (
    "queued",
    "running",
    "succeeded",
    "failed",
    "cancelled",
)
UNFINISHED = (QUEUED, RUNNING)
INTERRUPTED = (
    "the service stopped while this job was running (restart or crash); "
    "the model's versions are unchanged"
)


def move_legacy_database(models_dir: Path, path: Path) -> Path | None:
    """Versions before 0.2 kept the job database at MODELS_DIR/jobs.sqlite, where a model named
    'jobs.sqlite' collided with it; move it (with its WAL files) to `path` once."""
    legacy = models_dir / "jobs.sqlite"
    if not legacy.is_file() or path.exists():
        return None
    path.parent.mkdir(parents=True, exist_ok=True)
    for suffix in ("-wal", "-shm", ""):
        old = legacy.with_name(legacy.name + suffix)
        if old.is_file():
            os.replace(old, path.with_name(path.name + suffix))
    return legacy


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


@dataclass
class Job:
    id: str
    kind: str
    model: str
    status: str
    progress: float
    stage: str | None
    params: dict
    created: str
    started: str | None = None
    finished: str | None = None
    error: str | None = None
    result_version: str | None = None
    result: dict = field(default_factory=dict)
    attempts: int = 0  # runs started; the current run's fencing token
    stalls: int = 0  # runs whose worker went silent
    queue_id: int | None = None  # its entry in the worker pool's queue (PostgreSQL)

    @classmethod
    def from_row(cls, row) -> Job:
        data = dict(row._mapping)
        data["params"] = json.loads(data["params"])
        data["result"] = json.loads(data["result"]) if data["result"] else {}
        return cls(**data)


def _attach_queue_entry(
    connection: Connection, job: Job, enqueue: Callable[[Connection, Job], int | None] | None
) -> None:
    """Give `job` its entry in the worker pool's queue, on the transaction that changed it."""
    if enqueue is not None and (queue_id := enqueue(connection, job)) is not None:
        connection.execute(update(jobs).where(jobs.c.id == job.id).values(queue_id=queue_id))
        job.queue_id = queue_id


def _run(job_id: str, attempt: int) -> tuple:
    """The conditions under which run `attempt` still holds the job."""
    return (jobs.c.id == job_id, jobs.c.status == RUNNING, jobs.c.attempts == attempt)


class JobStore:
    """Job records in the service's database; every change is committed before the call returns,
    and every change of status is one conditional UPDATE, so two callers never both win."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    @classmethod
    def open(cls, database: str | Path) -> JobStore:
        """A store over a database URL, or a SQLite file path; its schema brought up to date."""
        engine = connect(database if isinstance(database, str) else sqlite_url(database))
        migrate(engine)
        return cls(engine)

    def close(self) -> None:
        self.engine.dispose()

    def _rows(self, query) -> list:
        with self.engine.connect() as connection:
            return connection.execute(query).fetchall()

    def _update(self, query) -> bool:
        with self.engine.begin() as connection:
            return connection.execute(query).rowcount == 1

    def create(
        self,
        kind: str,
        model: str,
        params: dict,
        job_id: str | None = None,
        enqueue: Callable[[Connection, Job], int | None] | None = None,
    ) -> Job:
        """Record a queued job; `enqueue` puts it in the worker pool's queue in the same
        transaction (both or neither)."""
        job = Job(job_id or uuid.uuid4().hex, kind, model, QUEUED, 0.0, None, params, now())
        with self.engine.begin() as connection:
            connection.execute(
                insert(jobs).values(
                    id=job.id,
                    kind=kind,
                    model=model,
                    status=QUEUED,
                    progress=0.0,
                    params=json.dumps(params),
                    created=job.created,
                )
            )
            _attach_queue_entry(connection, job, enqueue)
        return job

    def get(self, job_id: str) -> Job | None:
        rows = self._rows(select(jobs).where(jobs.c.id == job_id))
        return Job.from_row(rows[0]) if rows else None

    def list(
        self, model: str | None = None, status: str | None = None, limit: int = 100
    ) -> list[Job]:
        query = select(jobs)
        if model:
            query = query.where(jobs.c.model == model)
        if status:
            query = query.where(jobs.c.status == status)
        rows = self._rows(query.order_by(jobs.c.created.desc()).limit(limit))
        return [Job.from_row(r) for r in rows]

    def unfinished(self, model: str | None = None) -> list[Job]:
        query = select(jobs).where(jobs.c.status.in_(UNFINISHED))
        if model:
            query = query.where(jobs.c.model == model)
        return [Job.from_row(r) for r in self._rows(query.order_by(jobs.c.created))]

    def start(self, job_id: str, queue_id: int | None = None) -> Job | None:
        """queued -> running, one more attempt; None when the job is no longer queued (cancelled
        meanwhile) or, given `queue_id`, no longer belongs to that queue entry. The returned
        record's `attempts` is this run's fencing token."""
        query = update(jobs).where(jobs.c.id == job_id, jobs.c.status == QUEUED)
        if queue_id is not None:
            query = query.where(jobs.c.queue_id == queue_id)
        if not self._update(
            query.values(status=RUNNING, started=now(), attempts=jobs.c.attempts + 1)
        ):
            return None
        return self.get(job_id)

    def claim_version(self, job_id: str, attempt: int, version: str) -> bool:
        """Name the version this run is about to write, once per job: False when the run lost
        its lease (the job was given to another run) or a version was already claimed."""
        return self._update(
            update(jobs)
            .where(*_run(job_id, attempt), jobs.c.result_version.is_(None))
            .values(result_version=version)
        )

    def holds(self, job_id: str, attempt: int, version: str) -> bool:
        """Whether run `attempt` still holds the job and its claim on `version`."""
        return bool(
            self._rows(
                select(jobs.c.id).where(*_run(job_id, attempt), jobs.c.result_version == version)
            )
        )

    def release_version(self, job_id: str, attempt: int, version: str) -> None:
        """Undo a claim whose version could not be written."""
        self._update(
            update(jobs)
            .where(
                jobs.c.id == job_id,
                jobs.c.attempts == attempt,
                jobs.c.result_version == version,
            )
            .values(result_version=None)
        )

    def requeue(
        self,
        job: Job,
        stage: str,
        stalled: bool = False,
        clear_version: bool = False,
        enqueue: Callable[[Connection, Job], int | None] | None = None,
    ) -> bool:
        """Back to queued for another run, only if the record is still as `job` says (status,
        attempt, queue entry): of two callers acting on one reading, one wins. `stalled`: its
        worker went silent (counted: such a job runs again only once); `clear_version`: the
        version its run claimed was never completed; `enqueue`: a new queue entry, written in the
        same transaction."""
        values = {"status": QUEUED, "progress": 0.0, "stage": stage}
        if stalled:
            values["stalls"] = jobs.c.stalls + 1
        if clear_version:
            values["result_version"] = None
        query = update(jobs).where(
            jobs.c.id == job.id, jobs.c.status == job.status, jobs.c.attempts == job.attempts
        )
        if job.queue_id is not None:
            query = query.where(jobs.c.queue_id == job.queue_id)
        with self.engine.begin() as connection:
            if connection.execute(query.values(**values)).rowcount != 1:
                return False
            _attach_queue_entry(connection, job, enqueue)
        return True

    def cancel_queued(self, job_id: str, error: str) -> bool:
        """queued -> cancelled in one statement; False when the worker started it meanwhile (then
        the running job must be told to stop instead)."""
        return self._update(
            update(jobs)
            .where(jobs.c.id == job_id, jobs.c.status == QUEUED)
            .values(status=CANCELLED, finished=now(), error=error)
        )

    def progress(self, job_id: str, value: float, stage: str | None, attempt: int) -> None:
        self._update(update(jobs).where(*_run(job_id, attempt)).values(progress=value, stage=stage))

    def finish(
        self,
        job_id: str,
        status: str,
        error: str | None = None,
        result_version: str | None = None,
        result: dict | None = None,
        attempt: int | None = None,
        queue_id: int | None = None,
    ) -> bool:
        """Record the end of an unfinished job (of run `attempt`, when given); False if it had
        already ended or was given to another run."""
        values = {
            "status": status,
            "finished": now(),
            "error": error,
            "result_version": result_version,
            "result": json.dumps(result or {}),
        }
        if status == SUCCEEDED:
            values["progress"] = 1.0
        query = update(jobs).where(jobs.c.id == job_id, jobs.c.status.in_(UNFINISHED))
        if attempt is not None:
            query = query.where(jobs.c.attempts == attempt)
        if queue_id is not None:
            query = query.where(jobs.c.queue_id == queue_id)
        if result_version is None:
            values.pop("result_version")  # keep a version claimed by the run (a failure after it)
        return self._update(query.values(**values))

    def recover(self) -> tuple[list[Job], list[Job]]:
        """At start: running jobs were interrupted -> failed; queued ones are returned to be run
        again."""
        interrupted = [j for j in self.unfinished() if j.status == RUNNING]
        for job in interrupted:
            self.finish(job.id, FAILED, error=INTERRUPTED)
        return interrupted, [j for j in self.unfinished() if j.status == QUEUED]
