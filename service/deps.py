"""The service's shared objects as typed route dependencies.

The app's lifespan builds them once (service.app); routes name what they use in their signature
(`store: StoreDep`), so a test can swap any of them with `app.dependency_overrides[get_store]`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

from fastapi import Depends, Request
from sqlalchemy import Engine

from patchshift.service.drift_watch import DriftWatch
from patchshift.service.history import Histories
from patchshift.service.job_store import JobStore
from patchshift.service.lifecycle import Lifecycle
from patchshift.service.part_checks import CheckedParts
from patchshift.service.prometheus import ServiceMetrics
from patchshift.service.scoring import MicroBatcher
from patchshift.service.serving import Serving
from patchshift.service.settings import Settings
from patchshift.service.store import ModelStore
from patchshift.service.worker import Worker


def _from_state(name: str) -> Callable[[Request], Any]:
    """The dependency that hands a route the object the lifespan put on app.state under `name`."""

    def dependency(request: Request) -> Any:
        return getattr(request.app.state, name)

    dependency.__name__ = f"get_{name}"
    return dependency


get_settings, get_store, get_serving, get_worker = (
    _from_state(n) for n in ("settings", "store", "serving", "worker")
)
get_lifecycle, get_histories, get_database = (
    _from_state(n) for n in ("lifecycle", "histories", "database")
)
get_jobs, get_metrics, get_batcher, get_drift, get_checked_parts = (
    _from_state(n) for n in ("jobs", "metrics", "batcher", "drift", "checked_parts")
)

SettingsDep = Annotated[Settings, Depends(get_settings)]
StoreDep = Annotated[ModelStore, Depends(get_store)]
ServingDep = Annotated[Serving, Depends(get_serving)]
LifecycleDep = Annotated[Lifecycle, Depends(get_lifecycle)]
HistoriesDep = Annotated[Histories, Depends(get_histories)]
DatabaseDep = Annotated[Engine, Depends(get_database)]
WorkerDep = Annotated[Worker, Depends(get_worker)]
JobsDep = Annotated[JobStore, Depends(get_jobs)]
MetricsDep = Annotated[ServiceMetrics, Depends(get_metrics)]
BatcherDep = Annotated[MicroBatcher, Depends(get_batcher)]
DriftDep = Annotated[DriftWatch, Depends(get_drift)]
CheckedPartsDep = Annotated[CheckedParts, Depends(get_checked_parts)]
