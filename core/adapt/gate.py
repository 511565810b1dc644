"""Label-free check that a new version fits the target condition better than its parent.

No labels exist at adaptation time, so the versions are compared against the target batch's own
zero-shot ranking: each target image's mutual score (core.engine.contamination: how far its worst
patch is from the patches of the other target images). A version that ranks the target images the
way the batch itself does (Spearman correlation of its scores with the mutual scores) separates the
odd images from the bulk; one that ranks them by the shift's noise does not. The new version goes
live only if its agreement beats the parent's by `margin`.

Before that, a batch with no shift is recognised: when the target images' lower quartile, scored by
the parent, lies in the central 90% of the parent's own calibration scores (normal images it never
saw), most of the batch already looks normal to the parent, and there is nothing to adapt to. Every
shifted batch measured puts it at the 99.8th percentile or above; clean ones at the 31st (bsd) and
83rd to 86th (deeppcb, whose test boards score a little higher than its training boards). Adapting
then can only cost accuracy (measured: docs/results.md, "The activation gate"), so the parent stays
active. Defective images score high, so the lower quartile stays among the normal ones while fewer
than three quarters of the batch are defective.

The batch's ranking can only judge when some of its patches stand out: where the mutual scores
have no outlier tail (boards: every image shows layouts few others show, and the defects are no
farther), each image's worst patch is normal variation and ranks the defective images near chance
(image AUROC 0.46-0.59 on deeppcb's batches without a tail; 0.71-0.80 on bsd's, which all have one,
0.58 under heavy noise). Then a version from an adapter that builds its memory from the batch
itself (`trusted_when_unranked`) goes live under a shift, and any other keeps the parent.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING

import numpy as np
import torch

from patchshift.core.engine.contamination import (
    NORMAL_TAIL_SHARE,
    TAIL_Z,
    FilterSettings,
    cut_applies,
    mutual_scores,
    outlier_tail,
)

if TYPE_CHECKING:
    from patchshift.core.engine.threshold import TransferredThreshold


@dataclass(frozen=True)
class GateVerdict:
    better: bool
    agreement_before: (
        float | None
    )  # Spearman correlation of the parent's target scores with the mutual scores
    agreement_after: float | None
    reason: str
    shift_percentile: float | None = (
        None  # the target's lower quartile among the parent's calibration scores, %
    )
    ranking_tail: float | None = None  # share of the batch's mutual patch scores in an outlier tail

    def to_dict(self) -> dict:
        return asdict(self)


def refuse_unsupported_threshold(
    verdict: GateVerdict, threshold: TransferredThreshold | None
) -> GateVerdict:
    """A version whose threshold the batch cannot support, or that passes nearly every image the
    batch finds suspect, stays out whatever its ranking: a confident number that flags far more than
    asked, or passes the defects, is worse on the line than the parent."""
    if (
        threshold is None
        or not verdict.better
        or (threshold.supported and not threshold.recall_collapses)
    ):
        return verdict
    return replace(
        verdict,
        better=False,
        reason=f"{verdict.reason}; but its threshold is not trustworthy ({threshold.note}): "
        "the parent stays active",
    )


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Rank correlation, ties averaged; 0 when either side is constant."""
    from scipy.stats import rankdata

    ranks_a, ranks_b = rankdata(a), rankdata(b)
    if ranks_a.std() == 0 or ranks_b.std() == 0:
        return 0.0
    return float(np.corrcoef(ranks_a, ranks_b)[0, 1])


def usable(scores: np.ndarray | None, n: int) -> bool:
    return (
        scores is not None
        and len(scores) == n
        and bool(np.all(np.isfinite(scores)))
        and np.ptp(scores) > 0
    )


@dataclass(frozen=True)
class BatchRanking:
    """The target batch's own zero-shot view of its images."""

    scores: np.ndarray  # (N,) each image's worst patch's mutual score
    tail: float | None = (
        None  # share of the batch's mutual patch scores in an outlier tail (None: not known)
    )

    @classmethod
    def of(cls, mutual: torch.Tensor, tail: float | None = None) -> BatchRanking:
        """(N, P) mutual patch scores -> the ranking and its tail (`tail`: already computed from
        them)."""
        return cls(mutual.amax(dim=1).cpu().numpy(), outlier_tail(mutual) if tail is None else tail)

    @classmethod
    def coerce(cls, ranking: BatchRanking | np.ndarray) -> BatchRanking:
        """A plain (N,) ranking (a plugin's, a test's) as one whose tail is not known."""
        return ranking if isinstance(ranking, cls) else cls(np.asarray(ranking))

    @property
    def informative(self) -> bool:
        """Whether some patches stand out (the test the filter's default cut makes), so the worst
        ones can rank the images; unknown counts as yes."""
        return self.tail is None or cut_applies(self.tail, NORMAL_TAIL_SHARE)

    def subset(self, index: np.ndarray) -> BatchRanking:
        return BatchRanking(np.asarray(self.scores)[index], self.tail)


