"""Detection and localisation metrics: image AUROC, pixel AUROC, AUPRO, F1 at a threshold, the
oracle threshold at a false-alarm rate.

AUROC and AUPRO share one threshold sweep: sort by score once, accumulate per-item weights of
the positive and negative classes, and keep one point per distinct score (ties move together).
The pixel metrics feed it per-bin weights instead of single pixels (see PIXEL_BINS).
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from patchshift.core.common.errors import ConfigError


def _sweep(
    scores: np.ndarray, positive_weight: np.ndarray, negative_weight: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Cumulative (negative, positive) weight above each distinct threshold, starting at (0, 0)."""
    order = np.argsort(-scores, kind="stable")
    sorted_scores = scores[order]
    pos = np.cumsum(positive_weight[order], dtype=np.float64)
    neg = np.cumsum(negative_weight[order], dtype=np.float64)
    last_of_tie = np.r_[np.flatnonzero(np.diff(sorted_scores)), sorted_scores.size - 1]
    return np.r_[0.0, neg[last_of_tie]], np.r_[0.0, pos[last_of_tie]]


def auroc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve; labels are 0/1 (or bool)."""
    labels = np.asarray(labels).ravel().astype(bool)
    scores = np.asarray(scores, dtype=np.float64).ravel()
    if labels.size != scores.size:
        raise ConfigError(f"{labels.size} labels but {scores.size} scores")
    n_pos = int(labels.sum())
    if n_pos == 0 or n_pos == labels.size:
        raise ConfigError("AUROC needs both normal and anomalous examples")
    fp, tp = _sweep(scores, labels.astype(np.float64), (~labels).astype(np.float64))
    return float(np.trapezoid(tp / n_pos, fp / (labels.size - n_pos)))


def image_auroc(labels: Sequence[int], scores: Sequence[float]) -> float:
    return auroc(np.asarray(labels), np.asarray(scores))


# Pixel metrics run over up to ~10^9 pixels: scores are binned into 2^16 equal-population bins
# (edges = quantiles of a strided sample of all pixels, so one extreme pixel cannot squash the
# rest into a few bins) and accumulated image by image, so memory stays O(bins). Only pixels
# within the same 1/65536 quantile slice tie; the curve is otherwise exact.
PIXEL_BINS = 1 << 16
EDGE_SAMPLE = 2_000_000


def _bin_edges(maps: np.ndarray) -> np.ndarray:
    total = sum(np.size(m) for m in maps)
    stride = max(1, total // EDGE_SAMPLE)
    sample = np.concatenate([np.asarray(m, dtype=np.float64).ravel()[::stride] for m in maps])
    if not np.all(np.isfinite(sample)):
        raise ConfigError("heatmaps contain non-finite values")
    return np.unique(sorted_quantiles(sample, np.linspace(0, 1, PIXEL_BINS + 1)[1:-1]))


def sorted_quantiles(values: np.ndarray, q: np.ndarray) -> np.ndarray:
    """np.quantile(values, q) (linear interpolation, the same floats) by one sort: numpy partitions
    once per requested quantile, which takes seconds for 65,535 of them."""
    ordered = np.sort(values)
    position = (len(ordered) - 1) * q
    low = np.floor(position).astype(np.int64)
    high = np.minimum(low + 1, len(ordered) - 1)
    t = position - low
    a, b = ordered[low], ordered[high]
    return np.where(t >= 0.5, b - (b - a) * (1 - t), a + (b - a) * t)


def _bins(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    return np.searchsorted(edges, np.asarray(values, dtype=np.float64).ravel(), side="right")


def pixel_auroc(masks: np.ndarray, maps: np.ndarray) -> float:
    """AUROC over every pixel of every image; masks and maps are (N, H, W)."""
    edges = _bin_edges(maps)
    positive = np.zeros(PIXEL_BINS)
    negative = np.zeros(PIXEL_BINS)
    for mask, heat in zip(masks, maps, strict=False):
        index, defect = _bins(heat, edges), np.asarray(mask, dtype=bool).ravel()
        positive += np.bincount(index[defect], minlength=PIXEL_BINS)
        negative += np.bincount(index[~defect], minlength=PIXEL_BINS)
    if positive.sum() == 0 or negative.sum() == 0:
        raise ConfigError("pixel AUROC needs both defect and defect-free pixels")
    fp, tp = _sweep(np.arange(PIXEL_BINS, dtype=np.float64), positive, negative)
    return float(np.trapezoid(tp / tp[-1], fp / fp[-1]))


def aupro(masks: np.ndarray, maps: np.ndarray, max_fpr: float = 0.3) -> float:
    """Area under the per-region-overlap curve up to `max_fpr`, divided by `max_fpr` (MVTec AD).

    Each connected defect region (8-connectivity, per image) weighs equally; the false-positive
    rate counts every defect-free pixel.
    """
    masks = np.asarray(masks).astype(bool)
    if masks.shape != np.shape(maps) or masks.ndim != 3:
        raise ConfigError(f"masks {masks.shape} and maps {np.shape(maps)} must both be (N, H, W)")
    edges = _bin_edges(maps)
    overlap = np.zeros(PIXEL_BINS)  # per bin: sum over region pixels of 1 / region size
    negative = np.zeros(PIXEL_BINS)
    n_regions = 0
    for mask, heat in zip(masks, maps, strict=False):
        index = _bins(heat, edges)
        negative += np.bincount(index[~mask.ravel()], minlength=PIXEL_BINS)
        if not mask.any():
            continue
        count, labels = cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)
        sizes = np.bincount(labels.ravel(), minlength=count)
        inside = labels.ravel() > 0
        overlap += np.bincount(
            index[inside], weights=1.0 / sizes[labels.ravel()[inside]], minlength=PIXEL_BINS
        )
        n_regions += count - 1
    if n_regions == 0 or negative.sum() == 0:
        raise ConfigError("AUPRO needs defect regions and defect-free pixels")
    fpr, pro = _sweep(
        np.arange(PIXEL_BINS, dtype=np.float64), overlap / n_regions, negative / negative.sum()
    )
    cut = np.searchsorted(fpr, max_fpr, side="right")
    if cut < fpr.size:  # interpolate the curve at exactly max_fpr
        f0, f1, p0, p1 = fpr[cut - 1], fpr[cut], pro[cut - 1], pro[cut]
        end = p0 + (p1 - p0) * (max_fpr - f0) / (f1 - f0) if f1 > f0 else p1
        fpr, pro = np.r_[fpr[:cut], max_fpr], np.r_[pro[:cut], end]
    return float(np.trapezoid(pro, fpr) / max_fpr)


def f1_at_threshold(labels: Sequence[int], scores: Sequence[float], threshold: float) -> float:
    """F1 of 'anomalous' = score > threshold, anomalous being the positive class."""
    labels = np.asarray(labels).astype(bool)
    predicted = np.asarray(scores) > threshold
    tp = int((predicted & labels).sum())
    fp = int((predicted & ~labels).sum())
    fn = int((~predicted & labels).sum())
    return 2 * tp / (2 * tp + fp + fn) if tp else 0.0


def oracle_threshold(good_scores: Sequence[float], false_alarm_rate: float) -> float:
    """The threshold a person with labels would set: it flags (score > threshold) exactly
    floor(rate x n) of these good images (fewer where scores tie), the most the rate allows."""
    good = np.sort(np.asarray(good_scores, dtype=np.float64).ravel())[::-1]
    if good.size == 0:
        raise ConfigError("the oracle threshold needs good images")
    if not 0 <= false_alarm_rate < 1:
        raise ConfigError(f"false-alarm rate {false_alarm_rate} must lie in [0, 1)")
    return float(good[int(np.floor(false_alarm_rate * good.size + 1e-9))])


def oracle_recall(
    labels: Sequence[int], scores: Sequence[float], false_alarm_rate: float
) -> tuple[float, float]:
    """(threshold, recall) of the oracle threshold: how many defects the line could catch at this
    false-alarm rate if the threshold were perfect; a version's own recall is compared with it."""
    labels = np.asarray(labels).astype(bool)
    scores = np.asarray(scores, dtype=np.float64)
    if not labels.any():
        raise ConfigError("the oracle recall needs defective images")
    threshold = oracle_threshold(scores[~labels], false_alarm_rate)
    return threshold, float((scores[labels] > threshold).mean())
