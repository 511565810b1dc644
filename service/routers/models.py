"""Models and their versions: list, inspect, fit, adapt, activate (rollback), threshold (set or
calibrated on known-good parts), delete."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Annotated, Literal

from fastapi import APIRouter, Body, Depends, File, Form, Path, Query, UploadFile
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, BeforeValidator, Field

from patchshift.core.adapt import METHODS, RECOMMENDED, AdaptConfig, get_adapter
from patchshift.core.adapt.adapt_config import ADAPT_OPTIONS
from patchshift.core.common.errors import ConfigError, DatasetError, PatchshiftError
from patchshift.core.engine.model_config import FIT_OPTIONS, ModelConfig
from patchshift.core.engine.threshold import THRESHOLD_BOUNDS
from patchshift.core.uda import UDAConfig
from patchshift.service import operations
from patchshift.service.auth import ADMIN, READ, require
from patchshift.service.deps import (
    CheckedPartsDep,
    DriftDep,
    HistoriesDep,
    LifecycleDep,
    ServingDep,
    SettingsDep,
    StoreDep,
    WorkerDep,
)
from patchshift.service.http_errors import Unprocessable
from patchshift.service.names import NAME_MAX_LENGTH, NAME_PATTERN
from patchshift.service.option_fields import form_model, form_values
from patchshift.service.requests import (
    ACTIVATE_ALWAYS,
    ACTIVATE_IF_BETTER,
    ACTIVATE_NEVER,
    ACTIVATION_POLICIES,
    adaptation_config,
    check_adaptation_images,
    check_fit_images,
    fit_config,
)
from patchshift.service.schemas import (
    ActivationOut,
    CalibrationOut,
    JobAccepted,
    ModelOut,
    ModelSummary,
    error_responses,
)
from patchshift.service.scoring import decode_uploads
from patchshift.service.settings import Settings
from patchshift.service.tasks import with_server_files
from patchshift.service.uploads import read_files

router = APIRouter(prefix="/v1/models", tags=["models"])

ModelName = Annotated[
    str, Path(pattern=NAME_PATTERN, max_length=NAME_MAX_LENGTH, description="model name")
]
VersionName = Annotated[
    str, Path(pattern=NAME_PATTERN, max_length=NAME_MAX_LENGTH, description="version, e.g. v3")
]
IMAGE_SIZE_PATTERN = r"^\s*\d{1,5}\s*(?:[xX]\s*\d{1,5}\s*)?$"

# uda's and uda-global's clusters; uda-global's encoder
ADAPT_FIELDS = (*ADAPT_OPTIONS, "clusters", "min_majority", "min_separation")
UDA_GLOBAL_FIELDS = ("encoder",)


class FitExtras(BaseModel):
    image_size: str = Field(
        "256",
        pattern=IMAGE_SIZE_PATTERN,
        max_length=16,
        description="N or WIDTHxHEIGHT, sides 32..2048",
    )
    activate: bool = Field(True, description="make the new version active when it is ready")


def activation_spelling(value):
    """The boolean spellings a form sends (True, 1, yes, on, ...) mean true/false, as before
    if-better existed."""
    text = str(value).strip().lower()
    return {
        "1": "true",
        "yes": "true",
        "on": "true",
        "0": "false",
        "no": "false",
        "off": "false",
    }.get(text, text)


class AdaptExtras(BaseModel):
    method: Literal[METHODS] = Field(
        RECOMMENDED, description=f"one of {', '.join(METHODS)}; default: the recommended one"
    )  # type: ignore[valid-type]
    image_size: str | None = Field(
        None,
        pattern=IMAGE_SIZE_PATTERN,
        max_length=16,
        description="uda-global only: encoder input size (default 224)",
    )
    activate: Annotated[Literal[ACTIVATION_POLICIES], BeforeValidator(activation_spelling)] = Field(  # type: ignore[valid-type]
        ACTIVATE_IF_BETTER,
        description="true: make the new version active when it is ready; false: keep it for "
        "review; "
        "if-better: only if a label-free check finds it fits the new images better than the "
        "active version",
    )


FitForm = form_model("FitForm", ModelConfig, FIT_OPTIONS, with_defaults=True, base=FitExtras)
# uda-global only: the encoder (clip needs the server's local checkpoint)
UDAGlobalOptions = form_model(
    "UDAGlobalOptions", UDAConfig, UDA_GLOBAL_FIELDS, with_defaults=False, base=AdaptExtras
)
AdaptForm = form_model(
    "AdaptForm", AdaptConfig, ADAPT_FIELDS, with_defaults=False, base=UDAGlobalOptions
)


def describer(
    store: StoreDep,
    serving: ServingDep,
    drift: DriftDep,
    histories: HistoriesDep,
    settings: SettingsDep,
) -> Callable[[str], ModelOut]:
    """A model's description (versions, active one, drift) from the objects that hold each part."""
    return functools.partial(operations.describe_model, store, serving, drift, histories, settings)


