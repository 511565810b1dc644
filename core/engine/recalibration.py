"""A version's threshold set again from parts a person knows are good, of the condition it meets.

Where the label-free threshold after adaptation cannot be trusted (its interval too wide, or it
passes what the batch itself finds suspect), a person who has checked parts of the new condition
gives the version a threshold from them. They hold no defect and are scored like the parts the
line will send, so no law is needed: the threshold is one of their own scores, chosen by rank
(split conformal calibration), and the share of good parts it flags is known exactly without any
assumption on the scores' shape: over such draws of N images, a new good part lands above the r-th
lowest of their N scores with probability (N + 1 - r) / (N + 1), and given the N images the share
above it follows a Beta(N + 1 - r, r) law. On the generated tiles a Gumbel law through the
known-good images' quartiles flagged 3.3% of the other good tiles where 1% was asked
(docs/results.md, "A threshold from known-good parts"). The memory, the extractor and everything
else of the version stay; the result is a new version.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch
from scipy.stats import beta

from patchshift.core.common.errors import ConfigError, DatasetError
from patchshift.core.engine.detector import Detector, with_threshold
from patchshift.core.engine.patchcore import Provenance
from patchshift.core.engine.threshold import (
    MIN_TRANSFER_IMAGES,
    SUPPORT_FACTOR,
    TransferredThreshold,
)
from patchshift.core.evaluation.evaluate import asked_false_alarm_rate

MIN_KNOWN_GOOD = MIN_TRANSFER_IMAGES
METHOD = "threshold-known-good"
# where the known-good scores come from (the new version's details.known_good_source)
UPLOADED, CHECKED_ON_THE_LINE = "uploaded images", "parts checked on the line"


def ordinal(k: int) -> str:
    suffix = "th" if 10 <= k % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(k % 10, "th")
    return f"{k}{suffix}"


def conformal_rank(n_images: int, false_alarm_rate: float) -> int:
    """The rank r (1 = lowest) of the score among N known-good ones that flags at most
    `false_alarm_rate` of good parts on average: ceil((N + 1)(1 - rate)), at most N (then the
    highest score, which flags 1 / (N + 1): more than asked where N + 1 < 1 / rate)."""
    return max(1, min(n_images, math.ceil((n_images + 1) * (1.0 - false_alarm_rate) - 1e-9)))


def flagged_share(n_images: int, rank: int) -> tuple[float, tuple[float, float]]:
    """(mean, (5th, 95th percentile)) of the share of good parts above the rank-th of N scores."""
    a, b = n_images + 1 - rank, rank
    low, high = beta.ppf([0.05, 0.95], a, b)
    return a / (n_images + 1), (float(low), float(high))


def images_needed(false_alarm_rate: float, support_factor: float = SUPPORT_FACTOR) -> int:
    """The fewest known-good images whose threshold's 95th percentile stays within
    `support_factor` times the asked rate."""
    if not 0 < false_alarm_rate < 1:
        raise ConfigError(f"no number of images pins a false-alarm rate of {false_alarm_rate}")
    n = MIN_KNOWN_GOOD
    while flagged_share(n, conformal_rank(n, false_alarm_rate))[1][1] > (
        support_factor * false_alarm_rate
    ):
        n += 1 if n < 1000 else n // 100
    return n


def check_known_good_request(
    n_images: int, false_alarm_rate: float, what: str = "known-good image(s)"
) -> None:
    """Refuse, before any scoring, fewer images than a threshold can be set from, or a rate that is
    not a share of good parts. `what` names the images in the message."""
    if n_images < MIN_KNOWN_GOOD:
        rate = false_alarm_rate if 0 < false_alarm_rate < 1 else 0.01
        raise DatasetError(
            f"{n_images} {what} are too few to set a threshold from; give at least "
            f"{MIN_KNOWN_GOOD} (about {images_needed(rate)} pin a {rate:.0%} false-alarm rate "
            f"within {SUPPORT_FACTOR:g}x)"
        )
    if not 0 < false_alarm_rate < 1:
        raise ConfigError(
            f"false_alarm_rate must be above 0 and below 1 (a share of good parts), got "
            f"{false_alarm_rate}"
        )


def calibration_rate(
    model: Detector,
    n_images: int,
    false_alarm_rate: float | None,
    what: str = "known-good image(s)",
) -> float:
    """The rate to calibrate `model` at (its own where none is given), once
    check_known_good_request accepts it with `n_images`: before any image is scored."""
    rate = asked_false_alarm_rate(model) if false_alarm_rate is None else false_alarm_rate
    check_known_good_request(n_images, rate, what)
    return rate


def known_good_threshold(
    scores: np.ndarray, false_alarm_rate: float, support_factor: float = SUPPORT_FACTOR
) -> TransferredThreshold:
    """(N,) scores of known-good images -> the threshold flagging at most `false_alarm_rate` of
    good parts (conformal_rank), its expected rate and 90% interval, and whether the images support
    it (the interval's upper end within `support_factor` times the asked rate, as after an
    adaptation). Refused, with the reason, where they cannot give one."""
    values = np.sort(np.asarray(scores, dtype=np.float64).ravel())
    check_known_good_request(values.size, false_alarm_rate)
    if not np.all(np.isfinite(values)):
        raise DatasetError("some known-good images scored a non-finite value; check the images")
    n = values.size
    rank = conformal_rank(n, false_alarm_rate)
    expected, (low, high) = flagged_share(n, rank)
    supported = high <= support_factor * false_alarm_rate
    place = "the highest" if rank == n else f"the {ordinal(n + 1 - rank)} highest"
    note = (
        f"expected to flag {expected:.1%} of normal parts (90% interval {low:.1%} to {high:.1%}; "
        f"{false_alarm_rate:.1%} asked), at {place} of {n} known-good images' scores"
    )
    if not supported:
        note += (
            f"; {n} known-good images cannot support this threshold: it may flag up to "
            f"{high:.1%}, more than {support_factor:g} times the asked rate (about "
            f"{images_needed(false_alarm_rate, support_factor)} pin it)"
        )
    return TransferredThreshold(
        float(values[rank - 1]), None, expected, (low, high), supported, note
    )


@torch.inference_mode()
def recalibrated(
    model: Detector, batches: Iterable[torch.Tensor], false_alarm_rate: float
) -> tuple[Detector, TransferredThreshold]:
    """`model` and a stream of (B, 3, H, W) batches of good parts at its input size -> a new,
    unsaved version with the threshold those images give (recalibrated_from_scores). Only the
    scores are kept, batch by batch: memory stays bounded at any count."""
    chunks = [model.score(batch).scores.cpu().numpy() for batch in batches]
    scores = np.concatenate(chunks).astype(np.float64) if chunks else np.zeros(0)
    return recalibrated_from_scores(model, scores, false_alarm_rate, UPLOADED)


def recalibrated_from_scores(
    model: Detector, scores: np.ndarray, false_alarm_rate: float, source: str
) -> tuple[Detector, TransferredThreshold]:
    """`model` and (N,) of its own scores of known-good parts (`source` says where they come from:
    UPLOADED images, or parts CHECKED_ON_THE_LINE) -> a new, unsaved version with the threshold they
    give (known_good_threshold), and that threshold's estimate. The scores become the version's
    calibration scores (the gate's no-shift band reads them)."""
    scores = np.asarray(scores, dtype=np.float64).ravel()
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
            "known_good_source": source,
            "false_alarm_rate": float(false_alarm_rate),
            "threshold_estimate": estimate.to_dict(),
        },
    )
    return with_threshold(model, estimate.value, provenance), estimate


