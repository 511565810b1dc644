"""Every change of a model's active version, in the service's database: what became active, what
was active before, why (a fit, an adaptation, a threshold, a person's activation or rollback) and
when. Written by the lifecycle in the step that activates; read by GET .../activations."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Engine, delete, insert, select

from patchshift.service.job_store import now
from patchshift.service.tables import activations

FIT, ADAPTATION, THRESHOLD, BY_REQUEST = "fit", "adaptation", "threshold", "activate"


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

    def record(self, model: str, version: str, previous: str | None, cause: str) -> None:
        with self.engine.begin() as connection:
            connection.execute(
                insert(activations).values(
                    model=model, version=version, previous=previous, cause=cause, at=now()
                )
            )

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