DescribeDep = Annotated[Callable[[str], ModelOut], Depends(describer)]
READ_ERRORS = error_responses(400, 401, 403, 404)
ADMIN_ERRORS = error_responses(400, 401, 403, 404, 409, 422)
UPLOAD_ERRORS = error_responses(400, 401, 403, 404, 409, 413, 422, 503)


@router.get(
    "",
    response_model=list[ModelSummary],
    dependencies=[Depends(require(READ))],
    responses=error_responses(401, 403),
)
def list_models(store: StoreDep, serving: ServingDep) -> list[ModelSummary]:
    return operations.list_models(store, serving)


@router.get(
    "/{name}", response_model=ModelOut, dependencies=[Depends(require(READ))], responses=READ_ERRORS
)
def get_model(name: ModelName, store: StoreDep, describe: DescribeDep) -> ModelOut:
    return describe(operations.require_model(store, name))


async def _validated_uploads(
    settings: Settings, files: list[UploadFile], size: tuple[int, int]
) -> list[tuple[str, bytes]]:
    uploads = await read_files(files, settings.max_train_files, settings.max_file_bytes)
    await run_in_threadpool(
        decode_uploads, uploads, size, None
    )  # 422 naming bad files before any job exists
    return uploads


@router.post(
    "/{name}/fit",
    response_model=JobAccepted,
    status_code=202,
    dependencies=[Depends(require(ADMIN))],
    responses=UPLOAD_ERRORS,
)
async def fit_model(
    name: ModelName,
    options: Annotated[FitForm, Form()],
    files: Annotated[
        list[UploadFile], File(min_length=1, description="normal (defect-free) images")
    ],
    store: StoreDep,
    worker: WorkerDep,
    settings: SettingsDep,
) -> JobAccepted:
    """Fit a new version from normal images (a new model if the name is new)."""
    worker.require_jobs()
    store.model_dir(name)  # 400 when the name is taken by a file of the store
    values = {"image_size": options.image_size, **form_values(options, ModelConfig, FIT_OPTIONS)}
    try:
        config = await run_in_threadpool(fit_config, values)
    except (ConfigError, TypeError, ValueError) as exc:
        raise Unprocessable(str(exc)) from None
    uploads = await _validated_uploads(settings, files, config.image_size)
    try:
        check_fit_images(len(uploads))
    except DatasetError as exc:
        raise Unprocessable(str(exc)) from None
    params = {
        "config": config.to_dict(),
        "activate": ACTIVATE_ALWAYS if options.activate else ACTIVATE_NEVER,
        "active_version": store.active(name),
    }  # a rollback made while the fit runs is not undone
    job = await run_in_threadpool(worker.submit, "fit", name, params, uploads)
    return JobAccepted(job_id=job.id, status=job.status)


@router.post(
    "/{name}/adapt",
    response_model=JobAccepted,
    status_code=202,
    dependencies=[Depends(require(ADMIN))],
    responses=error_responses(400, 401, 403, 404, 409, 413, 422, 503),
)
async def adapt_model(
    name: ModelName,
    options: Annotated[AdaptForm, Form()],
    files: Annotated[
        list[UploadFile],
        File(
            min_length=1,
            description="unlabeled images of the new condition (a few may be defective)",
        ),
    ],
    store: StoreDep,
    serving: ServingDep,
    worker: WorkerDep,
    settings: SettingsDep,
    source_files: Annotated[
        list[UploadFile] | None,
        File(description="uda-global only: normal images of the source domain"),
    ] = None,
) -> JobAccepted:
    """Adapt the active version to a new condition; scoring continues on it meanwhile.

    The PatchCore methods adapt a version to its new camera or lighting; `uda` builds a memory of a
    new domain from the dominant cluster of the images; `uda-global` trains the UDA paper's global
    detector from the source normals (`source_files`) and the unlabeled target."""
    worker.require_jobs()
    operations.require_model(store, name)
    model = serving.get(name)
    adapter = get_adapter(options.method)
    given = {
        **form_values(options, AdaptConfig, ADAPT_FIELDS),
        **form_values(options, UDAConfig, UDA_GLOBAL_FIELDS),
    }
    if options.image_size is not None:
        given["image_size"] = options.image_size
    try:
        cfg = adaptation_config(
            adapter, model, f"the active version of {name!r}", with_server_files(given, settings)
        )  # the CLIP tower is the server's file, never the client's
    except PatchshiftError as exc:
        raise Unprocessable(str(exc)) from None
    stored = {"method": adapter.name, **given}
    size = adapter.input_size(model, cfg)
    sources = await _validated_uploads(settings, source_files, size) if source_files else []
    uploads = await _validated_uploads(settings, files, size)
    try:
        check_adaptation_images(adapter, len(uploads), len(sources), options.activate)
    except PatchshiftError as exc:
        raise Unprocessable(str(exc)) from None
    params = {"config": stored, "source_version": model.version, "activate": options.activate}
    job = await run_in_threadpool(worker.submit, "adapt", name, params, uploads, sources)
    return JobAccepted(job_id=job.id, status=job.status)


