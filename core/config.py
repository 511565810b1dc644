"""Model configuration: one frozen dataclass, stored verbatim in every artifact manifest."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Any

from .errors import ConfigError

DEFAULT_BACKBONE = "tf_efficientnet_lite0"

# Largest side accepted for the model input; bigger inputs are almost always a typo.
MAX_INPUT_SIDE = 2048


def parse_image_size(text: str | int | tuple[int, int] | list[int]) -> tuple[int, int]:
    """'256' -> (256, 256); '576x224' -> (576, 224) as (width, height)."""
    if isinstance(text, int):
        size = (text, text)
    elif isinstance(text, (tuple, list)):
        if len(text) != 2:
            raise ConfigError(f"image size must be WIDTHxHEIGHT, got {text!r}")
        size = (int(text[0]), int(text[1]))
    else:
        match = re.fullmatch(r"\s*(\d+)\s*(?:[xX]\s*(\d+))?\s*", str(text))
        if not match:
            raise ConfigError(f"image size must be N or WIDTHxHEIGHT (e.g. 256 or 576x224), got {text!r}")
        width = int(match.group(1))
        size = (width, int(match.group(2)) if match.group(2) else width)
    for side in size:
        if not 32 <= side <= MAX_INPUT_SIDE:
            raise ConfigError(f"image size sides must be between 32 and {MAX_INPUT_SIDE} pixels, got {size[0]}x{size[1]}")
    return size


@dataclass(frozen=True)
class ModelConfig:
    """Everything that determines a PatchCore model's features, bank and scores."""

    backbone: str = DEFAULT_BACKBONE
    # Path of a local weights file; None means the weights bundled for the default backbone.
    weights: str | None = None
    # Strides of the backbone stages whose maps become patch features (PatchCore: 8 and 16).
    feature_strides: tuple[int, ...] = (8, 16)
    image_size: tuple[int, int] = (256, 256)  # (width, height) of the model input
    feature_dim: int = 128  # D: channels per patch after reduction
    neighbourhood: int = 3  # side of the local averaging window
    coreset_ratio: float = 0.1
    # Bank rows beyond ~10k cost search time but no measured accuracy (README, bank sweep).
    coreset_max_size: int | None = 10_000
    coreset_projection_dim: int = 64  # random projection used only to pick the coreset
    # Nearest-neighbour search: "flat" is exact L2; "ivf" is FAISS IVF (approximate, faster).
    index: str = "flat"
    ivf_nprobe: int = 16
    # 0 = image score is the max patch distance; b > 0 = PatchCore re-weighting with b neighbours.
    reweight_neighbours: int = 0
    blur_sigma: float = 4.0
    holdout_fraction: float = 0.1  # normal training images kept out of the bank to set the threshold
    threshold_quantile: float = 0.99
    seed: int = 0
    batch_size: int = 16

    def __post_init__(self) -> None:
        object.__setattr__(self, "image_size", parse_image_size(self.image_size))
        object.__setattr__(self, "feature_strides", tuple(int(s) for s in self.feature_strides))
        if not self.feature_strides or sorted(self.feature_strides) != list(self.feature_strides):
            raise ConfigError(f"feature_strides must be increasing, got {self.feature_strides}")
        if self.feature_dim < len(self.feature_strides) or self.feature_dim % len(self.feature_strides):
            raise ConfigError(
                f"feature_dim ({self.feature_dim}) must be a positive multiple of the number of stages "
                f"({len(self.feature_strides)})"
            )
        if self.neighbourhood < 1 or self.neighbourhood % 2 == 0:
            raise ConfigError(f"neighbourhood must be an odd positive size, got {self.neighbourhood}")
        if not 0.0 < self.coreset_ratio <= 1.0:
            raise ConfigError(f"coreset ratio must be in (0, 1], got {self.coreset_ratio}")
        if self.coreset_max_size is not None and self.coreset_max_size < 1:
            raise ConfigError(f"coreset maximum size must be positive, got {self.coreset_max_size}")
        if self.index not in ("flat", "ivf"):
            raise ConfigError(f"index must be 'flat' or 'ivf', got {self.index!r}")
        if not 0.0 <= self.holdout_fraction < 1.0:
            raise ConfigError(f"holdout fraction must be in [0, 1), got {self.holdout_fraction}")
        if not 0.0 < self.threshold_quantile <= 1.0:
            raise ConfigError(f"threshold quantile must be in (0, 1], got {self.threshold_quantile}")
        if self.blur_sigma < 0 or self.reweight_neighbours < 0 or self.batch_size < 1:
            raise ConfigError("blur_sigma, reweight_neighbours must be >= 0 and batch_size >= 1")

    @property
    def input_hw(self) -> tuple[int, int]:
        """(height, width), the order tensors use."""
        return self.image_size[1], self.image_size[0]

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["feature_strides"] = list(self.feature_strides)
        data["image_size"] = list(self.image_size)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ConfigError(f"unknown model config fields: {', '.join(sorted(unknown))}")
        values = dict(data)
        if "feature_strides" in values:
            values["feature_strides"] = tuple(values["feature_strides"])
        if "image_size" in values:
            values["image_size"] = tuple(values["image_size"])
        return cls(**values)

    def replace(self, **changes: Any) -> "ModelConfig":
        return dataclasses.replace(self, **changes)


__all__ = ["ModelConfig", "parse_image_size", "DEFAULT_BACKBONE"]
