"""Label-free decision thresholds from scores of images presumed normal."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from patchshift.core.common.errors import ConfigError
from patchshift.core.common.options import Bounds


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
# condition fits mu and beta through the 20th percentile and the median of its target images'
# normal scores (out of fold, over the patches other images vouch for) and flags above the law's
# (1 - false alarm rate) quantile. Chosen with one product left out among seven pairs:
# docs/adaptation.md, "The verdict after adaptation".
GUMBEL_QUANTILES = (0.20, 0.50)
# Below this many target images their quantiles are one or two images' scores: the threshold stays.
MIN_TRANSFER_IMAGES = 5


def gumbel_reduced(p: float | np.ndarray) -> float | np.ndarray:
    """The standard Gumbel law's quantile function: -log(-log(p))."""
    return -np.log(-np.log(p))


# How sure the law is, two ways, the wider one stated: the law's own sampling spread (as many images
# drawn from the fitted law, the law fitted again, the share of the fitted law's images above each
# such threshold: this depends on the number of images alone, for 1% asked 0.2% to 4.7% at 64
# images, 0.3% to 3.4% at 100) and the batch's (the batch resampled, the law fitted to each
# resample, the share of its images above the chosen threshold: wider where the scores do not follow
# the law). BOOTSTRAP_DRAWS of each; the 5th to 95th percentile is the false-alarm interval the job
# result states. Where its upper end exceeds SUPPORT_FACTOR times the asked rate, the batch cannot
# support the threshold: a stated precision, not tuned (docs/adaptation.md, "The verdict after
# adaptation", measures what it lets through).
BOOTSTRAP_DRAWS = 200
SUPPORT_FACTOR = 4.0
# A threshold above nearly every image the batch itself finds suspect (a patch no other image
# vouches for) would pass the defects: with at least MIN_SUSPECTS such images and fewer than
# MIN_EXPECTED_RECALL of them flagged, the recall is taken to collapse and the gate keeps the
# parent. On the shift benchmark's half-defective batches 56-91% of the suspects of bsd, ELPV and
# the tiles are defective.
MIN_SUSPECTS = 5
MIN_EXPECTED_RECALL = 0.05


class TransferredThreshold(NamedTuple):
    """A new version's threshold; `kept_reason` says why the parent's stayed (None: it moved).

    expected_false_alarm_rate and false_alarm_interval (5th, 95th percentile) are the share of
    normal parts it is expected to flag and how sure that is; `supported` is False where the
    interval's upper end is more than SUPPORT_FACTOR times the asked rate (the gate then keeps
    the parent), and `note` says why in words."""

    value: float
    kept_reason: str | None = None
    expected_false_alarm_rate: float | None = None
    false_alarm_interval: tuple[float, float] | None = None
    supported: bool = True
    note: str | None = None
    # The target images with a patch no other image vouches for, and the share of them above the
    # threshold (None where the adapter cannot tell which patches are vouched for).
    suspects: int | None = None
    expected_recall: float | None = None

    @property
    def recall_collapses(self) -> bool:
        """Whether the threshold passes nearly every image the batch itself finds suspect (see
        MIN_EXPECTED_RECALL)."""
        return (
            self.expected_recall is not None
            and self.suspects >= MIN_SUSPECTS
            and self.expected_recall < MIN_EXPECTED_RECALL
        )

    def with_suspects(
        self, raw_scores: np.ndarray, normal_scores: np.ndarray
    ) -> TransferredThreshold:
        """The same threshold with its expected recall: raw_scores and normal_scores (S,) are the
        scored images' scores over all their patches and over the vouched ones; an image whose two
        differ is a suspect."""
        suspect = np.asarray(raw_scores) > np.asarray(normal_scores)
        count = int(suspect.sum())
        recall = float((np.asarray(raw_scores)[suspect] > self.value).mean()) if count else None
        updated = self._replace(suspects=count, expected_recall=recall)
        if updated.recall_collapses:
            collapse = (
                f"it flags {recall:.0%} of the {count} target images with a patch no other "
                "image vouches for: most defects would pass"
            )
            updated = updated._replace(note="; ".join(filter(None, [self.note, collapse])))
        return updated

    def to_dict(self) -> dict:
        """For the job result and the manifest."""
        interval = self.false_alarm_interval
        return {
            "expected_false_alarm_rate": self.expected_false_alarm_rate,
            "false_alarm_interval": None
            if interval is None
            else [round(interval[0], 5), round(interval[1], 5)],
            "supported": self.supported,
            "suspects": self.suspects,
            "expected_recall": self.expected_recall,
            "recall_collapses": self.recall_collapses,
            "note": self.note,
        }


def gumbel_law(values: np.ndarray, quantiles: tuple[float, float]) -> tuple[float, float] | None:
    """(location, scale) of the Gumbel law through these two quantiles of `values`; None without
    spread."""
    location, scale = refitted(np.asarray(values, dtype=np.float64).reshape(1, -1), quantiles)
    return (float(location[0]), float(scale[0])) if scale[0] > 0 else None


