"""The operator console: one page at / and its assets, shipped in the package (no CDN, no build
step), plus the two small reads it needs that the rest of the API did not offer: which scope the
caller's key has, and which adaptation methods exist."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel

from patchshift.core.adapt import METHODS, RECOMMENDED, get_adapter
from patchshift.service.auth import READ, granted_scope, require
from patchshift.service.schemas import error_responses

CONSOLE_DIR = Path(__file__).resolve().parent.parent / "console"
ASSETS_URL = "/console"

router = APIRouter()


def mount_assets(app: FastAPI) -> None:
    app.mount(ASSETS_URL, StaticFiles(directory=CONSOLE_DIR), name="console")


@router.get("/", include_in_schema=False)
def console_page() -> FileResponse:
    return FileResponse(CONSOLE_DIR / "index.html", media_type="text/html")


class Session(BaseModel):
    scope: str  # admin or read
    auth: bool  # whether keys are configured at all
    device: str  # where models score: cpu or cuda


@router.get("/v1/session", response_model=Session, tags=["console"], responses=error_responses(401))
def session(request: Request) -> Session:
    """What the caller's key may do (admin, read) and where models score; 401 for a missing or wrong
    key where one is needed."""
    return Session(
        scope=granted_scope(request),
        auth=request.app.state.keys.enabled,
        device=str(request.app.state.serving.device),
    )


class MethodOut(BaseModel):
    name: str
    summary: str
    recommended: bool
    min_images: int
    needs_source_images: bool


@router.get(
    "/v1/methods",
    response_model=list[MethodOut],
    tags=["console"],
    dependencies=[Depends(require(READ))],
    responses=error_responses(401, 403),
)
def methods() -> list[MethodOut]:
    """The adaptation methods, the recommended one first, each with one line on when to pick it."""
    ordered = [RECOMMENDED, *(m for m in METHODS if m != RECOMMENDED)]
    return [
        MethodOut(
            name=m,
            summary=(a := get_adapter(m)).summary,
            recommended=m == RECOMMENDED,
            min_images=a.min_images,
            needs_source_images=a.min_source_images > 0,
        )
        for m in ordered
    ]
