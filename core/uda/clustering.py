"""k-means on the frozen encoder's features and the dominant-cluster rule (anomaly scarcity)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import DatasetError


def kmeans(points: torch.Tensor, k: int, seed: int = 0, iterations: int = 100, restarts: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """(labels (N,), centres (k, d)); k-means++ seeding, best of `restarts` by inertia. Batched, no loops over points."""
    n = len(points)
    if not 1 <= k <= n:
        raise DatasetError(f"cannot form {k} clusters from {n} image(s)")
    generator = torch.Generator(device="cpu").manual_seed(seed)
    best: tuple[float, torch.Tensor, torch.Tensor] | None = None
    for _ in range(restarts):
        centres = points[torch.randint(n, (1,), generator=generator)]
        for _ in range(1, k):  # k-means++: next centre with probability proportional to squared distance
            d2 = torch.cdist(points, centres).min(dim=1).values.square()
            probs = d2 / d2.sum() if d2.sum() > 0 else torch.full_like(d2, 1 / n)
            centres = torch.cat([centres, points[torch.multinomial(probs.cpu(), 1, generator=generator)]])
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
    dominant: bool  # the target has a clear majority mode (the scarcity assumption holds visibly)
    message: str


def dominant_cluster(features: torch.Tensor, k: int, min_majority: float, seed: int = 0) -> DominantCluster:
    """The paper's rule (largest of k clusters = presumed normals) plus a check that it can hold.

    k-means with k > the number of natural groups splits the normal mass into several clusters, so
    comparing cluster sizes says little. The check is a two-way split instead: when defects are
    rare, the larger side holds most images; when it holds less than `min_majority`, the target
    has no majority mode and no cluster can be trusted as 'normal'.
    """
    k = min(k, len(features))
    labels, _ = kmeans(features, k, seed)
    counts = torch.bincount(labels, minlength=k)
    order = torch.argsort(counts, descending=True)
    sizes = [int(c) for c in counts[order]]
    halves, _ = kmeans(features, 2, seed) if len(features) >= 2 else (torch.zeros(len(features), dtype=torch.long), None)
    majority = float(torch.bincount(halves, minlength=2).max()) / len(features)
    dominant = majority >= min_majority
    n = len(features)
    if dominant:
        message = (f"dominant cluster holds {sizes[0]} of {n} target images ({sizes[0] / n:.0%}); cluster sizes {sizes}; "
                   f"a two-way split puts {majority:.0%} on one side")
    else:
        message = (f"no cluster dominates: a two-way split of the {n} target images puts only {majority:.0%} on the larger side "
                   f"(at least {min_majority:.0%} needed; cluster sizes {sizes}). The images do not look mostly alike, so the "
                   f"assumption that defects are rare fails; adapt with more images of normal parts")
    return DominantCluster(labels == order[0], sizes, majority, dominant, message)
