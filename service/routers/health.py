"""Liveness, readiness and the Prometheus endpoint (open, for probes and scrapers)."""

from __future__ import annotations

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from patchshift.service.deps import BatcherDep, MetricsDep, ServingDep, WorkerDep

router = APIRouter(tags=["operations"])


@router.get("/healthz")
def healthz() -> dict:
    return {"status": "ok"}


@router.get(
    "/readyz",
    responses={503: {"description": "a model cannot serve, or the worker or batcher stopped"}},
)
def readyz(serving: ServingDep, worker: WorkerDep, batcher: BatcherDep) -> JSONResponse:
    """200 only when every model's active version is loaded and the worker and batcher run; else 503
    naming what is wrong (a model whose active version cannot load can be rolled back through the
    API)."""
    failed = {name: error for name in serving.names() if (error := serving.load_error(name))}
    checks = {"worker": worker.alive(), "batcher": batcher.alive(), "models": not failed}
    ready = all(checks.values())
    body = {
        "status": "ready" if ready else "not ready",
        "checks": checks,
        "models": serving.names(),
    }
    if failed:
        body["load_errors"] = failed
    return JSONResponse(body, status_code=200 if ready else 503)


@router.get(
    "/metrics",
    response_class=Response,
    responses={
        200: {"content": {CONTENT_TYPE_LATEST: {}}, "description": "Prometheus text format"}
    },
)
def metrics(service_metrics: MetricsDep) -> Response:
    return Response(generate_latest(service_metrics.registry), media_type=CONTENT_TYPE_LATEST)
