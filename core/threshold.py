"""Label-free decision thresholds from scores of images presumed normal."""

from __future__ import annotations

import numpy as np

from .errors import ConfigError
from .options import Bounds


def quantile_threshold(scores: np.ndarray, quantile: float) -> float:
    """The `quantile` of normal images' scores (linear interpolation); 1.0 is their maximum."""
    values = np.asarray(scores, dtype=np.float64).ravel()
    if values.size == 0:
        raise ConfigError("cannot set a threshold from zero images")
    if not np.all(np.isfinite(values)):
        raise ConfigError("cannot set a threshold: some scores are not finite")
    return float(np.quantile(values, quantile))


def transfer_threshold(source_scores: np.ndarray, source_threshold: float, target_scores: np.ndarray) -> float:
    """Move a threshold to a shifted score distribution that may hold some defects.

    The source threshold's robust z-score (distance from the median of the source's held-out
    normal scores, in units of their median absolute deviation) is kept; the median and MAD of
    the target scores stand in for the target's normal images, which stays true while fewer than
    half of the target images are defective. Falls back to the source threshold when either
    spread is zero.
    """
    source = np.asarray(source_scores, dtype=np.float64).ravel()
    target = np.asarray(target_scores, dtype=np.float64).ravel()
    if source.size == 0 or target.size == 0:
        return float(source_threshold)
    source_median, target_median = np.median(source), np.median(target)
    source_mad = np.median(np.abs(source - source_median))
    target_mad = np.median(np.abs(target - target_median))
    if source_mad <= 0 or target_mad <= 0:
        return float(source_threshold)
    z = (source_threshold - source_median) / source_mad
    return float(target_median + z * target_mad)


# A threshold given by a person: finite and inside these bounds. Scores are feature distances;
# a threshold outside them makes every verdict the same (1e308 passes everything, 5e-324 nothing).
THRESHOLD_BOUNDS = Bounds(ge=1e-6, le=1e6, help="decision threshold on the anomaly score")
