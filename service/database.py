"""The service's state in a SQL database: SQLite by default (a file beside the model store),
PostgreSQL when PATCHSHIFT_DATABASE_URL names one; one code path (SQLAlchemy Core) for both, and
the schema brought to the current version with Alembic when the service starts."""

from __future__ import annotations

import fcntl
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, Table, create_engine, event, inspect, make_url, text
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import ArgumentError

from patchshift.core.common.errors import ConfigError

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
# the revision whose schema the job database had before migrations existed
FIRST_REVISION = "0001"
_MIGRATING = threading.Lock()
# a database that stops answering is noticed instead of stalling every caller
CONNECT_TIMEOUT = {"connect_timeout": 5}


def sqlite_url(path: Path) -> str:
    return f"sqlite:///{path}"


def connect(url: str) -> Engine:
    """An engine for `url`; SQLite files get WAL, full fsync and a wait instead of 'locked'."""
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"check_same_thread": False})

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_connection, _record) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=FULL")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.close()

        return engine
    try:
        engine = create_engine(url, pool_pre_ping=True, connect_args=CONNECT_TIMEOUT)
        if engine.dialect.name != "postgresql":
            raise ArgumentError(f"{engine.dialect.name} is not supported")
        return engine
    except (ArgumentError, ImportError) as exc:  # a malformed URL, or a driver not installed
        shown = make_url(url).render_as_string(hide_password=True) if "://" in url else url
        raise ConfigError(
            f"the database URL {shown!r} cannot be used ({exc}); patchshift runs on SQLite "
            "(sqlite:///FILE) or PostgreSQL (postgresql+psycopg://USER@HOST:PORT/DATABASE)"
        ) from None


def libpq_url(engine: Engine) -> str:
    """The engine's PostgreSQL address as libpq takes it (psycopg and procrastinate connect with
    their own connections: LISTEN, the worker pool's pool)."""
    return engine.url.set(drivername="postgresql").render_as_string(hide_password=False)


def migrations_config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return config


def migrate(engine: Engine) -> None:
    """Bring the schema to the current revision. A job database made before migrations existed
    (a `jobs` table, no revision recorded) is recognised as the first revision and upgraded.
    Processes starting together migrate one by one (PostgreSQL: an advisory lock; a SQLite file:
    a lock file beside it)."""
    config = migrations_config()
    with _MIGRATING, _sqlite_file_lock(engine), engine.begin() as connection:
        if engine.dialect.name == "postgresql":
            connection.execute(text("SELECT pg_advisory_xact_lock(hashtext('patchshift migrate'))"))
        config.attributes["connection"] = connection  # Alembic's context is one per process
        tables = set(inspect(connection).get_table_names())
        if "jobs" in tables and "alembic_version" not in tables:
            command.stamp(config, FIRST_REVISION)
        command.upgrade(config, "head")


@contextmanager
def _sqlite_file_lock(engine: Engine) -> Iterator[None]:
    path = engine.url.database if engine.dialect.name == "sqlite" else None
    if not path or path == ":memory:":
        yield
        return
    with open(f"{path}.migrate-lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def unreachable(engine: Engine) -> str | None:
    """Why the database cannot be used right now (None: it answers)."""
    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
    except Exception as exc:  # any driver's error: readiness reports it, never raises
        return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    return None


def upsert(engine: Engine, table: Table):
    """The engine's INSERT into `table` that takes ON CONFLICT DO UPDATE / DO NOTHING (SQLite and
    PostgreSQL spell it alike, each with its own construct)."""
    return (pg_insert if engine.dialect.name == "postgresql" else sqlite_insert)(table)
