"""The service's shared objects as typed route dependencies.

The app's lifespan builds them once (service.app); routes name what they use in their signature
(`store: StoreDep`), so a test can swap any of them with `app.dependency_overrides[get_store]`.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from .drift_watch import DriftWatch
from .jobs import JobStore
from .metrics import ServiceMetrics
from .registry import ModelRegistry
from .scoring import MicroBatcher
from .settings import Settings
from .store import ModelStore
from .worker import Worker


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_store(request: Request) -> ModelStore:
    return request.app.state.store


def get_registry(request: Request) -> ModelRegistry:
    return request.app.state.registry


def get_worker(request: Request) -> Worker:
    return request.app.state.worker


def get_jobs(request: Request) -> JobStore:
    return request.app.state.jobs


def get_metrics(request: Request) -> ServiceMetrics:
    return request.app.state.metrics


def get_batcher(request: Request) -> MicroBatcher:
    return request.app.state.batcher


def get_drift(request: Request) -> DriftWatch:
    return request.app.state.drift


SettingsDep = Annotated[Settings, Depends(get_settings)]
StoreDep = Annotated[ModelStore, Depends(get_store)]
RegistryDep = Annotated[ModelRegistry, Depends(get_registry)]
WorkerDep = Annotated[Worker, Depends(get_worker)]
JobsDep = Annotated[JobStore, Depends(get_jobs)]
MetricsDep = Annotated[ServiceMetrics, Depends(get_metrics)]
BatcherDep = Annotated[MicroBatcher, Depends(get_batcher)]
DriftDep = Annotated[DriftWatch, Depends(get_drift)]
