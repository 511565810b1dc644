"""Every change of a model's active version, in the service's database: what became active, what
was active before, why (a fit, an adaptation, a threshold, a person's activation or rollback) and
when; and the version each model is active at now, which every replica follows
(service/follower.py). Written by the lifecycle in the step that activates, in one transaction;
on PostgreSQL the same transaction notifies the replicas (NOTIFY patchshift_activation)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import Engine, delete, insert, select, text

from patchshift.service.database import upsert
from patchshift.service.job_store import now
from patchshift.service.tables import activations, active_versions

FIT, ADAPTATION, THRESHOLD, BY_REQUEST = "fit", "adaptation", "threshold", "activate"
ANY = object()  # claim: whatever version is active
CHANNEL = "patchshift_activation"  # PostgreSQL NOTIFY channel; the payload is the model name


@dataclass(frozen=True)
class Activation:
    model: str
    version: str
    previous: str | None
    cause: str
    at: str


class ActivationLog:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def claim(
        self, model: str, version: str, cause: str, expected: str | None | object = ANY
    ) -> tuple[bool, str | None]:
        """Make `version` the shared active version and log it, in one transaction, if the active
        version is still `expected` (ANY: whatever it is); (done, the version active before)."""
        at = now()
        with self.engine.begin() as connection:
            row = connection.execute(
                select(active_versions.c.version)
                .where(active_versions.c.model == model)
                .with_for_update()
            ).first()
            current = row.version if row is not None else None
            if expected is not ANY and current != expected:
                return False, current
            connection.execute(
                insert(activations).values(
                    model=model, version=version, previous=current, cause=cause, at=at
                )
            )
            self._set_active(connection, model, version, at)
        return True, current

    def publish(self, model: str, version: str) -> None:
        """Share `version` as the active one where the database has none yet (a store's own
        pointer at start); never over a version another replica made active."""
        with self.engine.begin() as connection:
            self._set_active(connection, model, version, now(), replace=False)

    def _set_active(
        self, connection, model: str, version: str, at: str, replace: bool = True
    ) -> None:
        row = upsert(self.engine, active_versions).values(model=model, version=version, changed=at)
        keys = [active_versions.c.model]
        connection.execute(
            row.on_conflict_do_update(index_elements=keys, set_={"version": version, "changed": at})
            if replace
            else row.on_conflict_do_nothing(index_elements=keys)
        )
        if self.engine.dialect.name == "postgresql":
            connection.execute(
                text("SELECT pg_notify(:channel, :model)"), {"channel": CHANNEL, "model": model}
            )

    def current(self) -> dict[str, str]:
        """Every model's active version, as the replicas share it."""
        with self.engine.connect() as connection:
            rows = connection.execute(select(active_versions)).fetchall()
        return {r.model: r.version for r in rows}

    def age(self, model: str) -> float | None:
        """Seconds since `model`'s shared active version last changed (None: no such model);
        across machines, as good as their clocks agree."""
        with self.engine.connect() as connection:
            changed = connection.execute(
                select(active_versions.c.changed).where(active_versions.c.model == model)
            ).scalar()
        if changed is None:
            return None
        return (datetime.now(UTC) - datetime.fromisoformat(changed)).total_seconds()

    def of(self, model: str, limit: int = 100) -> list[Activation]:
        """The newest first."""
        query = (
            select(activations)
            .where(activations.c.model == model)
            .order_by(activations.c.id.desc())
            .limit(limit)
        )
        with self.engine.connect() as connection:
            rows = connection.execute(query).fetchall()
        return [Activation(r.model, r.version, r.previous, r.cause, r.at) for r in rows]

    def forget(self, model: str) -> None:
        with self.engine.begin() as connection:
            connection.execute(delete(activations).where(activations.c.model == model))
            connection.execute(delete(active_versions).where(active_versions.c.model == model))

    def notify(self, model: str) -> None:
        """Tell the replicas to look at `model` again (PostgreSQL; the others re-read anyway)."""
        if self.engine.dialect.name == "postgresql":
            with self.engine.begin() as connection:
                connection.execute(
                    text("SELECT pg_notify(:channel, :model)"), {"channel": CHANNEL, "model": model}
                )
