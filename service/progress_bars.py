"""tqdm progress bars for core's progress callbacks (one bar per stage)."""

from __future__ import annotations

from tqdm import tqdm

STAGE_LABELS = {
    "features": "extracting features",
    "coreset": "selecting memory bank",
    "threshold": "calibrating threshold",
    "score": "scoring",
    "adapt": "adapting",
    "statistics": "re-estimating BatchNorm statistics",
    "target-features": "reading the new images",
    "filter": "checking which patches of the new images look normal",
    "uda": "training the UDA encoder",
}


class ProgressBars:
    """Callable(stage, done, total) that keeps one tqdm bar for the current stage."""

    def __init__(self, disable: bool | None = None) -> None:
        self.disable = disable  # None: shown only when stderr is a terminal (tqdm's rule)
        self._bar: tqdm | None = None
        self._stage: str | None = None

    def __call__(self, stage: str, done: int, total: int) -> None:
        if stage != self._stage:
            self.close()
            self._bar = tqdm(
                total=total,
                desc=STAGE_LABELS.get(stage, stage),
                unit="",
                leave=False,
                disable=self.disable,
            )
            self._stage = stage
        assert self._bar is not None
        self._bar.total = total
        self._bar.n = done
        self._bar.refresh()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
            self._stage = None