def observed_share(hits: int, total: int) -> tuple[float | None, tuple[float, float] | None]:
    """`hits` of `total` checked parts -> (the share, its exact (Clopper-Pearson) 90% interval);
    (None, None) for no parts. What a person's checks say a version's verdicts really do."""
    if total <= 0:
        return None, None
    low = 0.0 if hits == 0 else float(beta.ppf(0.05, hits, total - hits + 1))
    high = 1.0 if hits == total else float(beta.ppf(0.95, hits + 1, total - hits))
    return hits / total, (low, high)


# A line's tolerance on checked parts: at most this many times the asked share of good parts
# flagged.
ALARM_FACTOR = 2.0


@dataclass(frozen=True)
class FalseAlarmCheck:
    """What the parts checked good say of a version's false alarms against the asked rate:
    `verdict` "above" (its 90% interval lies above ALARM_FACTOR x the asked rate), "within" (the
    interval's upper end is within it) or "open" (too few checks to tell); `note` in words."""

    verdict: str
    note: str


def judged_false_alarms(flagged: int, total: int, rate: float) -> FalseAlarmCheck:
    """`flagged` of `total` parts checked good, a version asking for `rate`."""
    bar = ALARM_FACTOR * rate
    share, interval = observed_share(flagged, total)
    if share is None:
        return FalseAlarmCheck("open", "no parts checked good yet")
    if not 0 < bar < 1:  # nothing asked, or a tolerance that every share keeps
        return FalseAlarmCheck(
            "open", f"the version asks for a {rate:.0%} false-alarm rate: no bound to check"
        )
    low, high = interval
    said = (
        f"it flags {flagged} of {total} parts checked good (90% interval {low:.1%} to {high:.1%})"
    )
    if low > bar:
        return FalseAlarmCheck(
            "above",
            f"{said}: more than {ALARM_FACTOR:g} times the {rate:.1%} asked; set its threshold "
            "from parts checked good (calibrate) once there are enough",
        )
    if high <= bar:
        return FalseAlarmCheck(
            "within", f"{said}: within {ALARM_FACTOR:g} times the {rate:.1%} asked"
        )
    return FalseAlarmCheck(
        "open",
        f"{said}: too few checks yet to tell whether it stays within {ALARM_FACTOR:g} times the "
        f"{rate:.1%} asked",
    )
