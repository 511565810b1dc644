"""Progress and cancellation hooks shared by fitting, evaluation and adaptation."""

from __future__ import annotations

from collections.abc import Callable

from patchshift.core.common.errors import CancelledError

# progress(stage, done, total): stage names the phase ("features", "coreset", "threshold", ...).
ProgressFn = Callable[[str, int, int], None]
# cancel() -> True to stop at the next step boundary.
CancelFn = Callable[[], bool]


def report(progress: ProgressFn | None, stage: str, done: int, total: int) -> None:
    if progress is not None:
        progress(stage, done, total)


def check_cancel(cancel: CancelFn | None) -> None:
    if cancel is not None and cancel():
        raise CancelledError("cancelled by request; nothing was written")
