"""Backbone stage maps -> locally aware patch features z in R^{B x h x w x D} (PatchCore)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from patchshift.core.common.errors import ConfigError
from patchshift.core.engine.backbone import Backbone
from patchshift.core.engine.levels import LevelCorrection, Levels, correct_levels
from patchshift.core.engine.model_config import NEIGHBOURHOOD_BORDERS
from patchshift.core.engine.reduction import Reduction, initial_reduction

# How the k x k neighbourhood average treats cells outside the feature map: "zeros" counts them as
# zero (PatchCore's and anomalib's zero-padded average pooling), "inside" averages only the cells
# inside (versions fitted before this setting existed). Decided in docs/design-history.md
# ("Borders").
BORDERS = NEIGHBOURHOOD_BORDERS


class PatchFeatureExtractor(nn.Module):
    """Correct the input levels (an adapted version's), normalise, run the truncated backbone, and
    turn its stage maps into patch features.

    Each stage's channels are mapped by its reduction matrix (core.engine.reduction; by default
    pooled to D / n_stages channels, so stages weigh equally), averaged over a k x k neighbourhood,
    and upsampled to the first (finest) stage's grid; the stages are then concatenated (and mixed,
    for the reductions that mix them). Reduction, averaging and bilinear upsampling are all linear,
    so they are applied in the cheapest order. Differentiable: adaptation reuses it.
    """

    def __init__(
        self,
        backbone: Backbone,
        feature_dim: int,
        neighbourhood: int,
        border: str = "zeros",
        reduction: str = "average",
        seed: int = 0,
    ) -> None:
        super().__init__()
        if border not in BORDERS:
            raise ConfigError(
                f"neighbourhood border must be one of {', '.join(BORDERS)}, got {border!r}"
            )
        self.backbone = backbone.module
        self.stage_names = backbone.stage_names
        self.stage_channels = tuple(backbone.stage_channels)
        self.neighbourhood = neighbourhood
        self.border = border
        self.register_buffer("mean", torch.tensor(backbone.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(backbone.std).view(1, 3, 1, 1), persistent=False)
        self.set_reduction(initial_reduction(reduction, feature_dim, self.stage_channels, seed))
        # Plain attributes, not buffers: a version's copy of the extractor (copy.copy) sets its own
        # without touching the parent's. source_levels: the training images' (set by fit);
        # levels: the correction of an adapted version's input (core.engine.levels).
        self.source_levels: Levels | None = None
        self.levels: LevelCorrection | None = None

    def set_reduction(self, reduction: Reduction) -> None:
        """Install the channel maps (core.engine.reduction); D follows them."""
        device = self.mean.device
        for i, matrix in enumerate(reduction.stage_maps):
            self.register_buffer(f"pool{i}", matrix.to(device), persistent=False)
        self.register_buffer(
            "mix", reduction.mix.to(device) if reduction.mix is not None else None, persistent=False
        )
        self.feature_dim = reduction.dim

    def reduction(self) -> Reduction:
        return Reduction(
            [getattr(self, f"pool{i}") for i in range(len(self.stage_names))], self.mix
        )

    def normalise(self, images: torch.Tensor) -> torch.Tensor:
        if self.levels is not None:
            images = correct_levels(images, self.levels)
        return (images - self.mean) / self.std

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images: (B, 3, H, W) in [0, 1] -> (B, h, w, D) at the finest stage's grid."""
        return self.from_maps(self.backbone(self.normalise(images)))

    def from_maps(self, maps: dict[str, torch.Tensor]) -> torch.Tensor:
        """Backbone stage maps -> (B, h, w, D) patch features."""
        grid: tuple[int, int] | None = None
        parts = []
        for i, name in enumerate(self.stage_names):
            stage = torch.einsum("bchw,cd->bdhw", maps[name], getattr(self, f"pool{i}"))
            if self.neighbourhood > 1:
                pad = self.neighbourhood // 2
                stage = F.avg_pool2d(
                    stage,
                    self.neighbourhood,
                    stride=1,
                    padding=pad,
                    count_include_pad=self.border == "zeros",
                )
            if grid is None:
                grid = (stage.shape[-2], stage.shape[-1])
            elif stage.shape[-2:] != grid:
                stage = F.interpolate(stage, size=grid, mode="bilinear", align_corners=False)
            parts.append(stage)
        feats = torch.cat(parts, dim=1).permute(0, 2, 3, 1)
        return (feats @ self.mix if self.mix is not None else feats).contiguous()
