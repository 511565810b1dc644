"""Label-free removal of defect patches from a set of images that may hold some defects.

Anomaly scarcity holds at the patch level where it fails at the image level: half of a batch may
show a defect, but a defect covers few of its patches. A normal patch finds close matches in
many other images of the batch; a defect patch does not. Every patch is scored by its distance
to the nearest patch of each of R other images, aggregated over the closest share of those R
distances (a defect that recurs in a few images must not vouch for itself), and patches far
above the bulk of these scores are dropped (median + z * MAD, so the cut follows the data, not a
fixed share).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from patchshift.core.common.errors import ConfigError, DatasetError
from patchshift.core.common.progress import CancelFn, ProgressFn, check_cancel, report

# Where the outlier tail starts, in robust deviations above the median, and the share of a normal
# distribution beyond it.
TAIL_Z = 3.0
NORMAL_TAIL_SHARE = 0.00135
# Below this many images a patch has too few other images to be vouched for.
MIN_IMAGES = 5
# Distances held at once (64 Mi floats, 256 MiB): one image's patches against all R other images
# would be P x R*P, 0.7 GB at 512 px and 11 GB at 1024 px; blocks keep the peak fixed at any size.
DISTANCE_BLOCK_ELEMENTS = 2**26


@dataclass(frozen=True)
class FilterSettings:
    """How patches are scored against other images and where the cut lies."""

    references: int = 10  # R: other images each image is compared with
    closest_share: float = 0.5  # aggregate the closest ceil(share * R) of the R distances
    cut_z: float = 3.0  # drop patches above median + cut_z * 1.4826 * MAD of the scores
    seed: int = 0
    # Per-position scoring (SoftPatch, for aligned parts): a patch is compared only with the patches
    # within `window` grid cells of its own position in the other images. None: anywhere.
    window: int | None = None
    # The cut applies only when the scores have an outlier tail: more than this share of them beyond
    # median + TAIL_Z robust deviations (a normal distribution puts NORMAL_TAIL_SHARE there).
    # Without one, no patch stands out from the normal variation and a cut would only drop its rarer
    # part. 0: always cut.
    tail_share: float = 0.0

    def __post_init__(self) -> None:
        if self.window is not None and self.window < 0:
            raise ConfigError(
                f"the per-position window must be 0 or more grid cells, got {self.window}"
            )
        if not 0.0 <= self.tail_share < 1.0:
            raise ConfigError(
                f"the outlier tail's share must be at least 0 and below 1, got {self.tail_share}"
            )


@dataclass
class FilterResult:
    scores: torch.Tensor  # (N, P) each patch's mutual score
    keep: torch.Tensor  # (N, P) bool: the patches judged normal
    cut: float  # the score above which patches were dropped (inf: none were)
    tail: float = 0.0  # share of the scores beyond median + TAIL_Z robust deviations

    def to(self, device: str | torch.device) -> FilterResult:
        return FilterResult(self.scores.to(device), self.keep.to(device), self.cut, self.tail)

    @property
    def kept_share(self) -> float:
        return float(self.keep.float().mean())


def reference_choice(n_images: int, references: int, seed: int) -> torch.Tensor:
    """(N, R) indices of other images: each row draws R images other than its own, without
    repeats."""
    r = min(references, n_images - 1)
    generator = torch.Generator().manual_seed(seed)
    # A random permutation of the others per image: shift by 1..N-1 from the image itself.
    offsets = torch.stack(
        [torch.randperm(n_images - 1, generator=generator)[:r] + 1 for _ in range(n_images)]
    )
    return (torch.arange(n_images).unsqueeze(1) + offsets) % n_images


def outside_window(query_cells: torch.Tensor, cells: torch.Tensor, window: int) -> torch.Tensor:
    """(Q, 2) and (P, 2) int32 grid cells -> (Q, P) bool: farther apart than `window` rows or
    columns. One byte per pair (plus two int32 transients), a quarter of the distances it masks."""
    rows = (query_cells[:, :1] - cells[:, 0]).abs_() > window
    return rows.logical_or_((query_cells[:, 1:] - cells[:, 1]).abs_() > window)


def nearest_in_images(
    query: torch.Tensor,
    query_norms: torch.Tensor,
    refs: torch.Tensor,
    ref_norms: torch.Tensor,
    block_elements: int,
    positions: torch.Tensor | None = None,
    window: int | None = None,
) -> torch.Tensor:
    """query (Q, D), refs (R, P, D) with squared norms (Q,), (R, P) -> (Q, R) distance of each query
    row to its nearest patch in each reference image, in blocks of at most `block_elements`
    distances. With `positions` (P, 2), the grid cell of every patch (query row q is patch q), and
    `window`, only reference patches within `window` cells of the query's own cell count."""
    n_refs, n_patches, dim = refs.shape
    nearest = torch.empty(len(query), n_refs, dtype=query.dtype, device=query.device)
    refs_per_block = max(1, block_elements // (len(query) * n_patches))
    rows_per_block = max(
        1, min(len(query), block_elements // n_patches)
    )  # all rows unless one reference overflows
    for q0 in range(0, len(query), rows_per_block):
        q = query[q0 : q0 + rows_per_block]
        outside = (
            None
            if window is None or positions is None
            else outside_window(positions[q0 : q0 + len(q)], positions, window)
        )
        for r0 in range(0, n_refs, refs_per_block):
            block, block_norms = refs[r0 : r0 + refs_per_block], ref_norms[r0 : r0 + refs_per_block]
            squared = (
                (q @ block.reshape(-1, dim).T)
                .mul_(-2)
                .add_(query_norms[q0 : q0 + len(q)].unsqueeze(1))
            )
            squared = squared.add_(block_norms.reshape(1, -1)).view(len(q), len(block), n_patches)
            if outside is not None:
                squared.masked_fill_(outside.unsqueeze(1), math.inf)
            nearest[q0 : q0 + len(q), r0 : r0 + len(block)] = squared.amin(dim=2)
    return nearest.clamp_min_(0).sqrt_()


@torch.inference_mode()
def mutual_scores(
    feats: torch.Tensor,
    settings: FilterSettings,
    progress: ProgressFn | None = None,
    cancel: CancelFn | None = None,
    block_elements: int = DISTANCE_BLOCK_ELEMENTS,
    grid: tuple[int, int] | None = None,
) -> torch.Tensor:
    """feats (N, P, D) patch features of N images on an h x w = P `grid` -> (N, P) robust distance
    to the other images.

    Per image, its patches against all patches of its R reference images as matrix products, in
    blocks of at most `block_elements` distances: no loop over patches. `grid` is needed only for
    per-position scoring (settings.window)."""
    n_images, n_patches, _ = feats.shape
    if n_images < MIN_IMAGES:
        raise DatasetError(
            f"{n_images} image(s) are too few to tell defects from normal patches; give at least "
            f"{MIN_IMAGES}"
        )
    chosen = reference_choice(n_images, settings.references, settings.seed)
    closest = max(1, math.ceil(settings.closest_share * chosen.shape[1]))
    norms = feats.square().sum(-1)  # (N, P)
    scores = torch.empty(n_images, n_patches, dtype=feats.dtype, device=feats.device)
    chosen = chosen.to(feats.device)
    positions = None
    if settings.window is not None:
        if grid is None or grid[0] * grid[1] != n_patches:
            raise ConfigError(
                f"per-position scoring needs the patch grid of the {n_patches} patches, got {grid}"
            )
        rows, cols = torch.meshgrid(torch.arange(grid[0]), torch.arange(grid[1]), indexing="ij")
        positions = torch.stack([rows.flatten(), cols.flatten()], dim=1).to(
            feats.device, torch.int32
        )
    for i in range(n_images):
        if i % 8 == 0:
            check_cancel(cancel)
        nearest = nearest_in_images(
            feats[i],
            norms[i],
            feats[chosen[i]],
            norms[chosen[i]],
            block_elements,
            positions,
            settings.window,
        )  # (P, R)
        scores[i] = nearest.topk(closest, dim=1, largest=False).values.mean(dim=1)
        report(progress, "filter", i + 1, n_images)
    return scores


def median_and_mad(scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The median of all the scores and their median absolute deviation from it, in float64; a
    robust deviation is 1.4826 x MAD (robust to the defect tail)."""
    flat = scores.flatten().double()
    median = flat.median()
    return median, (flat - median).abs().median()


def robust_cut(scores: torch.Tensor, z: float) -> float:
    """median + z robust deviations."""
    median, mad = median_and_mad(scores)
    return float(median + z * 1.4826 * mad)


def robust_z(scores: torch.Tensor) -> torch.Tensor:
    """Each score in robust deviations above the median of all of them."""
    median, mad = median_and_mad(scores)
    return ((scores.double() - median) / (1.4826 * mad).clamp_min(1e-12)).to(scores.dtype)


def vouched_image_scores(patch_scores: torch.Tensor, patch_z: torch.Tensor, z: float) -> np.ndarray:
    """(S, h, w) patch scores and (S, h*w) mutual robust z of the same patches -> (S,) each image's
    score over the patches other images vouch for (z at most `z`): a normal image keeps its score, a
    defective one loses its defect patches and scores like the normal images around it. An image
    with no such patch keeps its own score."""
    flat = patch_scores.flatten(1).double()
    counted = patch_z.to(flat.device) <= z
    vouched = flat.masked_fill(~counted, -math.inf).amax(dim=1)
    return torch.where(counted.any(dim=1), vouched, flat.amax(dim=1)).numpy()


def outlier_tail(scores: torch.Tensor) -> float:
    """Share of the scores beyond median + TAIL_Z robust deviations (NORMAL_TAIL_SHARE for a normal
    distribution)."""
    return float((scores.double() > robust_cut(scores, TAIL_Z)).double().mean())


def cut_applies(tail: float, tail_share: float) -> bool:
    """Whether the cut drops patches: always when tail_share is 0, else only above an outlier tail
    that large."""
    return tail_share == 0 or tail > tail_share


def filter_patches(
    feats: torch.Tensor,
    settings: FilterSettings,
    progress: ProgressFn | None = None,
    cancel: CancelFn | None = None,
) -> FilterResult:
    """feats (N, P, D) -> which patches to keep as normal: those below the cut (when it applies)."""
    scores = mutual_scores(feats, settings, progress, cancel)
    tail = outlier_tail(scores)
    cut = robust_cut(scores, settings.cut_z) if cut_applies(tail, settings.tail_share) else math.inf
    return FilterResult(scores=scores, keep=scores <= cut, cut=cut, tail=tail)
