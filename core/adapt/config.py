"""AdaptConfig: one dataclass for every test-time adapter (unused fields are ignored by a method)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError

AUGMENTATIONS = ("none", "rot90", "flip", "dihedral")


@dataclass(frozen=True)
class AdaptConfig:
    method: str = "roda"
    # One short, strong pass (lr 1e-2, 1 epoch) beat the paper's lr 1e-3 x 3 epochs on held-out
    # halves of the adaptation split (README, design runs) and costs a third of the time.
    epochs: int = 1
    batch_size: int = 8
    lr: float = 1e-2
    # Target views per image: "rot90" (rotations by 90-degree multiples), "flip" (mirror images),
    # "dihedral" (both), "none" (the image only). Choose per product: not every part is rotation-invariant.
    augment: str = "rot90"
    views: int = 4
    # BatchNorm mode while training the affine parameters: "eval" uses running statistics.
    bn_mode: str = "eval"
    # Re-estimate the running statistics on the target first (AdaBN), then train the affine part.
    reestimate_stats: bool = True
    target_patches: int = 2048  # target patches per OT problem (sampled from the minibatch's views)
    bank_rows: int = 4096  # bank rows per OT problem
    bank_selection: str = "random"  # "random" rows, or "nearest": rows nearest to the sampled patches
    eps: float = 0.05  # entropic regularisation, relative to the mean cost
    sinkhorn_iters: int = 200
    discretise: str = "union"  # RoDA Eq. 6 ("union"), or "mutual" (both argmaxes)
    # Share of the discretised pairs with the highest cost left out of the loss (0: the paper's
    # loss). Defect patches are the far ones; trimming keeps them from being pulled onto the bank.
    trim: float = 0.1
    # Which BatchNorm affine parameters train: "all", or "feature-stages" (from the layer that
    # outputs the first feature stage on; the frozen layers before it run once and are cached).
    trained_layers: str = "all"
    # Pixel budget of one optimiser step (images x views x H x W, in millions): large inputs take
    # fewer images per step, so activation memory stays bounded (8 images of 576x224 with 4 views
    # fit; at 512x512, 4 images per step).
    max_step_megapixels: float = 4.5
    threshold_quantile: float = 0.99
    seed: int = 0

    def __post_init__(self) -> None:
        if self.augment not in AUGMENTATIONS:
            raise ConfigError(f"augment must be one of {', '.join(AUGMENTATIONS)}, got {self.augment!r}")
        if self.bn_mode not in ("eval", "train"):
            raise ConfigError(f"bn_mode must be 'eval' or 'train', got {self.bn_mode!r}")
        if self.bank_selection not in ("random", "nearest"):
            raise ConfigError(f"bank_selection must be 'random' or 'nearest', got {self.bank_selection!r}")
        if self.trained_layers not in ("feature-stages", "all"):
            raise ConfigError(f"trained_layers must be 'feature-stages' or 'all', got {self.trained_layers!r}")
        if not 0.0 <= self.trim < 1.0:
            raise ConfigError(f"trim must be in [0, 1), got {self.trim!r}")
        if self.discretise not in ("union", "mutual"):
            raise ConfigError(f"discretise must be 'union' or 'mutual', got {self.discretise!r}")
        if self.epochs < 0 or self.batch_size < 1 or self.views < 1 or self.lr <= 0 or self.eps <= 0:
            raise ConfigError("epochs >= 0, batch_size >= 1, views >= 1, lr > 0 and eps > 0 are required")
        if self.max_step_megapixels <= 0:
            raise ConfigError(f"max_step_megapixels must be positive, got {self.max_step_megapixels!r}")
        if self.target_patches < 1 or self.bank_rows < 1:
            raise ConfigError("target_patches and bank_rows must be positive")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> "AdaptConfig":
        return dataclasses.replace(self, **changes)
