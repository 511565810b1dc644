"""The service's state on SQLite and PostgreSQL through one code path: the schema migrated from
nothing and from the job database made before migrations, the job records' conditional changes
(with a race), and the activation log."""

from __future__ import annotations

import threading
import time

import pytest
from sqlalchemy import inspect, text

from patchshift.service.activation_log import ActivationLog
from patchshift.service.database import connect, migrate
from patchshift.service.job_store import CANCELLED, FAILED, QUEUED, RUNNING, SUCCEEDED, JobStore

HEAD = "0005"
# The job table as the service created it before migrations existed (raw SQL, SQLite types).
SCHEMA_BEFORE_MIGRATIONS = [
    """CREATE TABLE IF NOT EXISTS jobs (
        id TEXT PRIMARY KEY, kind TEXT NOT NULL, model TEXT NOT NULL, status TEXT NOT NULL,
        progress REAL NOT NULL DEFAULT 0, stage TEXT, params TEXT NOT NULL, created TEXT NOT NULL,
        started TEXT, finished TEXT, error TEXT, result_version TEXT, result TEXT)""",
    "CREATE INDEX IF NOT EXISTS jobs_model ON jobs (model, status)",
]


def revision(engine) -> str:
    with engine.connect() as connection:
        return connection.execute(text("SELECT version_num FROM alembic_version")).scalar_one()


def test_a_fresh_database_gets_the_current_schema(database_url: str) -> None:
    engine = connect(database_url)
    migrate(engine)
    migrate(engine)  # at start, every time: nothing to do the second time
    tables = set(inspect(engine).get_table_names())
    assert {"jobs", "activations", "active_versions", "checked_parts", "alembic_version"} <= tables
    # the worker pool's queue lives beside the jobs on PostgreSQL only
    assert ("procrastinate_jobs" in tables) == (engine.dialect.name == "postgresql")
    assert revision(engine) == HEAD


def test_the_job_database_made_before_migrations_is_upgraded_with_its_jobs(
    database_url: str,
) -> None:
    engine = connect(database_url)
    with engine.begin() as connection:
        for statement in SCHEMA_BEFORE_MIGRATIONS:
            connection.execute(text(statement))
        connection.execute(
            text(
                "INSERT INTO jobs (id, kind, model, status, progress, params, created, result) "
                "VALUES ('j1', 'fit', 'widget', 'succeeded', 1.0, '{\"a\": 1}', "
                "'2026-11-01T00:00:00.000+00:00', '{\"threshold\": 2.5}')"
            )
        )
    migrate(engine)
    assert revision(engine) == HEAD
    job = JobStore(engine).get("j1")
    assert (job.kind, job.model, job.status, job.params, job.result) == (
        "fit",
        "widget",
        SUCCEEDED,
        {"a": 1},
        {"threshold": 2.5},
    )
    assert ActivationLog(engine).claim("widget", "v1", "fit") == (True, None)  # new tables there


def test_job_records_change_only_from_the_state_they_expect(database_url: str) -> None:
    jobs = JobStore.open(database_url)
    first = jobs.create("fit", "widget", {"n": 1})
    time.sleep(0.002)  # records are ordered by their creation time, to the millisecond
    second = jobs.create("adapt", "widget", {"n": 2})
    time.sleep(0.002)
    other = jobs.create("fit", "gadget", {})
    assert [j.id for j in jobs.unfinished("widget")] == [first.id, second.id]
    assert jobs.start(first.id) and not jobs.start(first.id)  # started once
    assert not jobs.cancel_queued(first.id, "too late")  # running: cancelled by its flag instead
    assert jobs.cancel_queued(second.id, "by request") and not jobs.start(second.id)
    jobs.progress(first.id, 0.5, "coreset", attempt=1)
    assert (jobs.get(first.id).progress, jobs.get(first.id).stage) == (0.5, "coreset")
    assert jobs.finish(first.id, SUCCEEDED, result_version="v2", result={"threshold": 3.0})
    assert not jobs.finish(first.id, FAILED, error="twice")  # an ended job stays ended
    done = jobs.get(first.id)
    assert (done.status, done.progress, done.result_version, done.result) == (
        SUCCEEDED,
        1.0,
        "v2",
        {"threshold": 3.0},
    )
    assert jobs.get(second.id).status == CANCELLED and jobs.get("nope") is None
    assert [j.id for j in jobs.list(model="widget")] == [second.id, first.id]  # newest first
    assert [j.id for j in jobs.list(status=QUEUED)] == [other.id]
    jobs.start(other.id)
    interrupted, queued = jobs.recover()
    assert [j.id for j in interrupted] == [other.id] and queued == []
    assert jobs.get(other.id).status == FAILED and "stopped" in jobs.get(other.id).error
    jobs.close()


