"""Parts a person checked on the line: what they found, against what a version said. The scores
come from the version's own verdicts (score or history); the images are not sent again."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Depends

from patchshift.service import operations
from patchshift.service.auth import ADMIN, READ, require
from patchshift.service.deps import CheckedPartsDep, MetricsDep, StoreDep
from patchshift.service.routers.models import ModelName, VersionName
from patchshift.service.schemas import CheckedPartsIn, CheckedPartsOut, error_responses

router = APIRouter(prefix="/v1/models", tags=["models"])


@router.post(
    "/{name}/versions/{version}/checked-parts",
    response_model=CheckedPartsOut,
    dependencies=[Depends(require(ADMIN))],
    responses=error_responses(400, 401, 403, 404, 422),
)
def check_parts(
    name: ModelName,
    version: VersionName,
    body: Annotated[CheckedPartsIn, Body()],
    store: StoreDep,
    checked: CheckedPartsDep,
    metrics: MetricsDep,
) -> CheckedPartsOut:
    """Record what a person found on parts this version scored (good or defective); answers what
    its verdicts do on every part checked so far. Check parts as they come, whatever their verdict:
    checks chosen by their score bias both the measured rates and a threshold set from them."""
    return operations.record_checked_parts(store, checked, metrics, name, version, body.parts)


@router.get(
    "/{name}/versions/{version}/checked-parts",
    response_model=CheckedPartsOut,
    dependencies=[Depends(require(READ))],
    responses=error_responses(400, 401, 403, 404),
)
def checked_parts(
    name: ModelName, version: VersionName, store: StoreDep, checked: CheckedPartsDep
) -> CheckedPartsOut:
    """The version's false alarms and recall on the parts a person checked, with exact 90%
    intervals, and the threshold the good ones would give."""
    return operations.checked_parts_summary(store, checked, name, version)
