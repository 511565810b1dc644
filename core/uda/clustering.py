"""k-means on the frozen encoder's features and the dominant-cluster rule (anomaly scarcity)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from patchshift.core.common.errors import DatasetError


def require_images_for_clusters(n_images: int, k: int) -> None:
    """A dominant cluster among k needs 2 target images per cluster."""
    if n_images < 2 * k:
        raise DatasetError(
            f"UDA needs at least {2 * k} target images to find a dominant cluster among {k} "
            f"(2 per cluster), got {n_images}; add images of the new condition or lower the "
            "clusters setting (--clusters / clusters)"
        )


def cluster_descriptors(features: torch.Tensor) -> torch.Tensor:
    """(N, h, w, D) patch features -> (N, 2D) image descriptors for k-means: the unit-length mean
    and the unit-length maximum of each channel over the image. The mean describes the part; the
    maximum keeps a small crack visible that the mean averages away (ELPV mono -> poly, 10%
    defective: the dominant of 8 clusters holds 94% normal cells on the mean alone and 99% with
    the maximum, docs/adaptation.md)."""
    flat = features.flatten(1, 2).float()
    return torch.cat(
        [
            torch.nn.functional.normalize(flat.mean(dim=1), dim=1),
            torch.nn.functional.normalize(flat.amax(dim=1), dim=1),
        ],
        dim=1,
    )


def kmeans(
    points: torch.Tensor, k: int, seed: int = 0, iterations: int = 100, restarts: int = 4
) -> tuple[torch.Tensor, torch.Tensor]:
    """(labels (N,), centres (k, d)); k-means++ seeding, best of `restarts` by inertia. Batched, no
    loops over points."""
    n = len(points)
    if not 1 <= k <= n:
        raise DatasetError(f"cannot form {k} clusters from {n} image(s)")
    generator = torch.Generator(device="cpu").manual_seed(seed)
    best: tuple[float, torch.Tensor, torch.Tensor] | None = None
    for _ in range(restarts):
        centres = points[torch.randint(n, (1,), generator=generator)]
        for _ in range(
            1, k
        ):  # k-means++: next centre with probability proportional to squared distance
            d2 = torch.cdist(points, centres).min(dim=1).values.square()
            probs = d2 / d2.sum() if d2.sum() > 0 else torch.full_like(d2, 1 / n)
            centres = torch.cat(
                [centres, points[torch.multinomial(probs.cpu(), 1, generator=generator)]]
            )
        labels = torch.zeros(n, dtype=torch.long)
        for step in range(iterations):
            new = torch.cdist(points, centres).argmin(dim=1)
            if step > 0 and torch.equal(new, labels):
                break
            labels = new
            counts = torch.bincount(labels, minlength=k).to(points.dtype)
            sums = torch.zeros_like(centres).index_add_(0, labels, points)
            filled = counts > 0
            centres[filled] = sums[filled] / counts[filled].unsqueeze(1)
        inertia = float((points - centres[labels]).square().sum())
        if best is None or inertia < best[0]:
            best = (inertia, labels.clone(), centres.clone())
    return best[1], best[2]


@dataclass
class DominantCluster:
    members: torch.Tensor  # (N,) bool: images of the largest cluster (the presumed normals)
    sizes: list[int]  # cluster sizes, largest first
    majority: float  # share of the larger side of a two-way split of the target
    # how much more the two-way split explains than it would for one Gaussian mode (1 ~ none, pi/2
    # max)
    separation: float
    dominant: bool  # no sign that the target is two even populations
    message: str


def split_separation(points: torch.Tensor, labels: torch.Tensor) -> float:
    """Variance explained by a two-way split, relative to what 2-means explains for a single
    Gaussian with the same spectrum, (2/pi) * lambda_1 / sum(lambda). About 1 for one mode (whatever
    its shape), up to pi/2 for two well-separated groups."""
    x = (points - points.mean(dim=0)).double()
    total = float(x.square().sum())
    if total == 0 or len(torch.unique(labels)) < 2:
        return 0.0
    centres = torch.stack([x[labels == c].mean(dim=0) for c in (0, 1)])
    explained = 1 - float((x - centres[labels]).square().sum()) / total
    spectrum = torch.linalg.svdvals(x).square()
    return explained / ((2 / math.pi) * float(spectrum[0] / spectrum.sum()))


def dominant_cluster(
    features: torch.Tensor, k: int, min_majority: float, min_separation: float = 1.45, seed: int = 0
) -> DominantCluster:
    """The paper's rule (largest of k clusters = presumed normals) plus a check that it can hold.

    k-means with k > the number of natural groups splits the normal mass into several clusters, so
    comparing cluster sizes says little. The check is a two-way split instead: the target is refused
    when it splits into two clearly separate groups (separation >= `min_separation`) of comparable
    size (larger side < `min_majority`): two products mixed, or a half-defective batch whose defects
    look alike. A single mode split down the middle is not refused (its separation stays near 1).
    """
    n = len(features)
    k = min(k, n)
    labels, _ = kmeans(features, k, seed)
    counts = torch.bincount(labels, minlength=k)
    order = torch.argsort(counts, descending=True)
    sizes = [int(c) for c in counts[order]]
    halves = kmeans(features, 2, seed)[0] if n >= 2 else torch.zeros(n, dtype=torch.long)
    majority = float(torch.bincount(halves, minlength=2).max()) / n
    separation = split_separation(features, halves)
    dominant = majority >= min_majority or separation < min_separation
    if dominant:
        message = (
            f"dominant cluster holds {sizes[0]} of {n} target images ({sizes[0] / n:.0%}); "
            f"cluster sizes {sizes}; "
            f"a two-way split puts {majority:.0%} on one side (separation {separation:.2f})"
        )
    else:
        message = (
            f"no cluster dominates: the {n} target images form two distinct groups of "
            f"{majority:.0%} and {1 - majority:.0%} "
            f"(separation {separation:.2f}; cluster sizes {sizes}). Two kinds of images in "
            "comparable numbers break the "
            "assumption that defects are rare; adapt with images of one product and mostly "
            "normal parts"
        )
    return DominantCluster(labels == order[0], sizes, majority, separation, dominant, message)
