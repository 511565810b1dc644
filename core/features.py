"""Backbone stage maps -> locally aware patch features z in R^{B x h x w x D} (PatchCore)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .backbone import Backbone
from .errors import ConfigError


def channel_pooling_matrix(channels: int, out_dim: int) -> torch.Tensor:
    """(channels, out_dim) matrix equal to adaptive average pooling over the channel axis."""
    eye = torch.eye(channels).unsqueeze(1)  # (C, 1, C): each row a one-hot "feature vector"
    return F.adaptive_avg_pool1d(eye, out_dim).squeeze(1)


def max_feature_dim(stage_channels: tuple[int, ...]) -> int:
    """The largest D a backbone provides: each stage's share of D is at most its widest stage's channels
    (a narrower stage repeats channels to fill its share)."""
    return len(stage_channels) * max(stage_channels)


def check_feature_dim(feature_dim: int, backbone_name: str, stage_channels: tuple[int, ...]) -> None:
    limit = max_feature_dim(stage_channels)
    if feature_dim > limit:
        raise ConfigError(
            f"feature_dim must be at most {limit} for {backbone_name} ({len(stage_channels)} stages of "
            f"{'/'.join(map(str, stage_channels))} channels), got {feature_dim}"
        )


# How the k x k neighbourhood average treats cells outside the feature map: "zeros" counts them
# as zero (PatchCore's and anomalib's zero-padded average pooling), "inside" averages only the
# cells inside (versions fitted before this setting existed). Measured in docs/engine-study.md ("Borders").
BORDERS = ("zeros", "inside")


class PatchFeatureExtractor(nn.Module):
    """Normalise, run the truncated backbone, and turn its stage maps into patch features.

    Each stage is reduced to D / n_stages channels by adaptive average pooling (so stages weigh
    equally), averaged over a k x k neighbourhood, and upsampled to the first (finest) stage's
    grid; the stages are then concatenated. Reduction, averaging and bilinear upsampling are all
    linear, so they are applied in the cheapest order. Differentiable: adaptation reuses it.
    """

    def __init__(self, backbone: Backbone, feature_dim: int, neighbourhood: int, border: str = "zeros") -> None:
        super().__init__()
        if border not in BORDERS:
            raise ConfigError(f"neighbourhood border must be one of {', '.join(BORDERS)}, got {border!r}")
        self.backbone = backbone.module
        self.stage_names = backbone.stage_names
        self.neighbourhood = neighbourhood
        self.border = border
        self.register_buffer("mean", torch.tensor(backbone.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(backbone.std).view(1, 3, 1, 1), persistent=False)
        per_stage = feature_dim // len(backbone.stage_names)
        for i, channels in enumerate(backbone.stage_channels):
            self.register_buffer(f"pool{i}", channel_pooling_matrix(channels, per_stage), persistent=False)
        self.feature_dim = feature_dim

    def normalise(self, images: torch.Tensor) -> torch.Tensor:
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
                stage = F.avg_pool2d(stage, self.neighbourhood, stride=1, padding=pad, count_include_pad=self.border == "zeros")
            if grid is None:
                grid = (stage.shape[-2], stage.shape[-1])
            elif stage.shape[-2:] != grid:
                stage = F.interpolate(stage, size=grid, mode="bilinear", align_corners=False)
            parts.append(stage)
        return torch.cat(parts, dim=1).permute(0, 2, 3, 1).contiguous()