def gumbel_exceedance(threshold: float, location: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """Share of a Gumbel law's draws above `threshold`."""
    return -np.expm1(-np.exp(-(threshold - location) / scale))


def refitted(samples: np.ndarray, quantiles: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
    """(draws, n) samples -> per draw the (location, scale) of the law through their quantiles
    (scale <= 0: no spread)."""
    low, high = np.quantile(samples, quantiles, axis=1)
    scale = (high - low) / (gumbel_reduced(quantiles[1]) - gumbel_reduced(quantiles[0]))
    return low - scale * gumbel_reduced(quantiles[0]), scale


def false_alarm_spread(
    values: np.ndarray,
    threshold: float,
    false_alarm_rate: float,
    quantiles: tuple[float, float],
    draws: int = BOOTSTRAP_DRAWS,
    seed: int = 0,
) -> tuple[float, tuple[float, float]]:
    """(median, (5th, 95th percentile)) of the share of normal images `threshold` flags: the batch's
    bootstrap median, and the wider of the batch's and the law's own interval (see BOOTSTRAP_DRAWS).
    A resample without spread counts as flagging every image."""
    rng = np.random.default_rng(seed)
    location, scale = refitted(
        values[rng.integers(0, values.size, (draws, values.size))], quantiles
    )
    fitted = scale > 0
    batch = np.ones(draws)
    batch[fitted] = gumbel_exceedance(threshold, location[fitted], scale[fitted])
    law_location, law_scale = gumbel_law(values, quantiles)
    location, scale = refitted(rng.gumbel(law_location, law_scale, (draws, values.size)), quantiles)
    own = gumbel_exceedance(
        location + scale * gumbel_reduced(1.0 - false_alarm_rate), law_location, law_scale
    )
    own[~(scale > 0)] = 1.0
    (low, median, high), (own_low, own_high) = (
        np.quantile(batch, (0.05, 0.5, 0.95)),
        np.quantile(own, (0.05, 0.95)),
    )
    return float(median), (float(min(low, own_low)), float(max(high, own_high)))


def gumbel_threshold(
    scores: np.ndarray,
    false_alarm_rate: float,
    fallback: float,
    quantiles: tuple[float, float] = GUMBEL_QUANTILES,
    support_factor: float = SUPPORT_FACTOR,
) -> TransferredThreshold:
    """The threshold that flags `false_alarm_rate` of normal images, from scores of a batch that may
    hold many defective images (see GUMBEL_QUANTILES), with how sure that rate is (BOOTSTRAP_DRAWS).
    `fallback` (the parent's threshold) stays, with the reason, when too few images scored, the rate
    is 0, or their low quantiles do not spread; such a threshold is not supported by the batch."""
    values = np.asarray(scores, dtype=np.float64).ravel()
    if values.size < MIN_TRANSFER_IMAGES:
        reason = (
            f"only {values.size} target image(s) scored (a fit needs {MIN_TRANSFER_IMAGES}); "
            "the parent's threshold stays"
        )
        return TransferredThreshold(float(fallback), reason, supported=False, note=reason)
    if not 0 < false_alarm_rate < 1:
        return TransferredThreshold(
            float(fallback),
            f"false_alarm_rate {false_alarm_rate} asks for no false alarm, which a law "
            "fitted to a batch cannot promise; the parent's threshold stays",
        )
    if not np.all(np.isfinite(values)):
        raise ConfigError("cannot set a threshold: some scores are not finite")
    law = gumbel_law(values, quantiles)
    if law is None:  # identical scores in the lower part: nothing to fit a spread to
        reason = (
            "the target images' lower scores are all equal, so they give no spread to fit; "
            "the parent's threshold stays"
        )
        return TransferredThreshold(float(fallback), reason, supported=False, note=reason)
    location, scale = law
    value = float(location + scale * gumbel_reduced(1.0 - false_alarm_rate))
    expected, (low, high) = false_alarm_spread(values, value, false_alarm_rate, quantiles)
    supported = high <= support_factor * false_alarm_rate
    note = (
        f"expected to flag {expected:.1%} of normal parts (90% interval {low:.1%} to {high:.1%}; "
        f"{false_alarm_rate:.1%} asked), "
        f"from {values.size} target images"
    )
    if not supported:
        note += (
            f"; the batch cannot support this threshold: it may flag up to {high:.1%}, more than "
            f"{support_factor:g} times "
            "the asked rate (more images of the new condition narrow it)"
        )
    return TransferredThreshold(value, None, expected, (low, high), supported, note)


# A threshold given by a person: finite and inside these bounds. Scores are feature distances;
# a threshold outside them makes every verdict the same (1e308 passes everything, 5e-324 nothing).
THRESHOLD_BOUNDS = Bounds(ge=1e-6, le=1e6, help="decision threshold on the anomaly score")


def transferred_calibration(source_scores: list[float], target_scores: np.ndarray) -> list[float]:
    """The scores a new version keeps as its normal scores (the gate's no-shift band reads them):
    the target's, once there are enough of them to have moved the threshold; else the source's, as
    the threshold stayed."""
    target = [float(v) for v in np.asarray(target_scores, dtype=np.float64).ravel()]
    return target if len(target) >= MIN_TRANSFER_IMAGES else list(source_scores)