def test_of_many_callers_starting_one_job_exactly_one_wins(database_url: str) -> None:
    jobs = JobStore.open(database_url)
    job = jobs.create("adapt", "widget", {})
    barrier, wins = threading.Barrier(8), []

    def race() -> None:
        barrier.wait()
        wins.append(jobs.start(job.id))

    threads = [threading.Thread(target=race) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert sorted(map(bool, wins)) == [False] * 7 + [True] and jobs.get(job.id).status == RUNNING
    jobs.close()


def test_a_run_that_lost_its_lease_writes_nothing_more(database_url: str) -> None:
    """Each start counts an attempt; the first run, whose worker went silent after claiming a
    version it never finished writing, is queued again (the claim cleared) and started by a
    second run: the first can neither report progress, claim a version nor end the job."""
    jobs = JobStore.open(database_url)
    job = jobs.create("adapt", "widget", {})
    first = jobs.start(job.id)
    assert first.attempts == 1 and jobs.claim_version(job.id, 1, "v7")
    assert jobs.requeue(first, "worker stopped", stalled=True, clear_version=True)
    assert not jobs.requeue(first, "twice")  # acted on the same reading: queued already
    second = jobs.start(job.id)
    assert (second.attempts, second.stalls, second.result_version) == (2, 1, None)
    jobs.progress(job.id, 0.7, "adapt", attempt=1)  # ignored
    assert not jobs.claim_version(job.id, 1, "v8")
    assert not jobs.finish(job.id, SUCCEEDED, result_version="v8", attempt=1)
    assert jobs.get(job.id).stage == "worker stopped"
    assert jobs.claim_version(job.id, 2, "v8") and not jobs.claim_version(job.id, 2, "v9")
    jobs.release_version(job.id, 2, "v8")  # the write failed: the claim is undone
    assert jobs.get(job.id).result_version is None and jobs.claim_version(job.id, 2, "v9")
    assert jobs.finish(job.id, FAILED, error="later step failed", attempt=2)
    assert jobs.get(job.id).result_version == "v9"  # a written version stays named
    jobs.close()


def test_every_activation_is_logged_with_its_cause(client) -> None:
    """A threshold version and a rollback, as GET .../activations lists them (newest first)."""
    assert client.put("/v1/models/widget/threshold", json={"threshold": 4.0}).status_code == 200
    assert client.post("/v1/models/widget/versions/v1/activate").status_code == 200
    log = client.get("/v1/models/widget/activations").json()
    assert [(a["version"], a["previous"], a["cause"]) for a in log] == [
        ("v1", "v2", "activate"),
        ("v2", "v1", "threshold"),
    ]
    assert client.get("/v1/models/nope/activations").status_code == 404
    assert client.delete("/v1/models/widget").status_code == 204
    assert client.get("/v1/models/widget/activations").status_code == 404


@pytest.mark.parametrize("url", ["mysql://user:secret@nowhere/x", "not a url at all"])
def test_an_unusable_database_url_is_refused_with_what_is_accepted(url: str) -> None:
    from patchshift.core.common.errors import ConfigError

    with pytest.raises(ConfigError, match="cannot be used .* SQLite .* PostgreSQL") as refused:
        connect(url)
    assert "secret" not in str(refused.value)


def test_readiness_names_the_version_served_and_a_lost_database(client, database_url: str) -> None:
    ready = client.get("/readyz")
    assert ready.status_code == 200, ready.text
    assert ready.json()["serving"] == {"widget": "v1"} and ready.json()["checks"]["database"]
    client.put("/v1/models/widget/threshold", json={"threshold": 4.0})
    assert client.get("/readyz").json()["serving"] == {"widget": "v2"}
    if database_url.startswith("sqlite"):
        return  # a SQLite file cannot go away under an open connection
    import psycopg
    from conftest import POSTGRES

    name = database_url.rsplit("/", 1)[1]
    with psycopg.connect(POSTGRES, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
    lost = client.get("/readyz")
    assert lost.status_code == 503 and not lost.json()["checks"]["database"], lost.text
    assert name in lost.json()["database_error"]  # says which database is missing


def test_replicas_starting_together_migrate_one_by_one(database_url: str) -> None:
    """Three processes meeting a fresh database at once: each waits for the one migrating."""
    import subprocess
    import sys

    program = (
        "import sys; from patchshift.service.database import connect, migrate; "
        "migrate(connect(sys.argv[1]))"
    )
    starts = [
        subprocess.Popen(
            [sys.executable, "-c", program, database_url], stderr=subprocess.PIPE, text=True
        )
        for _ in range(3)
    ]
    errors = [p.communicate(timeout=120)[1] for p in starts if p.wait(timeout=120) != 0]
    assert errors == [] and revision(connect(database_url)) == HEAD
