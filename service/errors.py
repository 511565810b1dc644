"""HTTP errors: every failure leaves as JSON {"error": {"code", "message", "file"?}} with a 4xx/5xx status."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from patchshift.core.errors import ArtifactError, CancelledError, InvalidImageError, PatchshiftError

log = logging.getLogger("patchshift.service")


class ServiceError(Exception):
    status = 400
    code = "bad_request"

    def __init__(self, message: str, file: str | None = None, headers: dict[str, str] | None = None, **extra: object) -> None:
        super().__init__(message)
        self.message = message
        self.file = file
        self.headers = headers
        self.extra = extra

    def body(self) -> dict:
        error: dict = {"code": self.code, "message": self.message}
        if self.file is not None:
            error["file"] = self.file
        error.update(self.extra)
        return {"error": error}


class InvalidName(ServiceError):
    status, code = 400, "invalid_name"


class Unauthorized(ServiceError):
    status, code = 401, "unauthorized"


class Forbidden(ServiceError):
    status, code = 403, "forbidden"


class NotFound(ServiceError):
    status, code = 404, "not_found"


class Conflict(ServiceError):
    status, code = 409, "conflict"


class PayloadTooLarge(ServiceError):
    status, code = 413, "payload_too_large"


class Unprocessable(ServiceError):
    status, code = 422, "unprocessable"


class BadImages(Unprocessable):
    code = "invalid_image"


class Unavailable(ServiceError):
    status, code = 503, "unavailable"


def _json(status: int, body: dict, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(status_code=status, content=body, headers=headers)


def install_handlers(app: FastAPI) -> None:
    @app.exception_handler(ServiceError)
    async def service_error(_: Request, exc: ServiceError) -> JSONResponse:
        return _json(exc.status, exc.body(), exc.headers)

    @app.exception_handler(InvalidImageError)
    async def invalid_image(_: Request, exc: InvalidImageError) -> JSONResponse:
        return _json(422, {"error": {"code": "invalid_image", "message": str(exc)}})

    @app.exception_handler(ArtifactError)
    async def artifact_error(_: Request, exc: ArtifactError) -> JSONResponse:
        return _json(422, {"error": {"code": "invalid_artifact", "message": str(exc)}})

    @app.exception_handler(CancelledError)
    async def cancelled(_: Request, exc: CancelledError) -> JSONResponse:
        return _json(409, {"error": {"code": "cancelled", "message": str(exc)}})

    @app.exception_handler(PatchshiftError)
    async def patchshift_error(_: Request, exc: PatchshiftError) -> JSONResponse:
        return _json(422, {"error": {"code": "invalid_request", "message": str(exc)}})

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(f"{'.'.join(str(p) for p in e.get('loc', ()) if p != 'body')}: {e.get('msg')}" for e in exc.errors())
        return _json(422, {"error": {"code": "invalid_request", "message": problems or "invalid request"}})

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _json(exc.status_code, {"error": {"code": "http_error", "message": str(exc.detail)}}, getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return _json(500, {"error": {"code": "internal", "message": f"internal error ({type(exc).__name__}); see the service log"}})
