"""Label-free decision thresholds from scores of images presumed normal."""

from __future__ import annotations

from typing import NamedTuple

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


# Image scores are maxima over many patch distances, so the scores of normal images follow an
# extreme-value (Gumbel) law: F(x) = exp(-exp(-(x - mu) / beta)). A version adapted to a new
# condition fits mu and beta through the 10th percentile and the median of its target images'
# out-of-fold scores and flags above the law's (1 - false alarm rate) quantile. Defective images
# score high: up to half of the batch they only push the median up, which widens the fit and errs
# towards fewer alarms. Measured in docs/benchmarks.md ("The threshold after adaptation: a Gumbel law").
GUMBEL_QUANTILES = (0.10, 0.50)
# Below this many target images their quantiles are one or two images' scores: the threshold stays.
MIN_TRANSFER_IMAGES = 5


def gumbel_reduced(p: float | np.ndarray) -> float | np.ndarray:
    """The standard Gumbel law's quantile function: -log(-log(p))."""
    return -np.log(-np.log(p))


class TransferredThreshold(NamedTuple):
    """A new version's threshold; `kept_reason` says why the parent's stayed (None: it moved)."""

    value: float
    kept_reason: str | None = None


def gumbel_threshold(scores: np.ndarray, false_alarm_rate: float, fallback: float,
                     quantiles: tuple[float, float] = GUMBEL_QUANTILES) -> TransferredThreshold:
    """The threshold that flags `false_alarm_rate` of normal images, from scores of a batch that may
    hold many defective images (see GUMBEL_QUANTILES). `fallback` (the parent's threshold) stays,
    with the reason, when too few images scored, the rate is 0, or their low quantiles do not spread."""
    values = np.asarray(scores, dtype=np.float64).ravel()
    if values.size < MIN_TRANSFER_IMAGES:
        return TransferredThreshold(float(fallback), f"only {values.size} target image(s) scored (a fit needs "
                                    f"{MIN_TRANSFER_IMAGES}); the parent's threshold stays")
    if not 0 < false_alarm_rate < 1:
        return TransferredThreshold(float(fallback), f"false_alarm_rate {false_alarm_rate} asks for no false alarm, which a law "
                                    "fitted to a batch cannot promise; the parent's threshold stays")
    if not np.all(np.isfinite(values)):
        raise ConfigError("cannot set a threshold: some scores are not finite")
    (p_low, p_high), (low, high) = quantiles, np.quantile(values, quantiles)
    scale = (high - low) / (gumbel_reduced(p_high) - gumbel_reduced(p_low))
    if not scale > 0:  # identical scores in the lower part: nothing to fit a spread to
        return TransferredThreshold(float(fallback), "the target images' lower scores are all equal, so they give no spread "
                                    "to fit; the parent's threshold stays")
    location = low - scale * gumbel_reduced(p_low)
    return TransferredThreshold(float(location + scale * gumbel_reduced(1.0 - false_alarm_rate)))


# A threshold given by a person: finite and inside these bounds. Scores are feature distances;
# a threshold outside them makes every verdict the same (1e308 passes everything, 5e-324 nothing).
THRESHOLD_BOUNDS = Bounds(ge=1e-6, le=1e6, help="decision threshold on the anomaly score")


def transferred_calibration(source_scores: list[float], target_scores: np.ndarray) -> list[float]:
    """The scores a new version keeps as its normal scores (the gate's no-shift band reads them): the
    target's, once there are enough of them to have moved the threshold; else the source's, as the
    threshold stayed."""
    target = [float(v) for v in np.asarray(target_scores, dtype=np.float64).ravel()]
    return target if len(target) >= MIN_TRANSFER_IMAGES else list(source_scores)
