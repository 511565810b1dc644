"""AdaptConfig: one dataclass for every test-time adapter (unused fields are ignored by a
method)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from patchshift.core.common.options import option
from patchshift.core.engine.contamination import NORMAL_TAIL_SHARE

AUGMENTATIONS = ("none", "rot90", "flip", "dihedral")
# The settings a person may give (CLI flags and HTTP fields are generated from these); the rest
# are research knobs for the benchmarks.
ADAPT_OPTIONS = (
    "epochs",
    "lr",
    "augment",
    "views",
    "bn_mode",
    "trim",
    "memory",
    "memory_bn",
    "filter_cut_z",
    "filter_tail_share",
    "input_levels",
)


@dataclass(frozen=True)
class AdaptConfig:
    # The recommended method (docs/design-history.md says why).
    method: str = "target-memory"
    # One short, strong pass (lr 1e-2, 1 epoch) beat the paper's lr 1e-3 x 3 epochs on held-out
    # halves of the adaptation split (README, design runs) and costs a third of the time.
    epochs: int = option(1, "passes over the target images", ge=1, le=100)
    batch_size: int = option(8, "target images per optimiser step", ge=1, le=256)
    # Above 1 the BatchNorm parameters diverge (lr 1e9 moved a threshold from 48 to 2.3e11).
    lr: float = option(1e-2, "Adam learning rate of the BatchNorm affine parameters", gt=0, le=1)
    # Target views per image: "rot90" (rotations by 90-degree multiples), "flip" (mirror images),
    # "dihedral" (both), "none" (the image only). Choose per product: not every part is
    # rotation-invariant.
    augment: str = option("rot90", "views of each target image", choices=AUGMENTATIONS)
    views: int = option(4, "views per target image", ge=1, le=16)
    # BatchNorm mode while training the affine parameters: "eval" uses running statistics.
    bn_mode: str = option("eval", "BatchNorm mode while training", choices=("eval", "train"))
    # Re-estimate the running statistics on the target first (AdaBN), then train the affine part.
    reestimate_stats: bool = True
    # At most what the minibatch and the bank hold is used, so the upper bound only keeps them
    # integers.
    target_patches: int = option(2048, "target patches per OT problem", ge=1, le=10**9)
    bank_rows: int = option(4096, "bank rows per OT problem", ge=1, le=10**9)
    eps: float = option(0.05, "entropic regularisation, relative to the mean cost", gt=0, le=10)
    sinkhorn_iters: int = option(200, "Sinkhorn iterations", ge=1, le=10_000)
    discretise: str = option(
        "union", "RoDA Eq. 6 (union) or both argmaxes (mutual)", choices=("union", "mutual")
    )
    # Share of the discretised pairs with the highest cost left out of the loss (0: the paper's
    # loss). Defect patches are the far ones; trimming keeps them from being pulled onto the bank.
    trim: float = option(
        0.1, "share of the costliest matched pairs left out of the loss (0: the paper)", ge=0, lt=1
    )
    # Which BatchNorm affine parameters train: "all", or "feature-stages" (from the layer that
    # outputs the first feature stage on; the frozen layers before it run once and are cached).
    trained_layers: str = option(
        "all", "which BatchNorm layers train", choices=("feature-stages", "all")
    )
    # Pixel budget of one optimiser step (images x views x H x W, in millions): large inputs take
    # fewer images per step, so activation memory stays bounded (8 images of 576x224 with 4 views
    # fit; at 512x512, 4 images per step).
    max_step_megapixels: float = option(
        4.5, "pixels through the network per optimiser step, in millions", gt=0, le=1000
    )
    # Target memory (method "target-memory"): the patches of the target images that other target
    # images vouch for, as a bank of its own or joined to the source bank.
    memory: str = option(
        "union",
        "the new version's bank: the filtered target memory alone, or joined to the source bank "
        "(uda: target by default)",
        choices=("target", "union"),
    )
    memory_bn: str = option(
        "none",
        "BatchNorm step before the target memory: none, AdaBN (stats) or RoDA",
        choices=("none", "stats", "roda"),
    )
    # Before the target memory is built, each channel's brightness and contrast are matched to the
    # source's training images where they lie beyond the images' own variation
    # (core.engine.levels); chosen with each product left out (docs/design-history.md, "Input
    # levels").
    input_levels: str = option(
        "match",
        "target-memory: match the images' brightness and contrast to the source's first (match) "
        "or not (none)",
        choices=("match", "none"),
    )
    filter_references: int = option(
        10, "other target images each target image's patches are compared with", ge=1, le=1000
    )
    filter_closest_share: float = option(
        0.5, "share of those images whose distances count (the closest ones)", gt=0, le=1
    )
    # 0.5 (keep about two thirds of the patches) and 0 (half) tie on the mean over the shifts of
    # both datasets and beat 1.5-3 by 0.05-0.13 on bsd (docs/design-history.md, "The contamination
    # filter"): the k-center coreset picks the rarest kept patches first, so a defect patch that
    # slips through is likely kept.
    filter_cut_z: float = option(
        0.5, "drop patches above median + z robust deviations of the mutual scores", ge=0, le=100
    )
    # Boards' scores have no outlier tail and their rare layouts are what the cut would drop
    # (deeppcb: 63% of the gap against 38% when always cutting); screws' do (bsd: the cut applies on
    # every condition, unchanged). docs/design-history.md, "The tail rule".
    filter_tail_share: float = option(
        NORMAL_TAIL_SHARE,
        "cut only if more than this share of the mutual scores lies beyond "
        f"median + 3 robust deviations ({NORMAL_TAIL_SHARE}: a normal distribution's; 0: always "
        "cut)",
        ge=0,
        lt=1,
    )
    # How sure the threshold is grows with the images scored (the law's own 90% false-alarm interval
    # at 1% asked: 0.2-4.7% from 64 images, 0.5-2.2% from 256); scoring them out of fold is part of
    # the target memory's time.
    threshold_images: int = option(
        256,
        "target images scored out-of-fold to move the threshold (a random subset; 0: all)",
        ge=0,
        le=10**6,
    )
    # A target image's normal score (what the threshold's law is fitted to) counts its patches whose
    # mutual score lies within median + z robust deviations of the batch's: chosen with one product
    # left out (docs/adaptation.md, "The verdict after adaptation").
    threshold_patch_z: float = option(
        4.0,
        "patches counted in a target image's normal score for the threshold: mutual score "
        "within median + z robust deviations (100: in effect every patch)",
        gt=0,
        le=100,
    )
    # uda: the target images that build the memory are the dominant k-means cluster of their
    # descriptors (core.uda.clustering); the paper finds 8-10 clusters best.
    clusters: int = option(
        8, "uda: k-means clusters of the target images; the largest builds the memory", ge=2, le=256
    )
    # A target of two clearly separate groups of comparable size is refused (core.uda.clustering):
    # a product whose images truly form two groups lowers min_majority or raises min_separation.
    min_majority: float = option(
        0.6, "uda: larger side of a two-way split of the target needed to adapt", ge=0.5, le=1
    )
    min_separation: float = option(
        1.45,
        "uda: separation above which two even groups of target images are refused",
        gt=0,
        le=10,
    )
    seed: int = option(0, "random seed (views, OT sampling)", ge=0, le=2**32 - 1)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> AdaptConfig:
        return dataclasses.replace(self, **changes)
