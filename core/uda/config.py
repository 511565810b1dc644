"""Configuration of the UDA detector (one dataclass, stored with the model)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from ..config import DEFAULT_BACKBONE, parse_image_size
from ..errors import ConfigError


@dataclass(frozen=True)
class UDAConfig:
    backbone: str = DEFAULT_BACKBONE  # phi, the trainable encoder
    weights: str | None = None  # local weights file; None: the bundled ones
    image_size: tuple[int, int] = (224, 224)
    embedding_dim: int = 128  # output of the bias-free projection head
    clusters: int = 8  # K for k-means on psi(target); the paper finds 8-10 best
    # Refuse to adapt when a two-way split of the target leaves less than this share on one side:
    # the target is then two even kinds of images (half defective, two products mixed) and the
    # scarcity assumption visibly fails. Varied normal classes (polycrystalline cells) already
    # split 58/42 at 10% defects, so the check is deliberately coarse.
    min_majority: float = 0.55
    encoder: str = "frozen"  # psi: "frozen" (the bundled backbone, frozen) or "phi" (psi = phi at start)
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
            "min_majority": 0.5 <= self.min_majority < 1, "encoder": self.encoder in ("frozen", "phi"),
            "threshold_quantile": 0 < self.threshold_quantile <= 1, "holdout_fraction": 0 <= self.holdout_fraction < 1,
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            raise ConfigError(f"invalid UDA setting(s): {', '.join(f'{b}={getattr(self, b)!r}' for b in bad)}")

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
