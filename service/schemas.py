"""Response bodies (they also document the API at /docs)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


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
    number: (
        int  # its place among the images this replica scored for the model (names a checked part)
    )
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
    known_good_source: str  # "uploaded images" or "parts checked on the line"
    false_alarm_rate: float
    # what the threshold is expected to flag and how sure that is (as after an adaptation)
    threshold_estimate: dict


class CheckedPartIn(BaseModel):
    model_config = ConfigDict(strict=True)  # a check is what a person found: no coercion of types

    part: str = Field(
        min_length=1,
        max_length=200,
        pattern=r"^[^\x00-\x1f\x7f]+$",  # printable: no control characters (PostgreSQL refuses NUL)
        description="the line's name for the part (its image's file name, a serial number); a "
        "part checked again for the same version replaces its earlier check",
    )
    score: float = Field(
        allow_inf_nan=False, description="the version's score of the part, as scoring returned it"
    )
    good: bool = Field(strict=True, description="true: the person found no defect; false: a defect")


class CheckedPartsIn(BaseModel):
    parts: list[CheckedPartIn] = Field(min_length=1, max_length=1000)


class CheckedPartOut(BaseModel):
    part: str
    score: float
    good: bool
    flagged: bool  # above the version's threshold
    checked_at: str


class ObservedShare(BaseModel):
    """A share measured on checked parts, with its exact (Clopper-Pearson) 90% interval."""

    count: int = Field(description="parts checked in this group")
    flagged: int = Field(description="of them, above the version's threshold")
    share: float | None = Field(description="flagged / count (none before any check)")
    interval: list[float] | None


class FalseAlarmCheckOut(BaseModel):
    """Whether the parts checked good show the version flagging more than the line tolerates."""

    verdict: Literal["above", "within", "open"] = Field(
        description="above: the 90% interval of its false alarms lies above twice the asked rate; "
        "within: its upper end is within twice the asked rate; open: too few checks to tell"
    )
    note: str


class CheckedPartsOut(BaseModel):
    """What a version's verdicts really do on the parts a person checked, and what `calibrate`
    would set from the good ones."""

    model: str
    version: str
    threshold: float
    false_alarm_rate: float = Field(description="the share of good parts the threshold aims at")
    false_alarms: ObservedShare = Field(description="good parts the version flagged")
    recall: ObservedShare = Field(description="defective parts the version flagged")
    false_alarm_check: FalseAlarmCheckOut
    # calibrate(from_checked_parts=true) now: the threshold_estimate it would state, or why not
    calibration: dict | None
    calibration_note: str
    parts: list[CheckedPartOut] = Field(description="the latest checks, newest first (at most 200)")


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
