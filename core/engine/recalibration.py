"""A version's threshold set again from parts a person knows are good, of the condition it meets.

Where the label-free threshold after adaptation cannot be trusted (its interval too wide, or it
passes what the batch itself finds suspect), a person who has checked a few dozen parts of the new
condition gives the version a threshold from those parts: the same law as after adaptation
(core.engine.threshold.gumbel_threshold, through other percentiles: KNOWN_GOOD_QUANTILES) fitted
to their scores, which are the version's own scores of normal parts it never saw, with the same
statement of how sure it is. The memory, the
extractor and everything else of the version stay; the result is a new version.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch

from patchshift.core.common.errors import ConfigError, DatasetError
from patchshift.core.engine.detector import Detector, with_threshold
from patchshift.core.engine.patchcore import Provenance
from patchshift.core.engine.threshold import (
    MIN_TRANSFER_IMAGES,
    TransferredThreshold,
    gumbel_law,
    gumbel_threshold,
)

MIN_KNOWN_GOOD = MIN_TRANSFER_IMAGES
# The law through the quartiles: after an adaptation it goes through the 20th percentile and the
# median because up to half the batch may be defective (GUMBEL_QUANTILES); known-good images hold no
# defect, so the law takes the spread of their middle half, the usual robust scale.
KNOWN_GOOD_QUANTILES = (0.25, 0.75)
METHOD = "threshold-known-good"


def known_good_threshold(scores: np.ndarray, false_alarm_rate: float) -> TransferredThreshold:
    """(N,) scores of known-good images -> the threshold flagging `false_alarm_rate` of good
    parts, with its expected rate and interval. Refused, with the reason, where the images cannot
    give one (too few, no spread, a rate that is not a share)."""
    values = np.asarray(scores, dtype=np.float64).ravel()
    if values.size < MIN_KNOWN_GOOD:
        raise DatasetError(
            f"{values.size} known-good image(s) are too few to set a threshold from; give at least "
            f"{MIN_KNOWN_GOOD} (about 90 pin a 1% false-alarm rate within 4x)"
        )
    if not 0 < false_alarm_rate < 1:
        raise ConfigError(
            f"false_alarm_rate must be above 0 and below 1 (a share of good parts), got "
            f"{false_alarm_rate}"
        )
    if not np.all(np.isfinite(values)):
        raise DatasetError("some known-good images scored a non-finite value; check the images")
    if gumbel_law(values, KNOWN_GOOD_QUANTILES) is None:
        raise DatasetError(
            "the known-good images' lower scores are all equal, so they give no spread to set a "
            "threshold from; give more varied images of the condition"
        )
    return gumbel_threshold(
        values, false_alarm_rate, float("nan"), KNOWN_GOOD_QUANTILES, images="known-good images"
    )


@torch.inference_mode()
def recalibrated(
    model: Detector, batches: Iterable[torch.Tensor], false_alarm_rate: float
) -> tuple[Detector, TransferredThreshold]:
    """`model` and a stream of (B, 3, H, W) batches of good parts at its input size -> a new,
    unsaved version with the threshold those images give (known_good_threshold), and that
    threshold's estimate. Their scores become the version's calibration scores (the gate's no-shift
    band reads them)."""
    scores, _ = model.score_batches(batches)
    scores = np.asarray(scores, dtype=np.float64)
    estimate = known_good_threshold(scores, false_alarm_rate)
    provenance = Provenance(
        method=METHOD,
        parent=model.version,
        threshold_source="known-good",
        calibration_scores=[float(v) for v in scores],
        n_train_images=model.provenance.n_train_images,
        details={
            "previous_threshold": model.threshold,
            "known_good_images": int(scores.size),
            "false_alarm_rate": float(false_alarm_rate),
            "threshold_estimate": estimate.to_dict(),
        },
    )
    return with_threshold(model, estimate.value, provenance), estimate
