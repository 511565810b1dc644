"""Parts a person checked on the line, in the service's database: for each, the score one version
gave it and whether it was good. Shared by every replica (a check posted to one is seen by all) and
kept across restarts; the images themselves are never stored, only their scores.

Read for two things: what a version's verdicts really do on the line (the share of good parts it
flags, the share of defective ones it catches), and the known-good scores `calibrate` can set the
version's threshold from."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sqlalchemy import Engine, and_, delete, select

from patchshift.service.database import upsert
from patchshift.service.job_store import now
from patchshift.service.tables import checked_parts


@dataclass(frozen=True)
class CheckedPart:
    part: str  # the line's name for it: the image's file name, a serial number
    score: float  # the version's score of it
    good: bool  # what the person found
    checked_at: str


class CheckedParts:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def record(self, model: str, version: str, parts: list[tuple[str, float, bool]]) -> None:
        """(part, score, good) for each part, in one transaction; a part checked before for this
        version gets the new check (a person correcting a click), as does a part named twice in
        `parts` (the last one counts: one statement cannot update a row twice). Rows go in the
        parts' names' order: concurrent checks of the same parts lock them alike (no deadlock)."""
        at = now()
        latest = {p: (s, g) for p, s, g in parts}
        rows = [
            {"model": model, "version": version, "part": p, "score": s, "good": g, "checked_at": at}
            for p, (s, g) in sorted(latest.items())
        ]
        if not rows:
            return
        statement = upsert(self.engine, checked_parts)
        with self.engine.begin() as connection:
            connection.execute(
                statement.on_conflict_do_update(
                    index_elements=[
                        checked_parts.c.model,
                        checked_parts.c.version,
                        checked_parts.c.part,
                    ],
                    set_={
                        "score": statement.excluded.score,
                        "good": statement.excluded.good,
                        "checked_at": statement.excluded.checked_at,
                    },
                ),
                rows,
            )

    def of(self, model: str, version: str) -> list[CheckedPart]:
        """Every check of `version`'s parts, the latest first."""
        query = (
            select(checked_parts)
            .where(and_(checked_parts.c.model == model, checked_parts.c.version == version))
            .order_by(checked_parts.c.checked_at.desc(), checked_parts.c.part)
        )
        with self.engine.connect() as connection:
            rows = connection.execute(query).fetchall()
        return [CheckedPart(r.part, float(r.score), bool(r.good), r.checked_at) for r in rows]

    def good_scores(self, model: str, version: str) -> np.ndarray:
        """(N,) the version's scores of the parts found good."""
        return np.array([p.score for p in self.of(model, version) if p.good], dtype=np.float64)

    def forget(self, model: str, version: str | None = None) -> None:
        """Drop a deleted version's checks (None: every version's, the model is gone: a model made
        again under its name starts from v1 and must not inherit them)."""
        condition = checked_parts.c.model == model
        if version is not None:
            condition = and_(condition, checked_parts.c.version == version)
        with self.engine.begin() as connection:
            connection.execute(delete(checked_parts).where(condition))
