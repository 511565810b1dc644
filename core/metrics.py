"""Detection and localisation metrics: image AUROC, pixel AUROC, AUPRO, F1 at a threshold.

AUROC and AUPRO share one threshold sweep: sort by score once, accumulate per-item weights of
the positive and negative classes, and keep one point per distinct score (ties move together).
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from .errors import ConfigError


def _sweep(scores: np.ndarray, positive_weight: np.ndarray, negative_weight: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
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


def pixel_auroc(masks: np.ndarray, maps: np.ndarray) -> float:
    """AUROC over every pixel of every image; masks and maps are (N, H, W)."""
    return auroc(np.asarray(masks).ravel(), np.asarray(maps, dtype=np.float32).ravel())


def aupro(masks: np.ndarray, maps: np.ndarray, max_fpr: float = 0.3) -> float:
    """Area under the per-region-overlap curve up to `max_fpr`, divided by `max_fpr` (MVTec AD).

    Each connected defect region (8-connectivity, per image) weighs equally; the false-positive
    rate counts every defect-free pixel.
    """
    masks = np.asarray(masks).astype(bool)
    maps = np.asarray(maps, dtype=np.float32)
    if masks.shape != maps.shape or masks.ndim != 3:
        raise ConfigError(f"masks {masks.shape} and maps {maps.shape} must both be (N, H, W)")
    region_weight = np.zeros(masks.shape, dtype=np.float64)
    n_regions = 0
    for i, mask in enumerate(masks):
        if not mask.any():
            continue
        count, labels = cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)
        sizes = np.bincount(labels.ravel(), minlength=count)
        per_pixel = np.where(labels > 0, 1.0 / sizes[labels], 0.0)
        region_weight[i] = per_pixel
        n_regions += count - 1
    n_negative = int((~masks).sum())
    if n_regions == 0 or n_negative == 0:
        raise ConfigError("AUPRO needs defect regions and defect-free pixels")
    fpr, pro = _sweep(maps.ravel(), region_weight.ravel() / n_regions, (~masks).ravel() / n_negative)
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
