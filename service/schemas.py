"""Response bodies (they also document the API at /docs)."""

from __future__ import annotations

from pydantic import BaseModel


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


class DriftOut(BaseModel):
    statistic: float | None  # about 1 without drift; None until the window is full
    threshold: float
    window: int
    recent_images: int
    drifting: bool
    recent_anomalous_share: float | None
    auto_adapt: bool


class ModelOut(BaseModel):
    name: str
    active_version: str | None
    loaded: bool
    load_error: str | None
    versions: list[VersionOut]
    drift: DriftOut | None


class ModelSummary(BaseModel):
    name: str
    active_version: str | None
    loaded: bool
    versions: int
