"""Models and their versions: list, inspect, fit, adapt, activate (rollback), threshold, delete."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Body, Depends, File, Form, Path, Request, UploadFile
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, BeforeValidator, Field

from patchshift.core.adapt import METHODS, RECOMMENDED, AdaptConfig, get_adapter
from patchshift.core.adapt.config import ADAPT_OPTIONS
from patchshift.core.backbone import stage_channels
from patchshift.core.config import FIT_OPTIONS, ModelConfig
from patchshift.core.errors import ArtifactError, ConfigError, DatasetError
from patchshift.core.features import check_feature_dim
from patchshift.core.options import check_options
from patchshift.core.threshold import THRESHOLD_BOUNDS
from patchshift.core.uda import UDAConfig

from ..auth import ADMIN, READ, require
from ..errors import Conflict, NotFound, Unprocessable, redact_paths
from ..names import NAME_MAX_LENGTH, NAME_PATTERN
from ..options import form_model, form_values
from ..schemas import DriftOut, JobAccepted, ModelOut, ModelSummary, UnreadableVersion, VersionOut, error_responses
from ..scoring import decode_uploads
from ..store import check_name
from ..tasks import ACTIVATE_ALWAYS, ACTIVATE_IF_BETTER, ACTIVATE_NEVER, ACTIVATION_POLICIES, override_threshold
from ..uploads import read_files

router = APIRouter(prefix="/v1/models", tags=["models"])

ModelName = Annotated[str, Path(pattern=NAME_PATTERN, max_length=NAME_MAX_LENGTH, description="model name")]
VersionName = Annotated[str, Path(pattern=NAME_PATTERN, max_length=NAME_MAX_LENGTH, description="version, e.g. v3")]
IMAGE_SIZE_PATTERN = r"^\s*\d{1,5}\s*(?:[xX]\s*\d{1,5}\s*)?$"

UDA_FIELDS = ("clusters", "encoder")


class FitExtras(BaseModel):
    image_size: str = Field("256", pattern=IMAGE_SIZE_PATTERN, max_length=16, description="N or WIDTHxHEIGHT, sides 32..2048")
    activate: bool = Field(True, description="make the new version active when it is ready")


def activation_spelling(value):
    """The boolean spellings a form sends (True, 1, yes, on, ...) mean true/false, as before if-better existed."""
    text = str(value).strip().lower()
    return {"1": "true", "yes": "true", "on": "true", "0": "false", "no": "false", "off": "false"}.get(text, text)


class AdaptExtras(BaseModel):
    method: Literal[METHODS] = Field(RECOMMENDED, description=f"one of {', '.join(METHODS)}; default: the recommended one")  # type: ignore[valid-type]
    image_size: str | None = Field(None, pattern=IMAGE_SIZE_PATTERN, max_length=16, description="uda only: encoder input size (default 224)")
    activate: Annotated[Literal[ACTIVATION_POLICIES], BeforeValidator(activation_spelling)] = Field(  # type: ignore[valid-type]
        ACTIVATE_IF_BETTER, description="true: make the new version active when it is ready; false: keep it for review; "
        "if-better: only if a label-free check finds it ranks the new images better than the active version")


FitForm = form_model("FitForm", ModelConfig, FIT_OPTIONS, with_defaults=True, base=FitExtras)
# uda only: clusters and encoder (clip needs the server's local checkpoint)
UDAOptions = form_model("UDAOptions", UDAConfig, UDA_FIELDS, with_defaults=False, base=AdaptExtras)
AdaptForm = form_model("AdaptForm", AdaptConfig, ADAPT_OPTIONS, with_defaults=False, base=UDAOptions)


def describe(request: Request, name: str) -> ModelOut:
    state = request.app.state
    store, slot = state.store, state.registry.slot(name)
    active = store.active(name)
    versions, unreadable = [], []
    for version in store.versions(name):
        try:
            m = store.manifest(name, version)
        except ArtifactError as exc:
            unreadable.append(UnreadableVersion(version=version, error=redact_paths(str(exc))))
            continue
        versions.append(VersionOut(
            version=version, kind=m.kind, active=version == active, parent=m.parent, method=m.method, created=m.created,
            threshold=m.threshold, threshold_source=m.threshold_source, backbone=m.backbone, image_size=m.image_size,
            bank_size=getattr(m, "bank_size", None), details={k: v for k, v in m.details.items() if k != "losses"},
        ))
    drift = None
    if slot is not None and slot.model is not None:
        monitor = slot.monitor
        statistic, drifting = monitor.verdict()
        drift = DriftOut(
            statistic=statistic, threshold=monitor.threshold, window=monitor.window, recent_images=monitor.n_recent,
            drifting=drifting,
            recent_anomalous_share=monitor.anomalous_share(), auto_adapt=state.settings.auto_adapt,
        )
    return ModelOut(
        name=name, active_version=active, loaded=slot is not None and slot.model is not None,
        load_error=slot.load_error if slot else None, versions=versions, unreadable_versions=unreadable, drift=drift,
    )


READ_ERRORS = error_responses(400, 401, 403, 404)
ADMIN_ERRORS = error_responses(400, 401, 403, 404, 409, 422)
UPLOAD_ERRORS = error_responses(400, 401, 403, 404, 409, 413, 422)


def existing(request: Request, name: str) -> str:
    check_name(name)
    if not request.app.state.store.exists(name):
        raise NotFound(f"no model named {name!r}")
    return name


@router.get("", response_model=list[ModelSummary], dependencies=[Depends(require(READ))], responses=error_responses(401, 403))
def list_models(request: Request) -> list[ModelSummary]:
    state = request.app.state
    out = []
    for name in state.store.models():
        slot = state.registry.slot(name)
        out.append(ModelSummary(name=name, active_version=state.store.active(name), loaded=bool(slot and slot.model), versions=len(state.store.versions(name))))
    return out


@router.get("/{name}", response_model=ModelOut, dependencies=[Depends(require(READ))], responses=READ_ERRORS)
def get_model(request: Request, name: ModelName) -> ModelOut:
    return describe(request, existing(request, name))


async def _validated_uploads(request: Request, files: list[UploadFile], size: tuple[int, int]) -> list[tuple[str, bytes]]:
    settings = request.app.state.settings
    uploads = await read_files(files, settings.max_train_files, settings.max_file_bytes)
    await run_in_threadpool(decode_uploads, uploads, size, None)  # 422 naming bad files before any job exists
    return uploads


@router.post("/{name}/fit", response_model=JobAccepted, status_code=202, dependencies=[Depends(require(ADMIN))], responses=UPLOAD_ERRORS)
async def fit_model(
    request: Request,
    name: ModelName,
    options: Annotated[FitForm, Form()],
    files: Annotated[list[UploadFile], File(min_length=1, description="normal (defect-free) images")],
) -> JobAccepted:
    """Fit a new version from normal images (a new model if the name is new)."""
    request.app.state.store.model_dir(name)  # 400 when the name is taken by a file of the store
    try:
        config = ModelConfig(image_size=options.image_size, **form_values(options, ModelConfig, FIT_OPTIONS))
        check_options(config)
        if config.calibration == "holdout" and config.holdout_fraction == 0:
            raise ConfigError("holdout_fraction must be above 0 over HTTP: the held-out images set the threshold "
                              "(set a fixed one afterwards with PUT /v1/models/{name}/threshold)")
        channels = await run_in_threadpool(stage_channels, config.backbone, config.feature_strides)
        check_feature_dim(config.feature_dim, config.backbone, channels)
    except (ConfigError, TypeError, ValueError) as exc:
        raise Unprocessable(f"invalid fit settings: {exc}") from None
    uploads = await _validated_uploads(request, files, config.image_size)
    if len(uploads) < 2:
        raise Unprocessable("fitting needs at least 2 normal images (one is held out to set the threshold)")
    params = {"config": config.to_dict(), "activate": ACTIVATE_ALWAYS if options.activate else ACTIVATE_NEVER}
    job = await run_in_threadpool(request.app.state.worker.submit, "fit", name, params, uploads)
    return JobAccepted(job_id=job.id, status=job.status)


@router.post("/{name}/adapt", response_model=JobAccepted, status_code=202, dependencies=[Depends(require(ADMIN))],
             responses=error_responses(400, 401, 403, 404, 409, 413, 422, 503))
async def adapt_model(
    request: Request,
    name: ModelName,
    options: Annotated[AdaptForm, Form()],
    files: Annotated[list[UploadFile], File(min_length=1, description="unlabeled images of the new condition (a few may be defective)")],
    source_files: Annotated[list[UploadFile] | None, File(description="uda only: normal images of the source domain")] = None,
) -> JobAccepted:
    """Adapt the active version to a new condition; scoring continues on it meanwhile.

    The PatchCore methods adapt a version to its new camera or lighting; `uda` trains a new global
    detector from the source normals (`source_files`) and the unlabeled target."""
    existing(request, name)
    model = request.app.state.registry.get(name)
    adapter = get_adapter(options.method)
    settings = {**form_values(options, AdaptConfig, ADAPT_OPTIONS), **form_values(options, UDAConfig, UDA_FIELDS)}
    if options.image_size is not None:
        settings["image_size"] = options.image_size
    if settings.get("encoder") == "clip":
        server = request.app.state.settings
        if not server.clip_checkpoint:
            raise Unprocessable("encoder=clip needs a local open_clip checkpoint on the server (PATCHSHIFT_CLIP_CHECKPOINT)")
        settings.update(clip_model=server.clip_model, clip_checkpoint=str(server.clip_checkpoint))
    if source_files and not adapter.min_source_images:
        raise Unprocessable(f"source_files belong to methods that learn from source images (uda), not to {adapter.name}")
    try:
        adapter.check_parent(model, f"the active version of {name!r}")
        cfg = adapter.configure(model, settings)
    except ConfigError as exc:
        raise Unprocessable(str(exc)) from None
    size = adapter.input_size(model, cfg)
    sources = await _validated_uploads(request, source_files, size) if source_files else []
    uploads = await _validated_uploads(request, files, size)
    if adapter.min_source_images and not sources:
        raise Unprocessable(f"method={adapter.name} needs source_files: normal images of the source domain (a model keeps no training images)")
    try:
        adapter.check_counts(len(uploads), len(sources))
    except DatasetError as exc:
        raise Unprocessable(str(exc)) from None
    params = {"config": {"method": adapter.name, **settings}, "source_version": model.version, "activate": options.activate}
    job = await run_in_threadpool(request.app.state.worker.submit, "adapt", name, params, uploads, sources)
    return JobAccepted(job_id=job.id, status=job.status)


@router.post("/{name}/versions/{version}/activate", response_model=ModelOut, dependencies=[Depends(require(ADMIN))], responses=ADMIN_ERRORS)
async def activate_version(request: Request, name: ModelName, version: VersionName) -> ModelOut:
    """Roll back or forward: the version scores from the next request on."""
    existing(request, name)
    check_name(version, "version")
    await run_in_threadpool(request.app.state.registry.activate, name, version)
    return describe(request, name)


class ThresholdIn(BaseModel):
    threshold: float = Field(
        ..., ge=THRESHOLD_BOUNDS.ge, le=THRESHOLD_BOUNDS.le, allow_inf_nan=False,
        description=f"new decision threshold on the anomaly score ({THRESHOLD_BOUNDS.describe()})",
    )


@router.put("/{name}/threshold", response_model=ModelOut, dependencies=[Depends(require(ADMIN))],
            responses=error_responses(400, 401, 403, 404, 409, 422, 503))
async def set_threshold(request: Request, name: ModelName, body: Annotated[ThresholdIn, Body()]) -> ModelOut:
    """Override the threshold: writes a new version (parent: the active one) and activates it.

    Refused (409) while the model has an unfinished job: an adaptation that ends later would
    otherwise replace the operator's threshold version without a word."""
    existing(request, name)
    state = request.app.state
    if state.worker.busy(name):
        raise Conflict(f"model {name!r} has an unfinished job; wait for it or cancel it, then set the threshold")
    await run_in_threadpool(override_threshold, state.store, state.registry, name, body.threshold)
    return describe(request, name)


@router.delete("/{name}/versions/{version}", status_code=204, dependencies=[Depends(require(ADMIN))], responses=error_responses(400, 401, 403, 404, 409))
def delete_version(request: Request, name: ModelName, version: VersionName) -> None:
    existing(request, name)
    request.app.state.store.delete_version(name, check_name(version, "version"))


@router.delete("/{name}", status_code=204, dependencies=[Depends(require(ADMIN))], responses=error_responses(400, 401, 403, 404, 409))
def delete_model(request: Request, name: ModelName) -> None:
    existing(request, name)
    state = request.app.state
    if state.worker.busy(name):
        raise Conflict(f"model {name!r} has an unfinished job; cancel it first")
    state.registry.forget(name)
    state.store.delete_model(name)
