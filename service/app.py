"""The FastAPI application: wiring of store, registry, job worker, micro-batcher, metrics and auth.

Routers stay thin; they call the objects built here, which live on app.state.
"""

from __future__ import annotations

import importlib.metadata
import logging
import time
from contextlib import asynccontextmanager

from fastapi import FastAPI

from patchshift.service.auth import Keys
from patchshift.service.drift_watch import DriftWatch
from patchshift.service.history import Histories
from patchshift.service.http_errors import install_handlers
from patchshift.service.limits import BodyLimit
from patchshift.service.part_checks import CheckedParts
from patchshift.service.prometheus import ServiceMetrics
from patchshift.service.routers import checked_parts, console, docs, health, jobs, models, score
from patchshift.service.runtime import Runtime
from patchshift.service.scoring import MicroBatcher
from patchshift.service.settings import Settings

log = logging.getLogger("patchshift.service")


class ObserveRequests:
    """ASGI middleware: request counters and latency by route template (ids never become labels)."""

    def __init__(self, app, metrics: ServiceMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        status = {"code": 500}

        async def capture(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, capture)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            method = scope.get("method", "")
            self.metrics.requests.labels(template, method, str(status["code"])).inc()
            self.metrics.latency.labels(template, method).observe(time.perf_counter() - started)


def files_per_request(settings: Settings):
    """Files accepted per multipart field: scoring takes max_files, fit and adapt
    max_train_files."""

    def limit(path: str) -> int:
        return (
            settings.max_files if path.rstrip("/").endswith("/score") else settings.max_train_files
        )

    return limit


def document_file_limits(app: FastAPI, settings: Settings) -> None:
    """Write the file-count limits (settings, so not known to the route declarations) into the
    OpenAPI document."""
    generate = app.openapi

    def openapi() -> dict:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = generate()
        for path, operations in schema.get("paths", {}).items():
            for operation in operations.values():
                ref = (
                    operation.get("requestBody", {})
                    .get("content", {})
                    .get("multipart/form-data", {})
                    .get("schema", {})
                    .get("$ref")
                )
                if not ref:
                    continue
                body = schema["components"]["schemas"][ref.rsplit("/", 1)[-1]]
                for field in ("files", "source_files"):
                    prop = body.get("properties", {}).get(field)
                    if prop is None:
                        continue
                    array = next(
                        (p for p in prop.get("anyOf", [prop]) if p.get("type") == "array"), None
                    )
                    if array is not None:
                        array["maxItems"] = files_per_request(settings)(path)
        app.openapi_schema = schema
        return schema

    app.openapi = openapi


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    metrics = ServiceMetrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        state = app.state
        state.settings, state.metrics = settings, metrics
        state.keys = Keys.from_settings(settings)
        if not state.keys.enabled:
            log.warning(
                "no API keys configured (PATCHSHIFT_ADMIN_KEY / PATCHSHIFT_READ_KEY): "
                "authentication is OFF"
            )
        runtime = Runtime.build(settings, metrics)
        state.runtime = runtime
        state.store, state.database, state.jobs = runtime.store, runtime.jobs.engine, runtime.jobs
        state.serving, state.lifecycle = runtime.serving, runtime.lifecycle
        state.worker, state.follower = runtime.worker, runtime.follower
        state.histories = Histories(
            settings.history_scores, settings.history_drift_points, settings.recent_images
        )
        state.drift = DriftWatch(state.lifecycle, state.worker, settings, metrics)
        state.checked_parts = CheckedParts(state.database)
        state.lifecycle.forgetters += [state.drift.forget, state.histories.forget]
        runtime.start()
        state.batcher = MicroBatcher(
            settings.max_batch_images, settings.batch_wait_ms / 1000, metrics
        )
        await state.batcher.start()
        log.info(
            "serving %d model(s) from %s on %s",
            len(state.serving.names()),
            settings.models_dir,
            runtime.device,
        )
        try:
            yield
        finally:
            await state.batcher.stop()
            runtime.stop()

    app = FastAPI(
        title="patchshift",
        version=package_version(),
        description="Visual inspection that adapts to camera and lighting shifts: scores, "
        "verdicts, heatmaps, adaptation jobs.",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        # the body limit below counts the parts of each field; FastAPI's own defaults (1000) must
        # not undercut it
        form_limits={
            "max_files": 2 * settings.max_train_files + 1,
            "max_fields": 2 * settings.max_train_files + 64,
        },
    )
    install_handlers(app)
    for router in (
        health.router,
        models.router,
        checked_parts.router,
        score.router,
        jobs.router,
        docs.router,
        console.router,
    ):
        app.include_router(router)
    docs.mount_assets(app)
    console.mount_assets(app)
    document_file_limits(app, settings)
    app.add_middleware(
        BodyLimit,
        max_request_bytes=settings.max_request_bytes,
        max_file_bytes=settings.max_file_bytes,
        max_files=files_per_request(settings),
    )
    app.add_middleware(ObserveRequests, metrics=metrics)
    return app


def package_version() -> str:
    try:
        return importlib.metadata.version("patchshift")
    except importlib.metadata.PackageNotFoundError:
        return "0+unknown"
