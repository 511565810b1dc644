"""Label-free drift: has the stream of scored images left the condition a version was made for?

Each image is summarised by a descriptor: per feature channel, the mean and the standard deviation
of its patch features over the image (2 x D numbers). Lighting moves the means; blur, noise and
contrast move the spreads. A version keeps the mean and spread of these descriptors over its
reference images (the training images at fit, the target images at adaptation). The statistic for
a window of n recent images is the mean over channels of the squared standardised difference of
means, divided by its expectation under no drift:

    S = mean_c (mu_w,c - mu_r,c)^2 / (sigma_r,c^2 (1/n + 1/N_r))

so S is about 1 when nothing changed (whatever the channels' correlation) and grows with n when
the condition changed. It is a two-sample z-test of the means, averaged over channels.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass

import numpy as np
import torch

from patchshift.core.common.errors import ConfigError

MIN_STD = 1e-6
DEFAULT_WINDOW = 32  # images per drift window
DEFAULT_THRESHOLD = 10.0  # S above this is drift; measured in benchmarks/drift_statistic.py


def image_descriptors(features: torch.Tensor) -> torch.Tensor:
    """(B, h, w, D) patch features -> (B, 2D): per-channel mean and spread over each image."""
    flat = features.flatten(1, 2)
    return torch.cat([flat.mean(dim=1), flat.std(dim=1, unbiased=False)], dim=1)


@dataclass(frozen=True)
class DriftReference:
    mean: np.ndarray  # (2D,)
    std: np.ndarray  # (2D,)
    n_images: int

    @classmethod
    def from_descriptors(cls, descriptors: np.ndarray) -> DriftReference:
        descriptors = np.asarray(descriptors, dtype=np.float64)
        if descriptors.ndim != 2 or len(descriptors) < 2:
            raise ConfigError("a drift reference needs the descriptors of at least two images")
        return cls(
            descriptors.mean(axis=0),
            np.maximum(descriptors.std(axis=0, ddof=1), MIN_STD),
            len(descriptors),
        )

    def to_dict(self) -> dict:
        return {"mean": self.mean.tolist(), "std": self.std.tolist(), "n_images": self.n_images}

    @classmethod
    def from_dict(cls, data: dict) -> DriftReference:
        mean, std = (
            np.asarray(data["mean"], dtype=np.float64),
            np.asarray(data["std"], dtype=np.float64),
        )
        if mean.shape != std.shape or mean.ndim != 1 or int(data["n_images"]) < 2:
            raise ConfigError(
                "drift reference is malformed (mean and std must be equal-length vectors)"
            )
        return cls(mean, np.maximum(std, MIN_STD), int(data["n_images"]))


def drift_statistic(reference: DriftReference, descriptors: np.ndarray) -> float:
    """S for a window of descriptors (n, 2D); about 1 without drift."""
    descriptors = np.asarray(descriptors, dtype=np.float64)
    if descriptors.ndim != 2 or descriptors.shape[1] != reference.mean.shape[0]:
        raise ConfigError(
            f"descriptors of shape {descriptors.shape} do not match the reference "
            f"({reference.mean.shape[0]} channels)"
        )
    n = len(descriptors)
    if n == 0:
        return float("nan")
    z2 = (descriptors.mean(axis=0) - reference.mean) ** 2 / (
        reference.std**2 * (1.0 / n + 1.0 / reference.n_images)
    )
    return float(z2.mean())


class DriftMonitor:
    """A sliding window of recent descriptors and verdicts against one reference.

    Thread-safe: the service adds from the request path, resets from the job worker and reads from
    request threads; one lock guards the window, and the statistic is computed on a snapshot."""

    def __init__(self, reference: DriftReference | None, window: int, threshold: float) -> None:
        if window < 2:
            raise ConfigError("the drift window must hold at least 2 images")
        self.reference = reference
        self.window = window
        self.threshold = threshold
        self._descriptors: deque[np.ndarray] = deque(maxlen=window)
        self._flags: deque[bool] = deque(maxlen=window)
        self._lock = threading.Lock()

    def add(self, descriptors: np.ndarray, anomalous: np.ndarray) -> None:
        with self._lock:
            for row, flag in zip(np.asarray(descriptors), np.asarray(anomalous), strict=False):
                self._descriptors.append(row)
                self._flags.append(bool(flag))

    @property
    def n_recent(self) -> int:
        return len(self._descriptors)

    def statistic(self) -> float | None:
        """None until the window is full (a half-empty window would be noisy) or without a
        reference."""
        with self._lock:
            reference = self.reference
            if reference is None or len(self._descriptors) < self.window:
                return None
            window = list(self._descriptors)
        return drift_statistic(reference, np.stack(window))

    def verdict(self) -> tuple[float | None, bool]:
        """(statistic, drifting) from one computation of the statistic."""
        value = self.statistic()
        return value, value is not None and value > self.threshold

    def drifting(self) -> bool:
        return self.verdict()[1]

    def anomalous_share(self) -> float | None:
        with self._lock:
            flags = list(self._flags)
        return float(np.mean(flags)) if flags else None

    def reset(self, reference: DriftReference | None) -> None:
        with self._lock:
            self.reference = reference
            self._descriptors.clear()
            self._flags.clear()
