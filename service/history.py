"""What the line saw, per model, for the console: bounded rings in memory (never on disk).

Written by request threads after each line score request, read by GET /v1/models/{name}/history;
one lock per model's history, so a reader never sees a ring mid-append.
"""

from __future__ import annotations

import base64
import threading
import time
from collections import deque
from dataclasses import dataclass

import cv2
import numpy as np

from patchshift.core.engine.visualize import encode_jpeg, overlay

THUMBNAIL_SIDE = 240  # longer side of a kept image, in pixels


@dataclass(frozen=True)
class RecentImage:
    time: float
    filename: str
    version: str
    score: float
    threshold: float
    anomalous: bool
    thumbnail: (
        bytes  # JPEG: the photo as the model saw it, with its overlay when the model gives heatmaps
    )
    pixels: (
        np.ndarray
    )  # (H, W, 3) uint8 at the model input size: what a candidate version is reviewed on
    number: int  # the image's place among those this replica scored for the model (1 = first)


class History:
    def __init__(self, scores: int, drift_points: int, images: int) -> None:
        self._lock = threading.Lock()
        self._scores: deque[tuple[float, str, float, float, bool]] = deque(maxlen=scores)
        self._drift: deque[tuple[float, str, float, float, bool]] = deque(maxlen=drift_points)
        self._images: deque[RecentImage] = deque(maxlen=images)
        self.images_scored = 0  # since the service started; grows under the lock

    @property
    def image_capacity(self) -> int:
        return self._images.maxlen or 0

    def record(
        self,
        version: str,
        threshold: float,
        names: list[str],
        scores: np.ndarray,
        flags: np.ndarray,
        drift: tuple[float, float, bool] | None,
        thumbnails: list[bytes],
        pixels: list[np.ndarray],
    ) -> None:
        """One score request: its scores, the drift verdict after it (statistic, threshold,
        drifting) and the thumbnails and model inputs of its last images (as many as are kept)."""
        now = time.time()
        with self._lock:
            first = self.images_scored + 1
            self.images_scored += len(names)
            self._scores.extend(
                (now, version, float(s), threshold, bool(f))
                for s, f in zip(scores, flags, strict=False)
            )
            if drift is not None:
                self._drift.append((now, version, *drift))
            offset = len(names) - len(thumbnails)
            for i, picture in enumerate(thumbnails):
                j = offset + i
                self._images.append(
                    RecentImage(
                        now,
                        names[j],
                        version,
                        float(scores[j]),
                        threshold,
                        bool(flags[j]),
                        picture,
                        pixels[i],
                        first + j,
                    )
                )

    def recent(self) -> list[RecentImage]:
        """The kept line images, newest first (one consistent snapshot)."""
        with self._lock:
            return list(reversed(self._images))

    def snapshot(self) -> dict:
        with self._lock:
            scores, drift, images = list(self._scores), list(self._drift), list(self._images)
        return {
            "scores": [
                {"time": t, "version": v, "score": s, "threshold": th, "anomalous": a}
                for t, v, s, th, a in scores
            ],
            "drift": [
                {"time": t, "version": v, "statistic": s, "threshold": th, "drifting": d}
                for t, v, s, th, d in drift
            ],
            "recent_images": [
                {
                    "time": r.time,
                    "filename": r.filename,
                    "version": r.version,
                    "score": r.score,
                    "threshold": r.threshold,
                    "anomalous": r.anomalous,
                    "number": r.number,
                    "thumbnail_jpeg": base64.b64encode(r.thumbnail).decode(),
                }
                for r in reversed(images)
            ],
        }


def model_inputs(batch: np.ndarray, keep: int) -> list[np.ndarray]:
    """The last `keep` images of a (N, 3, H, W) float batch in [0, 1] as (H, W, 3) uint8 arrays."""
    return [
        np.ascontiguousarray(
            (np.clip(image.transpose(1, 2, 0), 0, 1) * 255).round().astype(np.uint8)
        )
        for image in batch[max(0, len(batch) - keep) :]
    ]


def thumbnails(pixels: list[np.ndarray], maps: np.ndarray | None, threshold: float) -> list[bytes]:
    """JPEG thumbnails of (H, W, 3) uint8 images, each with its overlay when `maps` (one (H, W) map
    per image) are given."""
    out = []
    for i, rgb in enumerate(pixels):
        heatmap = maps[i] if maps is not None else None
        scale = THUMBNAIL_SIDE / max(rgb.shape[:2])
        if (
            scale < 1
        ):  # shrink first: the overlay is then drawn on the thumbnail, not the full input
            size = (max(1, round(rgb.shape[1] * scale)), max(1, round(rgb.shape[0] * scale)))
            rgb = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)
            heatmap = (
                cv2.resize(heatmap, size, interpolation=cv2.INTER_AREA)
                if heatmap is not None
                else None
            )
        out.append(encode_jpeg(overlay(rgb, heatmap, threshold) if heatmap is not None else rgb))
    return out


class Histories:
    """Every model's History, created on its first line request; bounded by the settings."""

    def __init__(self, scores: int, drift_points: int, images: int) -> None:
        self._sizes = (scores, drift_points, images)
        self._histories: dict[str, History] = {}
        self._lock = threading.Lock()

    def of(self, name: str) -> History:
        with self._lock:
            if name not in self._histories:
                self._histories[name] = History(*self._sizes)
            return self._histories[name]

    def get(self, name: str) -> History | None:
        return self._histories.get(name)

    def forget(self, name: str) -> None:
        with self._lock:
            self._histories.pop(name, None)


def record_line(
    history: History,
    drift_threshold: float,
    model,
    names: list[str],
    batch: np.ndarray,
    scored,
    flags: np.ndarray,
    verdict: tuple[float | None, bool] | None,
) -> None:
    """Keep what one line score request showed, with the drift verdict the drift watch reached on it
    (None: `model` is no longer the active version, so nothing is kept)."""
    if verdict is None:
        return
    statistic, drifting = verdict
    drift = (
        None if statistic is None else (float(statistic), float(drift_threshold), bool(drifting))
    )
    keep = history.image_capacity
    pixels = model_inputs(batch, keep) if keep else []
    maps = scored.maps[len(batch) - len(pixels) :] if scored.maps is not None else None
    pictures = thumbnails(pixels, maps, model.threshold)
    history.record(
        model.version or "", model.threshold, names, scored.scores, flags, drift, pictures, pixels
    )
