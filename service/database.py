"""The service's state in a SQL database: SQLite by default (a file beside the model store),
PostgreSQL when PATCHSHIFT_DATABASE_URL names one; one code path (SQLAlchemy Core) for both, and
the schema brought to the current version with Alembic when the service starts."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event, inspect, make_url, text
from sqlalchemy.exc import ArgumentError

from patchshift.core.common.errors import ConfigError

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
# the revision whose schema the job database had before migrations existed
FIRST_REVISION = "0001"


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
        return create_engine(url, pool_pre_ping=True)
    except (ArgumentError, ImportError) as exc:  # a malformed URL, or a driver not installed
        shown = make_url(url).render_as_string(hide_password=True) if "://" in url else url
        raise ConfigError(
            f"the database URL {shown!r} cannot be used ({exc}); patchshift runs on SQLite "
            "(sqlite:///FILE) or PostgreSQL (postgresql+psycopg://USER@HOST:PORT/DATABASE)"
        ) from None


def migrations_config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return config


def migrate(engine: Engine) -> None:
    """Bring the schema to the current revision. A job database made before migrations existed
    (a `jobs` table, no revision recorded) is recognised as the first revision and upgraded."""
    config = migrations_config()
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        tables = set(inspect(connection).get_table_names())
        if "jobs" in tables and "alembic_version" not in tables:
            command.stamp(config, FIRST_REVISION)
        command.upgrade(config, "head")


def unreachable(engine: Engine) -> str | None:
    """Why the database cannot be used right now (None: it answers)."""
    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
    except Exception as exc:  # any driver's error: readiness reports it, never raises
        return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    return None
