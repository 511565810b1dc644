"""Liveness, readiness and the Prometheus endpoint (open, for probes and scrapers)."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from patchshift.service.database import unreachable
from patchshift.service.deps import (
    BatcherDep,
    DatabaseDep,
    MetricsDep,
    ServingDep,
    StoreDep,
    WorkerDep,
)
from patchshift.service.http_errors import redact_paths

router = APIRouter(tags=["operations"])


@router.get("/healthz")
def healthz() -> dict:
    return {"status": "ok"}


@router.get(
    "/readyz",
    responses={
        503: {
            "description": "a model cannot serve, the database or the model store cannot be "
            "reached, or the worker or batcher stopped"
        }
    },
)
def readyz(
    request: Request,
    serving: ServingDep,
    worker: WorkerDep,
    batcher: BatcherDep,
    database: DatabaseDep,
    store: StoreDep,
) -> JSONResponse:
    """200 only when every model's active version is loaded, the database answers, the model store
    is there and the worker and batcher run; else 503 naming what is wrong (a model whose active
    version cannot load can be rolled back through the API). `serving`: the version each model
    scores with on this replica."""
    failed = {name: error for name in serving.names() if (error := serving.load_error(name))}
    database_error = unreachable(database)
    checks = {
        "worker": worker.alive(),
        "batcher": batcher.alive(),
        "follower": request.app.state.follower.alive(),
        "models": not failed,
        "database": database_error is None,
        "store": store.root.is_dir(),
    }
    ready = all(checks.values())
    body = {
        "status": "ready" if ready else "not ready",
        "checks": checks,
        "models": serving.names(),
        "runs_jobs": worker.runs_jobs,
        "serving": {
            name: model.version for name in serving.names() if (model := serving.active(name))
        },
    }
    if failed:
        body["load_errors"] = failed
    if database_error:
        body["database_error"] = redact_paths(database_error)
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
