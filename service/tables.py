"""The service's tables, declared once (SQLAlchemy Core); service/migrations/ creates and upgrades
them. Times are ISO-8601 UTC strings, JSON documents are text: the same on SQLite and PostgreSQL."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
)

metadata = MetaData()

jobs = Table(
    "jobs",
    metadata,
    Column("id", Text, primary_key=True),
    Column("kind", Text, nullable=False),
    Column("model", Text, nullable=False),
    Column("status", Text, nullable=False),
    Column("progress", Float, nullable=False, server_default="0"),
    Column("stage", Text),
    Column("params", Text, nullable=False),
    Column("created", Text, nullable=False),
    Column("started", Text),
    Column("finished", Text),
    Column("error", Text),
    Column("result_version", Text),
    Column("result", Text),
    # runs started so far; a run that finds it changed has lost its lease (service/job_runner.py)
    Column("attempts", Integer, nullable=False, server_default="0"),
    # runs whose worker went silent for a whole lease (service/postgres_queue.py)
    Column("stalls", Integer, nullable=False, server_default="0"),
    Column("queue_id", BigInteger),  # the job's entry in procrastinate's queue (PostgreSQL)
)
Index("jobs_model", jobs.c.model, jobs.c.status)

# Every change of a model's active version: what became active, what was before, and why.
activations = Table(
    "activations",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("model", Text, nullable=False),
    Column("version", Text, nullable=False),
    Column("previous", Text),
    Column("cause", String(64), nullable=False),
    Column("at", Text, nullable=False),
)
Index("activations_model", activations.c.model, activations.c.id)

# The version each model scores with, on every replica: written with the activation, read by each
# replica's follower (service/follower.py).
active_versions = Table(
    "active_versions",
    metadata,
    Column("model", Text, primary_key=True),
    Column("version", Text, nullable=False),
    Column("changed", Text, nullable=False),
)

# Parts a person checked, each with the score one version gave it: what that version's verdicts
# really do on the line, and the known-good scores a threshold can be calibrated from
# (service/part_checks.py). A part checked again replaces its earlier check; `identity` ties each
# check to the version's manifest (ModelStore.identity), so a model made again under a deleted
# one's name never reads the old model's checks.
checked_parts = Table(
    "checked_parts",
    metadata,
    Column("model", Text, primary_key=True),
    Column("version", Text, primary_key=True),
    Column("part", Text, primary_key=True),
    Column("identity", Text, nullable=False),
    Column("score", Float, nullable=False),
    Column("good", Boolean, nullable=False),
    Column("checked_at", Text, nullable=False),
)
