"""Greedy k-center coreset selection on a random projection (PatchCore's memory-bank subsampling).

Exact greedy k-center costs k passes over all N features; with N ~ 10^6 patches and k ~ 10^5 that
is hours on two cores. Above `max_iterations` centres, the points are split at random into G
equal groups and greedy k-center runs in all groups at once (one batched pass per iteration),
each group choosing k / G centres: the 'partition then greedy' scheme of composable coresets.
Every point is then within its group's greedy radius of a chosen centre.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch


def random_projection(features: torch.Tensor, dim: int, seed: int) -> torch.Tensor:
    """Gaussian Johnson-Lindenstrauss projection to `dim` columns (identity if already small)."""
    if dim <= 0 or dim >= features.shape[1]:
        return features
    generator = torch.Generator(device="cpu").manual_seed(seed)
    matrix = torch.randn(features.shape[1], dim, generator=generator) / math.sqrt(dim)
    return features @ matrix.to(features.device, features.dtype)


def greedy_kcenter(
    points: torch.Tensor,
    k: int,
    start: torch.Tensor | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> torch.Tensor:
    """Batched greedy k-center: points (G, n, d) -> indices (G, k) into each group.

    Each step adds, in every group, the point farthest from the centres chosen so far.
    """
    groups, n, _ = points.shape
    if not 1 <= k <= n:
        raise ValueError(f"k must be in [1, {n}], got {k}")
    norms = points.square().sum(-1)  # (G, n)
    # (G, d, n) layout: a batched vector-matrix product per step is several times faster on CPU
    # than the matrix-vector product on (G, n, d).
    columns = points.transpose(1, 2).contiguous()
    rows = torch.arange(groups, device=points.device)
    current = (
        start if start is not None else torch.zeros(groups, dtype=torch.long, device=points.device)
    )
    chosen = torch.empty(groups, k, dtype=torch.long, device=points.device)
    nearest = torch.full((groups, n), float("inf"), device=points.device, dtype=points.dtype)
    for step in range(k):
        chosen[:, step] = current
        centre = points[rows, current].unsqueeze(1)  # (G, 1, d)
        dist = (
            torch.bmm(centre, columns)
            .squeeze(1)
            .mul_(-2)
            .add_(norms)
            .add_(norms[rows, current].unsqueeze(-1))
        )
        torch.minimum(nearest, dist, out=nearest)
        current = nearest.argmax(dim=1)
        if progress is not None:
            progress(step + 1, k)
    return chosen


def coreset_size(n_points: int, ratio: float, max_size: int | None) -> int:
    size = max(1, math.ceil(n_points * ratio))
    return min(size, max_size) if max_size is not None else size


def kcenter_coreset(
    features: torch.Tensor,
    size: int,
    projection_dim: int = 64,
    seed: int = 0,
    max_iterations: int = 1000,
    progress: Callable[[int, int], None] | None = None,
) -> torch.Tensor:
    """Indices of `size` rows of `features` (N, D) chosen by (partitioned) greedy k-center."""
    n = features.shape[0]
    if size >= n:
        return torch.arange(n, device=features.device)
    projected = random_projection(features, projection_dim, seed)
    groups = max(1, math.ceil(size / max_iterations))
    generator = torch.Generator(device="cpu").manual_seed(seed)
    order = torch.randperm(n, generator=generator).to(features.device)
    group_size = math.ceil(n / groups)
    # Pad the last group with repeats of its own last point: a duplicate never adds coverage.
    padded = torch.cat([order, order[-1:].expand(groups * group_size - n)])
    members = padded.view(groups, group_size)
    per_group = math.ceil(size / groups)
    start = torch.randint(group_size, (groups,), generator=generator).to(features.device)
    local = greedy_kcenter(projected[members], per_group, start=start, progress=progress)
    # Step-major order, so that trimming to `size` drops the last (least useful) greedy steps.
    picked = torch.gather(members, 1, local).T.flatten().cpu()
    _, first = np.unique(picked.numpy(), return_index=True)  # padding may repeat a point
    return picked[torch.from_numpy(np.sort(first))][:size].to(features.device)