def reference_ranking(feats: torch.Tensor, settings: FilterSettings) -> BatchRanking:
    """feats (N, h, w, D) through the source extractor -> the batch's ranking of its N images."""
    n = feats.shape[0]
    return BatchRanking.of(mutual_scores(feats.reshape(n, -1, feats.shape[-1]), settings))


# The central 90% of the parent's calibration scores, in percentiles: a target lower quartile inside
# it means no shift.
NO_SHIFT_BAND = (5.0, 95.0)
MIN_CALIBRATION_SCORES = 10


def shift_percentile(before: np.ndarray, calibration: np.ndarray | None) -> float | None:
    """Where the target's lower quartile (scored by the parent) falls among the parent's calibration
    scores, in percent; None when there are too few of them to tell."""
    if (
        calibration is None
        or len(calibration) < MIN_CALIBRATION_SCORES
        or not len(before)
        or not np.all(np.isfinite(before))
    ):
        return None
    return float(
        100.0 * np.mean(np.asarray(calibration, dtype=np.float64) < np.quantile(before, 0.25))
    )


def ordinal(percentile: float) -> str:
    """83 -> '83rd', 99.8 -> '99.8th': a percentile as a person reads it."""
    if 99.5 <= percentile < 100:
        return f"{min(percentile, 99.9):.1f}th"
    n = int(round(percentile))
    return f"{n}{'th' if 10 <= n % 100 <= 20 else {1: 'st', 2: 'nd', 3: 'rd'}.get(n % 10, 'th')}"


def no_shift_reason(percentile: float | None) -> str | None:
    """Why the parent already fits the target images, or None when it does not (or cannot tell)."""
    if percentile is None or not NO_SHIFT_BAND[0] <= percentile <= NO_SHIFT_BAND[1]:
        return None
    return (
        "the target images already score like the parent's own normal images (their lower "
        "quartile is at the "
        f"{ordinal(percentile)} percentile of its calibration scores, inside the central 90% of "
        "them, the "
        f"{ordinal(NO_SHIFT_BAND[0])} to {ordinal(NO_SHIFT_BAND[1])}): no shift to adapt to; the "
        "parent stays active"
    )


def judge(
    reference: BatchRanking | np.ndarray,
    before: np.ndarray,
    after: np.ndarray,
    margin: float = 0.0,
    calibration: np.ndarray | None = None,
    trust_unranked: bool = False,
) -> GateVerdict:
    """Compare two versions' scores of the same target images against the batch's own ranking;
    with the parent's `calibration` scores, first check that there is a shift at all. Where the
    ranking cannot judge (no outlier tail), the new version goes live only if `trust_unranked` (its
    memory was built from the batch) and the parent scores the batch above its normal images."""
    ranking = BatchRanking.coerce(reference)
    n = len(ranking.scores)
    if not usable(after, n):
        return GateVerdict(
            False,
            None,
            None,
            "the new version gave no usable scores of the target images "
            "(missing, not finite or all equal); the parent stays active",
        )
    agree_before = spearman(before, ranking.scores) if usable(before, n) else 0.0
    agree_after = spearman(after, ranking.scores)
    percentile = shift_percentile(before, calibration)
    unshifted = no_shift_reason(percentile)
    if unshifted is not None:
        return GateVerdict(False, agree_before, agree_after, unshifted, percentile, ranking.tail)
    if not ranking.informative:
        unranked = (
            f"no patch of the batch stands out from the others ({ranking.tail:.2%} of their "
            "mutual scores lie beyond "
            f"{TAIL_Z:g} robust deviations), so the batch's own ranking cannot tell which version "
            "ranks it better"
        )
        if trust_unranked and percentile is not None and percentile > NO_SHIFT_BAND[1]:
            return GateVerdict(
                True,
                agree_before,
                agree_after,
                f"{unranked}; the parent scores most of the batch above its normal "
                f"images (their lower quartile at the {ordinal(percentile)} percentile of its "
                "calibration scores) and "
                "the new version's memory was built from the batch: it goes live",
                percentile,
                ranking.tail,
            )
        return GateVerdict(
            False,
            agree_before,
            agree_after,
            f"{unranked}; the parent stays active (activate the new version "
            "by hand if it is wanted)",
            percentile,
            ranking.tail,
        )
    better = agree_after > agree_before + margin
    reason = (
        "the new version ranks the target images closer to their mutual ranking "
        f"({agree_after:.3f} against {agree_before:.3f})"
        if better
        else "the new version does not rank the target images closer to their mutual ranking "
        f"({agree_after:.3f} against {agree_before:.3f}); the parent stays active"
    )
    return GateVerdict(better, agree_before, agree_after, reason, percentile, ranking.tail)
