"""Label-free decision thresholds from scores of images presumed normal."""

from __future__ import annotations

import numpy as np

from .errors import ConfigError


def quantile_threshold(scores: np.ndarray, quantile: float) -> float:
    """The `quantile` of normal images' scores (linear interpolation); 1.0 is their maximum."""
    values = np.asarray(scores, dtype=np.float64).ravel()
    if values.size == 0:
        raise ConfigError("cannot set a threshold from zero images")
    if not np.all(np.isfinite(values)):
        raise ConfigError("cannot set a threshold: some scores are not finite")
    return float(np.quantile(values, quantile))
