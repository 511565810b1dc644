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


# The target score distribution's anchor: its lower quartile. Defective images score high, so
# the lower quartile stays among the normal images' scores even when more than half of the batch
# is defective (the median does not). On bsd's eight shifted conditions (53% of the adaptation
# images defective) moving the threshold by the shift of this quartile gave 1.9% false alarms on
# held-out good images (goal 1%; worst condition 11%); carrying the robust z-score over (median
# and MAD) gave thresholds above every image: 0 alarms and 0 defects caught (docs/adaptation.md).
TRANSFER_QUANTILE = 0.25
# Below this many target images their quartile is one or two images' scores: the threshold stays.
MIN_TRANSFER_IMAGES = 5


def transfer_threshold(source_scores: np.ndarray, source_threshold: float, target_scores: np.ndarray) -> float:
    """Move a threshold to a shifted score distribution that may hold many defects.

    The threshold keeps its distance above the lower quartile of the scores: the source's
    held-out normal scores' quartile is replaced by the target's. Only a shift is carried over,
    not a change of spread: any spread measured on a contaminated batch is widened by its defects
    (a robust z-score moved the threshold beyond every score on bsd). Falls back to the source
    threshold when there are no source scores or fewer than MIN_TRANSFER_IMAGES target scores.
    """
    source = np.asarray(source_scores, dtype=np.float64).ravel()
    target = np.asarray(target_scores, dtype=np.float64).ravel()
    if source.size == 0 or target.size < MIN_TRANSFER_IMAGES:
        return float(source_threshold)
    shift = np.quantile(target, TRANSFER_QUANTILE) - np.quantile(source, TRANSFER_QUANTILE)
    return float(source_threshold + shift)


# A threshold given by a person: finite and inside these bounds. Scores are feature distances;
# a threshold outside them makes every verdict the same (1e308 passes everything, 5e-324 nothing).
THRESHOLD_BOUNDS = Bounds(ge=1e-6, le=1e6, help="decision threshold on the anomaly score")


def transferred_calibration(source_scores: list[float], target_scores: np.ndarray) -> list[float]:
    """The scores a new version keeps to anchor its own next transfer: the target's, once there are
    enough of them to have moved the threshold; else the source's, as the threshold stayed."""
    target = [float(v) for v in np.asarray(target_scores, dtype=np.float64).ravel()]
    return target if len(target) >= MIN_TRANSFER_IMAGES else list(source_scores)
