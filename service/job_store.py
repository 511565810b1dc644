"""Job records in SQLite: fit and adaptation jobs survive restarts and are never left 'running'."""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

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

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    model TEXT NOT NULL,
    status TEXT NOT NULL,
    progress REAL NOT NULL DEFAULT 0,
    stage TEXT,
    params TEXT NOT NULL,
    created TEXT NOT NULL,
    started TEXT,
    finished TEXT,
    error TEXT,
    result_version TEXT,
    result TEXT
);
CREATE INDEX IF NOT EXISTS jobs_model ON jobs (model, status);
"""


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

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> Job:
        data = dict(row)
        data["params"] = json.loads(data["params"])
        data["result"] = json.loads(data["result"]) if data["result"] else {}
        return cls(**data)


class JobStore:
    """Thread-safe; every change is committed before the call returns (WAL, synchronous=FULL)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._lock = threading.Lock()
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _execute(self, sql: str, args: tuple = ()) -> list[sqlite3.Row]:
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    def create(self, kind: str, model: str, params: dict, job_id: str | None = None) -> Job:
        job = Job(job_id or uuid.uuid4().hex, kind, model, QUEUED, 0.0, None, params, now())
        self._execute(
            "INSERT INTO jobs (id, kind, model, status, progress, params, created) VALUES (?, ?, "
            "?, ?, ?, ?, ?)",
            (job.id, kind, model, QUEUED, 0.0, json.dumps(params), job.created),
        )
        return job

    def get(self, job_id: str) -> Job | None:
        rows = self._execute("SELECT * FROM jobs WHERE id = ?", (job_id,))
        return Job.from_row(rows[0]) if rows else None

    def list(
        self, model: str | None = None, status: str | None = None, limit: int = 100
    ) -> list[Job]:
        sql, args = "SELECT * FROM jobs WHERE 1=1", []
        if model:
            sql, args = sql + " AND model = ?", [*args, model]
        if status:
            sql, args = sql + " AND status = ?", [*args, status]
        rows = self._execute(sql + " ORDER BY created DESC LIMIT ?", (*args, limit))
        return [Job.from_row(r) for r in rows]

    def unfinished(self, model: str | None = None) -> list[Job]:
        sql = (
            "SELECT * FROM jobs WHERE status IN (?, ?)"
            + (" AND model = ?" if model else "")
            + " ORDER BY created"
        )
        return [
            Job.from_row(r) for r in self._execute(sql, (*UNFINISHED, *([model] if model else [])))
        ]

    def start(self, job_id: str) -> bool:
        """queued -> running; False when the job is no longer queued (cancelled meanwhile)."""
        with self._lock:
            cursor = self._db.execute(
                "UPDATE jobs SET status = ?, started = ? WHERE id = ? AND status = ?",
                (RUNNING, now(), job_id, QUEUED),
            )
            return cursor.rowcount == 1

    def cancel_queued(self, job_id: str, error: str) -> bool:
        """queued -> cancelled in one statement; False when the worker started it meanwhile (then
        the running job must be told to stop instead)."""
        with self._lock:
            cursor = self._db.execute(
                "UPDATE jobs SET status = ?, finished = ?, error = ? WHERE id = ? AND status = ?",
                (CANCELLED, now(), error, job_id, QUEUED),
            )
            return cursor.rowcount == 1

    def progress(self, job_id: str, value: float, stage: str | None) -> None:
        self._execute(
            "UPDATE jobs SET progress = ?, stage = ? WHERE id = ? AND status = ?",
            (value, stage, job_id, RUNNING),
        )

    def finish(
        self,
        job_id: str,
        status: str,
        error: str | None = None,
        result_version: str | None = None,
        result: dict | None = None,
    ) -> bool:
        """Record the end of an unfinished job; False if it had already ended."""
        with self._lock:
            cursor = self._db.execute(
                "UPDATE jobs SET status = ?, finished = ?, error = ?, result_version = ?, result "
                "= ?, "
                "progress = CASE WHEN ? = 'succeeded' THEN 1.0 ELSE progress END WHERE id = ? AND "
                "status IN (?, ?)",
                (
                    status,
                    now(),
                    error,
                    result_version,
                    json.dumps(result or {}),
                    status,
                    job_id,
                    *UNFINISHED,
                ),
            )
            return cursor.rowcount == 1

    def recover(self) -> tuple[list[Job], list[Job]]:
        """At start: running jobs were interrupted -> failed; queued ones are returned to be run
        again."""
        interrupted = [j for j in self.unfinished() if j.status == RUNNING]
        for job in interrupted:
            self.finish(job.id, FAILED, error=INTERRUPTED)
        return interrupted, [j for j in self.unfinished() if j.status == QUEUED]
