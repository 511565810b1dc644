"""Configuration of the UDA detector (one dataclass, stored with the model)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from ..config import DEFAULT_BACKBONE, parse_image_size
from ..errors import ConfigError


ENCODERS = ("frozen", "phi", "clip")


@dataclass(frozen=True)
class UDAConfig:
    backbone: str = DEFAULT_BACKBONE  # phi, the trainable encoder
    weights: str | None = None  # local weights file; None: the bundled ones
    image_size: tuple[int, int] = (224, 224)
    embedding_dim: int = 128  # output of the bias-free projection head
    clusters: int = 8  # K for k-means on psi(target); the paper finds 8-10 best
    # Refuse to adapt when a two-way split of the target gives two clearly separate groups
    # (separation >= min_separation; about 1 for one mode, pi/2 at most) of comparable size (larger
    # side < min_majority): two products mixed, a half-defective batch whose defects look alike. On
    # ELPV a defective share is not visible this way (poly targets at 10% and 50%: about 1.1), so the
    # check catches mixed populations, not every failure of the scarcity assumption.
    min_majority: float = 0.6
    min_separation: float = 1.45
    # psi, the clustering encoder: "frozen" (phi's pretrained backbone, frozen), "phi" (psi = phi,
    # re-clustered as phi learns), or "clip" (an open_clip image tower from a local checkpoint).
    encoder: str = "frozen"
    clip_model: str = "ViT-B-32"  # open_clip architecture name, or the path of its JSON config
    clip_checkpoint: str | None = None  # local weights file; required for encoder="clip"
    epochs: int = 10
    batch_size: int = 32
    lr: float = 1e-4
    weight_decay: float = 1e-4
    tau: float = 0.1  # InfoNCE temperature
    lambda_dsvdd: float = 1.0
    lambda_uda: float = 1.0
    threshold_quantile: float = 0.99
    holdout_fraction: float = 0.1  # source normals held out to set the threshold
    seed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "image_size", parse_image_size(self.image_size))
        checks = {
            "embedding_dim": self.embedding_dim >= 2, "clusters": self.clusters >= 2, "epochs": self.epochs >= 0,
            "batch_size": self.batch_size >= 2, "lr": self.lr > 0, "tau": self.tau > 0,
            "min_majority": 0.5 <= self.min_majority <= 1, "min_separation": self.min_separation > 0, "encoder": self.encoder in ENCODERS,
            "threshold_quantile": 0 < self.threshold_quantile <= 1, "holdout_fraction": 0 <= self.holdout_fraction < 1,
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            raise ConfigError(f"invalid UDA setting(s): {', '.join(f'{b}={getattr(self, b)!r}' for b in bad)}")
        if self.encoder == "clip" and not self.clip_checkpoint:
            raise ConfigError("encoder 'clip' needs clip_checkpoint: the local file of an open_clip checkpoint (nothing is downloaded)")

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["image_size"] = list(self.image_size)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "UDAConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ConfigError(f"unknown UDA setting(s): {', '.join(sorted(unknown))}")
        return cls(**data)


def inherited_settings(kind: str, config: dict[str, Any]) -> dict[str, Any]:
    """What a UDA version keeps from the version it replaces (its stored config): the encoder
    family and weights file, and for a UDA parent its input size, unless the user says otherwise."""
    inherited = {"backbone": config.get("backbone", DEFAULT_BACKBONE), "weights": config.get("weights")}
    if kind == "uda":
        inherited["image_size"] = tuple(config["image_size"])
    return inherited
