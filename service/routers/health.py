"""Liveness, readiness and the Prometheus endpoint (open, for probes and scrapers)."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

router = APIRouter(tags=["operations"])


@router.get("/healthz")
def healthz() -> dict:
    return {"status": "ok"}


@router.get("/readyz")
def readyz(request: Request) -> JSONResponse:
    state = request.app.state
    failed = {name: state.registry.slot(name).load_error for name in state.registry.names() if state.registry.slot(name).load_error}
    checks = {"worker": state.worker.alive(), "batcher": state.batcher.alive()}
    ready = all(checks.values())  # a model that failed to load is reported, not a reason to stop serving the others
    body = {"status": "ready" if ready else "not ready", "checks": checks, "models": state.registry.names()}
    if failed:
        body["load_errors"] = failed
    return JSONResponse(body, status_code=200 if ready else 503)


@router.get("/metrics")
def metrics(request: Request) -> Response:
    return Response(generate_latest(request.app.state.metrics.registry), media_type=CONTENT_TYPE_LATEST)