@router.get(
    "/{name}/activations",
    response_model=list[ActivationOut],
    dependencies=[Depends(require(READ))],
    responses=READ_ERRORS,
)
def list_activations(
    name: ModelName,
    store: StoreDep,
    lifecycle: LifecycleDep,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[ActivationOut]:
    """Every change of the active version, newest first: to what, from what, why, when."""
    operations.require_model(store, name)
    return [
        ActivationOut(version=a.version, previous=a.previous, cause=a.cause, at=a.at)
        for a in lifecycle.log.of(name, limit)
    ]


@router.post(
    "/{name}/versions/{version}/activate",
    response_model=ModelOut,
    dependencies=[Depends(require(ADMIN))],
    responses=ADMIN_ERRORS,
)
async def activate_version(
    name: ModelName,
    version: VersionName,
    store: StoreDep,
    lifecycle: LifecycleDep,
    describe: DescribeDep,
) -> ModelOut:
    """Roll back or forward: the version scores from the next request on."""
    await run_in_threadpool(operations.activate_version, store, lifecycle, name, version)
    return describe(name)


class ThresholdIn(BaseModel):
    threshold: float = Field(
        ...,
        ge=THRESHOLD_BOUNDS.ge,
        le=THRESHOLD_BOUNDS.le,
        allow_inf_nan=False,
        description=f"new decision threshold on the anomaly score ({THRESHOLD_BOUNDS.describe()})",
    )


@router.put(
    "/{name}/threshold",
    response_model=ModelOut,
    dependencies=[Depends(require(ADMIN))],
    responses=error_responses(400, 401, 403, 404, 409, 422, 503),
)
async def set_threshold(
    name: ModelName,
    body: Annotated[ThresholdIn, Body()],
    store: StoreDep,
    lifecycle: LifecycleDep,
    describe: DescribeDep,
) -> ModelOut:
    """Override the threshold: writes a new version (parent: the active one) and activates it.

    Refused (409) while the model has an unfinished job: an adaptation that ends later would
    otherwise replace the operator's threshold version without a word."""
    await run_in_threadpool(operations.set_threshold, store, lifecycle, name, body.threshold)
    return describe(name)


class CalibrateSource(BaseModel):
    from_checked_parts: bool = Field(
        False,
        description="calibrate from the parts checked good on the line for this version "
        "(POST .../checked-parts) instead of uploaded images",
    )


CalibrateForm = form_model(
    "CalibrateForm",
    ModelConfig,
    ("false_alarm_rate",),
    with_defaults=False,
    base=CalibrateSource,
)


@router.post(
    "/{name}/versions/{version}/calibrate",
    response_model=CalibrationOut,
    status_code=201,
    dependencies=[Depends(require(ADMIN))],
    responses=UPLOAD_ERRORS,
)
async def calibrate_threshold(
    name: ModelName,
    version: VersionName,
    options: Annotated[CalibrateForm, Form()],
    store: StoreDep,
    serving: ServingDep,
    lifecycle: LifecycleDep,
    checked: CheckedPartsDep,
    settings: SettingsDep,
    files: Annotated[
        list[UploadFile] | None,
        File(
            description="images of parts a person knows are good, under the condition the "
            "version meets (or from_checked_parts)",
        ),
    ] = None,
) -> CalibrationOut:
    """A new version of `version` with the threshold known-good parts give, and how sure it is
    (`threshold_estimate`); not activated. For a version whose label-free threshold is not
    trustworthy: activate the new one once its estimate suits the line."""
    uploads = (
        await read_files(files, settings.max_calibration_files, settings.max_file_bytes)
        if files
        else []
    )
    return await run_in_threadpool(
        operations.calibrate_threshold,
        store,
        serving,
        lifecycle,
        checked,
        name,
        version,
        uploads,
        options.false_alarm_rate,
        options.from_checked_parts,
    )


@router.delete(
    "/{name}/versions/{version}",
    status_code=204,
    dependencies=[Depends(require(ADMIN))],
    responses=error_responses(400, 401, 403, 404, 409),
)
def delete_version(
    name: ModelName,
    version: VersionName,
    store: StoreDep,
    lifecycle: LifecycleDep,
    checked: CheckedPartsDep,
) -> None:
    operations.delete_version(store, lifecycle, checked, name, version)


@router.delete(
    "/{name}",
    status_code=204,
    dependencies=[Depends(require(ADMIN))],
    responses=error_responses(400, 401, 403, 404, 409),
)
def delete_model(
    name: ModelName, store: StoreDep, lifecycle: LifecycleDep, checked: CheckedPartsDep
) -> None:
    operations.delete_model(store, lifecycle, checked, name)
