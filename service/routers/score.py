"""POST /v1/models/{name}/score: the line controller's call; and scoring with a given version, for
review."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Depends, File, Form, UploadFile
from fastapi.concurrency import run_in_threadpool

from patchshift.core.common.images import resize_batch
from patchshift.core.engine.detector import Detector
from patchshift.service.auth import READ, require
from patchshift.service.deps import (
    BatcherDep,
    DriftDep,
    HistoriesDep,
    MetricsDep,
    ServingDep,
    SettingsDep,
    StoreDep,
)
from patchshift.service.history import record_line
from patchshift.service.http_errors import Conflict, Unprocessable
from patchshift.service.operations import require_model
from patchshift.service.routers.models import ModelName, VersionName
from patchshift.service.schemas import ReviewResponse, ScoreResponse, error_responses
from patchshift.service.scoring import (
    MicroBatcher,
    build_results,
    decode_uploads,
    recent_as_decoded,
)
from patchshift.service.settings import Settings
from patchshift.service.store import check_name
from patchshift.service.uploads import read_files

router = APIRouter(prefix="/v1/models", tags=["scoring"])


Heatmap = Annotated[
    Literal["none", "png", "png-legend"],
    Form(
        description="png: base64 overlay PNG per image (longer side at most "
        "PATCHSHIFT_HEATMAP_MAX_SIDE); png-legend: with a colour legend below it"
    ),
]
Files = Annotated[
    list[UploadFile], File(min_length=1, description="1..PATCHSHIFT_MAX_FILES images")
]


async def score_with(
    model: Detector,
    name: str,
    files: list[UploadFile],
    heatmap: str,
    settings: Settings,
    batcher: MicroBatcher,
):
    """(uploads, decoded, scored, results) of one request, all by `model`."""
    wanted = heatmap != "none"
    if wanted and not model.gives_heatmaps:
        raise Unprocessable(
            f"model {name!r} version {model.version} is a {model.kind} model, a global detector: "
            "no heatmaps (send heatmap=none)"
        )
    uploads = await read_files(files, settings.max_files, settings.max_file_bytes)
    preview = settings.heatmap_max_side if wanted else None
    decoded = await run_in_threadpool(decode_uploads, uploads, model.config.image_size, preview)
    scored = await batcher.score(model, decoded.batch)
    results = await run_in_threadpool(
        build_results, model, decoded, scored, wanted, heatmap == "png-legend"
    )
    return uploads, decoded, scored, results


@router.post(
    "/{name}/score",
    response_model=ScoreResponse,
    response_model_exclude_none=True,
    dependencies=[Depends(require(READ))],
    responses=error_responses(400, 401, 403, 404, 413, 422, 503),
)
async def score(
    name: ModelName,
    files: Files,
    serving: ServingDep,
    settings: SettingsDep,
    batcher: BatcherDep,
    metrics: MetricsDep,
    drift: DriftDep,
    histories: HistoriesDep,
    heatmap: Heatmap = "none",
) -> ScoreResponse:
    """Score, threshold and verdict per image. A batch with any unreadable file fails whole (422
    naming each)."""
    model = serving.get(name)  # this version scores the whole request
    uploads, decoded, scored, results = await score_with(
        model, name, files, heatmap, settings, batcher
    )
    flags = scored.scores > model.threshold
    version = model.version or ""
    metrics.images_scored.labels(name, version).inc(len(results))
    metrics.anomalies.labels(name, version).inc(int(flags.sum()))
    for value in scored.scores:
        metrics.score_ratio.labels(name).observe(
            float(value) / model.threshold if model.threshold > 0 else 0.0
        )

    def observe() -> (
        None
    ):  # off the event loop: a self-started adaptation writes its images before the answer goes out
        verdict = drift.observe(
            name, model, scored.descriptors, flags, uploads if settings.auto_adapt else []
        )
        record_line(
            histories.of(name),
            settings.drift_threshold,
            model,
            decoded.names,
            decoded.batch.numpy(),
            scored,
            flags,
            verdict,
        )

    await run_in_threadpool(observe)
    return ScoreResponse(model=name, version=version, results=results)


@router.post(
    "/{name}/versions/{version}/score",
    response_model=ScoreResponse,
    response_model_exclude_none=True,
    dependencies=[Depends(require(READ))],
    responses=error_responses(400, 401, 403, 404, 413, 422, 503),
)
async def score_version(
    name: ModelName,
    version: VersionName,
    files: Files,
    store: StoreDep,
    serving: ServingDep,
    settings: SettingsDep,
    batcher: BatcherDep,
    heatmap: Heatmap = "none",
) -> ScoreResponse:
    """Score with any version, active or not, to review a candidate before activating it. It is not
    the line's scoring: no drift observation and no line metrics; the last version reviewed per
    model stays loaded."""
    require_model(store, name)
    model = await run_in_threadpool(serving.for_review, name, check_name(version, "version"))
    _, _, _, results = await score_with(model, name, files, heatmap, settings, batcher)
    return ScoreResponse(model=name, version=version, results=results)


@router.post(
    "/{name}/versions/{version}/review",
    response_model=ReviewResponse,
    response_model_exclude_none=True,
    dependencies=[Depends(require(READ))],
    responses=error_responses(400, 401, 403, 404, 409, 503),
)
async def review_on_line_images(
    name: ModelName,
    version: VersionName,
    store: StoreDep,
    serving: ServingDep,
    batcher: BatcherDep,
    histories: HistoriesDep,
    heatmap: Heatmap = "none",
) -> ReviewResponse:
    """A candidate version against the active one, both scoring the same images: the ones the line
    sent lately (kept in memory, PATCHSHIFT_RECENT_IMAGES per model). Like review scoring, it counts
    nothing as the line's. Overlays come for each version that gives heatmaps."""
    require_model(store, name)
    candidate = await run_in_threadpool(serving.for_review, name, check_name(version, "version"))
    active = serving.get(name)
    line = histories.get(name)
    kept = line.recent() if line is not None else []
    if not kept:
        raise Conflict(
            f"no line images are kept for model {name!r} yet: score some on the line first "
            "(the service keeps none when PATCHSHIFT_RECENT_IMAGES is 0), or compare on uploaded "
            "images"
        )
    decoded = await run_in_threadpool(recent_as_decoded, kept)
    results = []
    for model in (active, candidate):
        scored = await batcher.score(model, resize_batch(decoded.batch, model.input_hw))
        wanted = heatmap != "none" and model.gives_heatmaps
        results.append(
            await run_in_threadpool(
                build_results, model, decoded, scored, wanted, heatmap == "png-legend"
            )
        )
    images = [
        {"filename": r.filename, "time": r.time, "number": r.number, "active": a, "candidate": c}
        for r, a, c in zip(kept, *results, strict=False)
    ]
    return ReviewResponse(
        model=name, active_version=active.version or "", candidate_version=version, images=images
    )


@router.get(
    "/{name}/history",
    dependencies=[Depends(require(READ))],
    responses=error_responses(400, 401, 403, 404),
)
def history(name: ModelName, store: StoreDep, histories: HistoriesDep) -> dict:
    """What the line showed lately (in memory, bounded per model, lost on restart): scores, drift
    statistics, and the latest images as overlay thumbnails (PATCHSHIFT_RECENT_IMAGES, 0: none)."""
    require_model(store, name)
    line = histories.get(name)
    return line.snapshot() if line is not None else {"scores": [], "drift": [], "recent_images": []}
