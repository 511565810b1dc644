"""Feature reduction: how the channels of the backbone stages become the D channels of a patch
feature.

Every reduction is linear, so it is stored as matrices: one (C_i, E_i) map per stage, applied to
that stage's channels before the neighbourhood average and the upsampling (both per-channel and
linear, so the order does not change the result and the cheap order is used), and an optional
(sum E_i, D) mix applied after the stages are concatenated. The kinds, and what each does to the
balance of the stages (EfficientNet-Lite0: 40 channels at stride 8, 112 at stride 16):

  average   each stage pooled to D / n_stages channels: every stage weighs the same (default)
  none      every channel of every stage: the widest stage dominates distances; D = sum C_i
  balanced  every channel, each stage divided by its mean patch norm on the training patches, so
            each stage contributes about the same squared distance; D = sum C_i
  random    a fixed Gaussian projection of all channels to D (seeded): mixes the stages
  pca       the first D principal axes of the training patches: mixes the stages, favouring the
            directions of largest variance

`balanced` and `pca` are fitted on training patches; their matrices, like `random`'s, are stored
in the artifact so a reloaded version scores bit-identically. Decided in docs/design-history.md.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from patchshift.core.common.errors import ConfigError
from patchshift.core.engine.model_config import FEATURE_REDUCTIONS

REDUCTIONS = FEATURE_REDUCTIONS
FITTED = ("balanced", "pca")  # need training patches
STORED = (
    "none",
    "balanced",
    "random",
    "pca",
)  # matrices written beside the bank (average: none, as before)
FIT_MAX_PATCHES = 200_000  # training patches sampled to fit balanced or pca


@dataclass
class Reduction:
    """stage_maps[i]: (C_i, E_i); mix: (sum E_i, D) or None (D = sum E_i)."""

    stage_maps: list[torch.Tensor]
    mix: torch.Tensor | None = None

    @property
    def dim(self) -> int:
        return (
            int(self.mix.shape[1])
            if self.mix is not None
            else sum(int(m.shape[1]) for m in self.stage_maps)
        )

    def matrix(self) -> torch.Tensor:
        """The whole reduction as one (sum C_i, D) matrix: raw concatenated channels -> features."""
        block = torch.block_diag(*self.stage_maps)
        return block @ self.mix if self.mix is not None else block

    def state(self) -> dict[str, torch.Tensor]:
        tensors = {
            f"stage{i}": m.detach().cpu().contiguous() for i, m in enumerate(self.stage_maps)
        }
        if self.mix is not None:
            tensors["mix"] = self.mix.detach().cpu().contiguous()
        return tensors

    @classmethod
    def from_state(
        cls, tensors: dict[str, torch.Tensor], stage_channels: tuple[int, ...]
    ) -> Reduction:
        names = [f"stage{i}" for i in range(len(stage_channels))]
        unexpected = set(tensors) - set(names) - {"mix"}
        missing = [n for n in names if n not in tensors]
        if missing or unexpected:
            raise ConfigError(
                f"stored feature reduction has tensors {sorted(tensors)}, expected {names} (and "
                "optionally mix)"
            )
        maps = [tensors[n].float() for n in names]
        for name, m, channels in zip(names, maps, stage_channels, strict=False):
            if m.ndim != 2 or m.shape[0] != channels:
                raise ConfigError(
                    f"stored feature reduction {name} has shape {tuple(m.shape)}, the backbone "
                    f"stage has {channels} channels"
                )
        mix = tensors.get("mix")
        if mix is not None and (mix.ndim != 2 or mix.shape[0] != sum(m.shape[1] for m in maps)):
            raise ConfigError(
                f"stored feature reduction mix has shape {tuple(mix.shape)}, which does not "
                "follow its stage maps"
            )
        return cls(maps, mix.float() if mix is not None else None)


def channel_pooling_matrix(channels: int, out_dim: int) -> torch.Tensor:
    """(channels, out_dim) matrix equal to adaptive average pooling over the channel axis."""
    eye = torch.eye(channels).unsqueeze(1)  # (C, 1, C): each row a one-hot "feature vector"
    return F.adaptive_avg_pool1d(eye, out_dim).squeeze(1)


def check_kind(kind: str) -> None:
    if kind not in REDUCTIONS:
        raise ConfigError(f"feature_reduction must be one of {', '.join(REDUCTIONS)}, got {kind!r}")


def check_reduction(
    kind: str, feature_dim: int, backbone_name: str, stage_channels: tuple[int, ...]
) -> None:
    """Refuse a D the reduction cannot give, naming the limit."""
    check_kind(kind)
    shape = f"{len(stage_channels)} stages of {'/'.join(map(str, stage_channels))} channels"
    if kind == "average" and feature_dim > len(stage_channels) * max(stage_channels):
        limit = len(stage_channels) * max(stage_channels)
        raise ConfigError(
            f"feature_dim must be at most {limit} for {backbone_name} ({shape}), got {feature_dim}"
        )
    if kind == "pca" and feature_dim > sum(stage_channels):
        raise ConfigError(
            f"feature_dim must be at most {sum(stage_channels)} with pca for {backbone_name} "
            f"({shape}), got {feature_dim}"
        )


def initial_reduction(
    kind: str, feature_dim: int, stage_channels: tuple[int, ...], seed: int
) -> Reduction:
    """The reduction before any training patch is seen; for the fitted kinds, every raw channel
    (the features `fit_reduction` is then fitted on)."""
    if kind == "average":
        per_stage = feature_dim // len(stage_channels)
        return Reduction([channel_pooling_matrix(c, per_stage) for c in stage_channels])
    check_kind(kind)
    identity = Reduction([torch.eye(c) for c in stage_channels])
    if kind == "random":
        generator = torch.Generator().manual_seed(seed)
        identity.mix = (
            torch.randn(sum(stage_channels), feature_dim, generator=generator) / feature_dim**0.5
        )
    return identity


def fit_reduction(
    kind: str, raw: torch.Tensor, feature_dim: int, stage_channels: tuple[int, ...], seed: int
) -> Reduction:
    """raw: (N, sum C_i) patch features with every channel -> the fitted reduction (the initial
    one for kinds that need no fitting). Deterministic given the seed."""
    if kind not in FITTED:
        return initial_reduction(kind, feature_dim, stage_channels, seed)
    if raw.ndim != 2 or raw.shape[1] != sum(stage_channels) or len(raw) < 2:
        raise ConfigError(
            f"fitting a {kind} reduction needs (N >= 2, {sum(stage_channels)}) raw patch "
            f"features, got {tuple(raw.shape)}"
        )
    if len(raw) > FIT_MAX_PATCHES:
        pick = torch.randperm(len(raw), generator=torch.Generator().manual_seed(seed))[
            :FIT_MAX_PATCHES
        ]
        raw = raw[pick.to(raw.device)]
    raw = raw.double()
    if kind == "balanced":
        maps, start = [], 0
        for channels in stage_channels:
            norm = float(raw[:, start : start + channels].norm(dim=1).mean())
            maps.append(torch.eye(channels) / max(norm, 1e-12))
            start += channels
        return Reduction(maps)
    centred = raw - raw.mean(0)
    _, _, vh = torch.linalg.svd(centred, full_matrices=False)
    axes = vh[
        :feature_dim
    ].T  # (C, D); sign fixed so a refit on the same patches gives the same matrix
    signs = torch.sign(axes[axes.abs().argmax(0), torch.arange(axes.shape[1])])
    return Reduction(
        [torch.eye(c) for c in stage_channels], (axes * signs).float().cpu().contiguous()
    )


__all__ = [
    "REDUCTIONS",
    "FITTED",
    "STORED",
    "Reduction",
    "channel_pooling_matrix",
    "check_kind",
    "check_reduction",
    "initial_reduction",
    "fit_reduction",
]
