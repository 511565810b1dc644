"""Response bodies (they also document the API at /docs)."""

from __future__ import annotations

from pydantic import BaseModel, Field


class ErrorDetail(BaseModel):
    code: str
    message: str
    file: str | None = None  # the upload the error is about
    files: list[dict] | None = None  # every bad upload of a batch: [{"file", "message"}]
    job_id: str | None = None  # the unfinished job behind a 409


class ErrorOut(BaseModel):
    error: ErrorDetail


ERROR_MEANING = {
    400: "invalid model or version name",
    401: "missing or unknown API key",
    403: "the key's scope does not allow this",
    404: "no such model, version or job",
    409: "conflict with the model's state or an unfinished job",
    413: "body, file or file count over the limits",
    422: "invalid settings or unreadable images",
    503: "the model's active version cannot be loaded",
}


def error_responses(*codes: int) -> dict[int | str, dict]:
    """OpenAPI entries for the error statuses a route really returns (all share ErrorOut)."""
    return {code: {"model": ErrorOut, "description": ERROR_MEANING[code]} for code in codes}


class ScoreItem(BaseModel):
    filename: str
    score: float
    threshold: float
    anomalous: bool
    heatmap_png: str | None = None  # base64 PNG at the image's own size


class ScoreResponse(BaseModel):
    model: str
    version: str
    results: list[ScoreItem]


class ReviewItem(BaseModel):
    filename: str
    time: float  # when the line sent it (Unix seconds)
    active: ScoreItem
    candidate: ScoreItem


class ReviewResponse(BaseModel):
    model: str
    active_version: str
    candidate_version: str
    images: list[ReviewItem]  # the line's kept images, newest first


class JobAccepted(BaseModel):
    job_id: str
    status: str


class JobOut(BaseModel):
    id: str
    kind: str
    model: str
    status: str
    progress: float
    stage: str | None
    created: str
    started: str | None
    finished: str | None
    error: str | None
    result_version: str | None
    result: dict
    params: dict


class VersionOut(BaseModel):
    version: str
    kind: str  # patchcore (scores and heatmaps) or uda (global detector: scores only)
    active: bool
    parent: str | None
    method: str
    created: str
    threshold: float
    threshold_source: str
    backbone: str
    image_size: list[int]
    bank_size: int | None  # None for uda versions (no memory bank)
    details: dict


class CalibrationOut(BaseModel):
    """A new version with the threshold that known-good images give (not activated)."""

    model: str
    version: str
    parent: str
    threshold: float
    previous_threshold: float
    known_good_images: int
    false_alarm_rate: float
    # what the threshold is expected to flag and how sure that is (as after an adaptation)
    threshold_estimate: dict


class DriftOut(BaseModel):
    statistic: float | None  # about 1 without drift; None until the window is full
    threshold: float
    window: int
    recent_images: int
    drifting: bool
    recent_anomalous_share: float | None
    auto_adapt: bool


class UnreadableVersion(BaseModel):
    version: str
    error: str  # why its manifest cannot be read; it cannot be activated, only deleted


class ModelOut(BaseModel):
    name: str
    active_version: str | None
    loaded: bool
    load_error: str | None
    versions: list[VersionOut]
    unreadable_versions: list[UnreadableVersion] = []
    drift: DriftOut | None
    images_scored: int = 0  # line images scored since the service started (every version)


class ModelSummary(BaseModel):
    name: str
    active_version: str | None
    loaded: bool
    versions: int


class ActivationOut(BaseModel):
    """One change of a model's active version."""

    version: str
    previous: str | None = Field(description="the version active before (none for a new model)")
    cause: str = Field(description="fit, adaptation, threshold, or activate (a person's call)")
    at: str
