"""The FastAPI application: wiring of store, registry, job worker, micro-batcher, metrics and auth.

Routers stay thin; they call the objects built here, which live on app.state.
"""

from __future__ import annotations

import json
import logging
import time
from contextlib import asynccontextmanager

from fastapi import FastAPI

from patchshift.core.device import resolve_device

from .auth import Keys
from .drift_watch import DriftWatch
from .errors import install_handlers
from .jobs import JobStore
from .metrics import ServiceMetrics
from .registry import ModelRegistry
from .routers import health, jobs, models, score
from .scoring import MicroBatcher
from .settings import Settings
from .store import ModelStore
from .tasks import make_tasks
from .worker import Worker

log = logging.getLogger("patchshift.service")


class ObserveRequests:
    """ASGI middleware: 413 for bodies over the limit, request counters and latency by route template."""

    def __init__(self, app, metrics: ServiceMetrics, max_bytes: int) -> None:
        self.app = app
        self.metrics = metrics
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        status = {"code": 500}

        async def capture(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        length = dict(scope.get("headers") or []).get(b"content-length")
        try:
            if length is not None and length.isdigit() and int(length) > self.max_bytes:
                body = json.dumps({"error": {"code": "payload_too_large", "message": f"request body of {int(length)} bytes exceeds the {self.max_bytes}-byte limit"}}).encode()
                await capture({"type": "http.response.start", "status": 413, "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
                await send({"type": "http.response.body", "body": body})
                return
            await self.app(scope, receive, capture)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            method = scope.get("method", "")
            self.metrics.requests.labels(template, method, str(status["code"])).inc()
            self.metrics.latency.labels(template, method).observe(time.perf_counter() - started)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    metrics = ServiceMetrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        state = app.state
        state.settings, state.metrics = settings, metrics
        state.keys = Keys.from_settings(settings)
        if not state.keys.enabled:
            log.warning("no API keys configured (PATCHSHIFT_ADMIN_KEY / PATCHSHIFT_READ_KEY): authentication is OFF")
        device = resolve_device(settings.device)
        metrics.device.labels(device.type).set(1)
        state.store = ModelStore(settings.models_dir)
        for leftover in state.store.clean_leftovers():
            log.warning("removed an unfinished write left by an earlier crash: %s", leftover)
        state.registry = ModelRegistry(state.store, settings, metrics, device)
        state.registry.load_all()
        state.jobs = JobStore(settings.database_path)
        state.worker = Worker(state.jobs, settings.uploads_dir, metrics, make_tasks(state.store, state.registry, device))
        state.worker.start()
        state.batcher = MicroBatcher(settings.max_batch_images, settings.batch_wait_ms / 1000, metrics)
        await state.batcher.start()
        state.drift = DriftWatch(state.registry, state.worker, settings, metrics)
        log.info("serving %d model(s) from %s on %s", len(state.registry.names()), settings.models_dir, device)
        try:
            yield
        finally:
            await state.batcher.stop()
            state.worker.stop()
            state.jobs.close()

    app = FastAPI(
        title="patchshift",
        version="0.1.0",
        description="Visual inspection that adapts to camera and lighting shifts: scores, verdicts, heatmaps, adaptation jobs.",
        lifespan=lifespan,
    )
    install_handlers(app)
    for router in (health.router, models.router, score.router, jobs.router):
        app.include_router(router)
    app.add_middleware(ObserveRequests, metrics=metrics, max_bytes=settings.max_request_bytes)
    return app
