"""HTTP errors: every failure leaves as JSON {"error": {"code", "message", "file"?}} with a 4xx/5xx
status."""

from __future__ import annotations

import logging
import re

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from patchshift.core.common.errors import (
    ArtifactError,
    CancelledError,
    InvalidImageError,
    PatchshiftError,
)
from patchshift.service.limits import BodyTooLarge
from patchshift.service.names import NAME_RULE

log = logging.getLogger("patchshift.service")

# A server path (two or more components) in a message: only its last component is shown to clients.
_SERVER_PATH = re.compile(r"(?<![\w.:/])(?:/[^\s/'\":,;()\[\]{}]+){2,}/?")


def redact_paths(text: str) -> str:
    """Error messages name the upload, the field or the model version, never where the server keeps
    it."""
    return _SERVER_PATH.sub(lambda m: m.group(0).rstrip("/").rsplit("/", 1)[-1], text)


class ServiceError(Exception):
    status = 400
    code = "bad_request"

    def __init__(
        self,
        message: str,
        file: str | None = None,
        headers: dict[str, str] | None = None,
        **extra: object,
    ) -> None:
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


def _core_error(status: int, code: str, exc: Exception) -> JSONResponse:
    return _json(status, {"error": {"code": code, "message": redact_paths(str(exc))}})


def allowed_methods(app: FastAPI, path: str) -> list[str]:
    """Every method the API serves at this path, from its OpenAPI document (FastAPI registers one
    route per method, so the router alone names only the first route that matched the path)."""
    methods: set[str] = set()
    for template, operations in app.openapi().get("paths", {}).items():
        if re.fullmatch(re.sub(r"\\\{[^/]+?\\\}", "[^/]+", re.escape(template)), path):
            methods |= {method.upper() for method in operations}
    return sorted(methods)


def _problem(error: dict) -> str:
    """'field: what is wrong (got VALUE)' for one validation error."""
    if error.get("type") == "out_of_range":  # a config field's own check: it names field and value
        return str(error.get("msg"))
    where = ".".join(str(p) for p in error.get("loc", ()) if p != "body")
    given = error.get("input")
    shown = (
        f" (got {given!r})"
        if isinstance(given, (str, int, float)) and len(repr(given)) <= 80
        else ""
    )
    return f"{where}: {error.get('msg')}{shown}"


def install_handlers(app: FastAPI) -> None:
    @app.exception_handler(ServiceError)
    async def service_error(_: Request, exc: ServiceError) -> JSONResponse:
        return _json(exc.status, exc.body(), exc.headers)

    @app.exception_handler(InvalidImageError)
    async def invalid_image(_: Request, exc: InvalidImageError) -> JSONResponse:
        return _core_error(422, "invalid_image", exc)

    @app.exception_handler(ArtifactError)
    async def artifact_error(_: Request, exc: ArtifactError) -> JSONResponse:
        return _core_error(422, "invalid_artifact", exc)

    @app.exception_handler(CancelledError)
    async def cancelled(_: Request, exc: CancelledError) -> JSONResponse:
        return _core_error(409, "cancelled", exc)

    @app.exception_handler(PatchshiftError)
    async def patchshift_error(_: Request, exc: PatchshiftError) -> JSONResponse:
        return _core_error(422, "invalid_request", exc)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        names = [
            e
            for e in errors
            if tuple(e.get("loc", ()))[:1] == ("path",) and e["loc"][-1] in ("name", "version")
        ]
        if names:  # a malformed model or version name: the same 400 as everywhere else
            where = names[0]["loc"][-1]
            what = "model name" if where == "name" else str(where).replace("_", " ")
            return _json(
                400,
                {
                    "error": {
                        "code": "invalid_name",
                        "message": f"{what} {names[0].get('input')!r} is invalid: {NAME_RULE}",
                    }
                },
            )
        problems = "; ".join(_problem(e) for e in errors)
        return _json(
            422, {"error": {"code": "invalid_request", "message": problems or "invalid request"}}
        )

    @app.exception_handler(BodyTooLarge)
    async def body_too_large(_: Request, exc: BodyTooLarge) -> JSONResponse:
        error = {
            "code": "payload_too_large",
            "message": exc.detail,
            **({"file": exc.file} if exc.file else {}),
        }
        return _json(413, {"error": error}, exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        headers = dict(getattr(exc, "headers", None) or {})
        if exc.status_code == 405:
            given = {m.strip() for m in headers.get("Allow", "").split(",") if m.strip()}
            headers["Allow"] = ", ".join(
                sorted(given | set(allowed_methods(app, request.url.path)))
            )
        return _json(
            exc.status_code,
            {"error": {"code": "http_error", "message": str(exc.detail)}},
            headers or None,
        )

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return _json(
            500,
            {
                "error": {
                    "code": "internal",
                    "message": f"internal error ({type(exc).__name__}); see the service log",
                }
            },
        )
