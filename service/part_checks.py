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
    """Every call names the version by (model, version, identity): checks stored for another
    version of the same name (a deleted model's) are neither read nor counted as earlier checks."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def record(
        self, model: str, version: str, identity: str, parts: list[tuple[str, float, bool]]
    ) -> list[tuple[float, bool]]:
        """(part, score, good) for each part, in one transaction; a part checked before for this
        version gets the new check (a person correcting a click), as does a part named twice in
        `parts` (the last one counts: one statement cannot update a row twice). Rows go in the
        parts' names' order: concurrent checks of the same parts lock them alike (no deadlock).
        Returns (score, good) of the checks that are new: parts not checked for this version
        before (a correction replaces a check; it adds none)."""
        at = now()
        latest = {p: (s, g) for p, s, g in parts}
        rows = [
            {
                "model": model,
                "version": version,
                "part": p,
                "identity": identity,
                "score": s,
                "good": g,
                "checked_at": at,
            }
            for p, (s, g) in sorted(latest.items())
        ]
        if not rows:
            return []
        statement = upsert(self.engine, checked_parts)
        with self.engine.begin() as connection:
            known = set(
                connection.execute(
                    select(checked_parts.c.part).where(
                        self._of(model, version, identity), checked_parts.c.part.in_(latest)
                    )
                ).scalars()
            )
            connection.execute(
                statement.on_conflict_do_update(
                    index_elements=[
                        checked_parts.c.model,
                        checked_parts.c.version,
                        checked_parts.c.part,
                    ],
                    set_={
                        "identity": statement.excluded.identity,
                        "score": statement.excluded.score,
                        "good": statement.excluded.good,
                        "checked_at": statement.excluded.checked_at,
                    },
                ),
                rows,
            )
        return [(r["score"], r["good"]) for r in rows if r["part"] not in known]

    @staticmethod
    def _of(model: str, version: str, identity: str):
        return and_(
            checked_parts.c.model == model,
            checked_parts.c.version == version,
            checked_parts.c.identity == identity,
        )

    def of(self, model: str, version: str, identity: str) -> list[CheckedPart]:
        """Every check of the version's parts, the latest first."""
        query = (
            select(checked_parts)
            .where(self._of(model, version, identity))
            .order_by(checked_parts.c.checked_at.desc(), checked_parts.c.part)
        )
        with self.engine.connect() as connection:
            rows = connection.execute(query).fetchall()
        return [CheckedPart(r.part, float(r.score), bool(r.good), r.checked_at) for r in rows]

    def good_scores(self, model: str, version: str, identity: str) -> np.ndarray:
        """(N,) the version's scores of the parts found good."""
        return np.array(
            [p.score for p in self.of(model, version, identity) if p.good], dtype=np.float64
        )

    def forget(self, model: str, version: str | None = None) -> None:
        """Drop a deleted version's checks (None: every version's). Called once, by the request
        that deletes; checks a racing request writes after it stay unread (another identity)."""
        condition = checked_parts.c.model == model
        if version is not None:
            condition = and_(condition, checked_parts.c.version == version)
        with self.engine.begin() as connection:
            connection.execute(delete(checked_parts).where(condition))
