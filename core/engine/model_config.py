"""Model configuration: one frozen dataclass, stored verbatim in every artifact manifest."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Any

from patchshift.core.common.errors import ConfigError
from patchshift.core.common.options import option

# Chosen on bsd, deeppcb and generated tiles (docs/design-history.md, "Backbone"): at
# most 0.026 image AUROC from the best on each (Lite0: 0.109 on the tiles) and inside the fit and
# scoring budgets, which Lite2, closer still, misses by a few percent. Versions record their
# backbone; manifests without one are Lite0's, the default before.
DEFAULT_BACKBONE = "tf_efficientnet_lite1"
PREVIOUS_DEFAULT_BACKBONE = "tf_efficientnet_lite0"

# The choices of two settings, declared here so that the config stays free of torch; what each one
# does is in core/engine/reduction.py and core/engine/features.py, which take these tuples from
# here.
FEATURE_REDUCTIONS = ("average", "none", "balanced", "random", "pca")
NEIGHBOURHOOD_BORDERS = ("zeros", "inside")

# Largest side accepted for the model input; bigger inputs are almost always a typo.
MAX_INPUT_SIDE = 2048


def parse_image_size(text: str | int | tuple[int, int] | list[int]) -> tuple[int, int]:
    """'256' -> (256, 256); '576x224' -> (576, 224) as (width, height)."""
    if isinstance(text, int):
        size = (text, text)
    elif isinstance(text, (tuple, list)):
        if len(text) != 2:
            raise ConfigError(f"image_size must be N or WIDTHxHEIGHT, got {text!r}")
        size = (int(text[0]), int(text[1]))
    else:
        match = re.fullmatch(r"\s*(\d+)\s*(?:[xX]\s*(\d+))?\s*", str(text))
        if not match:
            raise ConfigError(
                f"image_size must be N or WIDTHxHEIGHT (e.g. 256 or 576x224), got {text!r}"
            )
        width = int(match.group(1))
        size = (width, int(match.group(2)) if match.group(2) else width)
    for side in size:
        if not 32 <= side <= MAX_INPUT_SIDE:
            raise ConfigError(
                f"image_size sides must be between 32 and {MAX_INPUT_SIDE} pixels, got "
                f"{size[0]}x{size[1]}"
            )
    return size


@dataclass(frozen=True)
class ModelConfig:
    """Everything that determines a PatchCore model's features, bank and scores.

    Construction checks only consistency; the ranges of the bounded fields are checked where a
    config comes from a person (CLI, HTTP) and by `fit` (options.check_options), never when a
    stored version is loaded, so a version made under older ranges keeps loading."""

    backbone: str = DEFAULT_BACKBONE
    # Path of a local weights file; None means the weights bundled for the default backbone.
    weights: str | None = None
    # Strides of the backbone stages whose maps become patch features (PatchCore: 8 and 16).
    feature_strides: tuple[int, ...] = (8, 16)
    image_size: tuple[int, int] = (256, 256)  # (width, height) of the model input
    # D: channels per patch after reduction; the backbone and the reduction bound it further
    # (reduction.check_reduction).
    feature_dim: int = option(128, "patch feature dimension D", ge=2, le=4096)
    # How stage channels become the D feature channels (core/engine/reduction.py, REDUCTIONS);
    # fitted reductions are stored in the artifact. Decided in docs/design-history.md ("Feature
    # reduction").
    feature_reduction: str = option(
        "average",
        "how stage channels become D: average (each stage pooled to D/stages), none or balanced "
        "(every channel; D = their sum), random (Gaussian projection) or pca (fitted on training "
        "patches)",
        choices=FEATURE_REDUCTIONS,
    )
    neighbourhood: int = option(3, "side of the local averaging window (odd)", ge=1, le=15)
    # What the averaging window counts beyond the feature map's edge (core/engine/features.py,
    # BORDERS).
    neighbourhood_border: str = option(
        "zeros",
        "cells beyond the edge in the averaging window: zeros (PatchCore) or inside (average only "
        "inside)",
        choices=NEIGHBOURHOOD_BORDERS,
    )
    coreset_ratio: float = option(
        0.1, "share of training patches kept in the memory bank", gt=0, le=1
    )
    # 20k rows: on deeppcb and the generated tiles the 10k cap cost accuracy, and 20k stays inside
    # the scoring budget on both datasets in shared/data (docs/design-history.md, "Coreset").
    coreset_max_size: int | None = option(
        20_000, "upper bound on bank rows", ge=1, le=10_000_000, optional=True
    )
    coreset_projection_dim: int = option(
        64, "random projection used only to pick the coreset", ge=8, le=1024
    )
    # Nearest-neighbour search: "flat" is exact L2; "ivf" is approximate and faster (FAISS IVF; on a
    # GPU without faiss-gpu a half-precision screen with an exact second look); "auto" picks by bank
    # size (core/engine/index.py, resolve_kind). Stored versions keep the kind they
    # were fitted with.
    index: str = option(
        "auto",
        "nearest-neighbour search: auto (by bank size), flat (exact) or ivf",
        choices=("auto", "flat", "ivf"),
    )
    ivf_nprobe: int = option(16, "IVF cells searched per query", ge=1, le=4096)
    # 0 = image score is the max patch distance; b > 0 = PatchCore re-weighting with b neighbours.
    reweight_neighbours: int = option(
        0, "PatchCore score re-weighting with B neighbours (0: off)", ge=0, le=64
    )
    blur_sigma: float = option(4.0, "Gaussian blur of the heatmap, in input pixels", ge=0, le=64)
    # How the threshold is set from normal images only: "kfold" scores every training image against
    # the bank without the rows of its fold (many calibration scores; the bank keeps every image),
    # "holdout" scores a held-out share that the bank never sees (versions before 0.2).
    calibration: str = option(
        "kfold", "how normal images set the threshold", choices=("kfold", "holdout")
    )
    calibration_folds: int = option(10, "folds of k-fold calibration", ge=2, le=20)
    # The share of normal parts the threshold may flag: the line's accepted false-alarm rate.
    false_alarm_rate: float = option(
        0.01, "share of normal images allowed above the threshold", ge=0, le=0.5
    )
    # "auto": the training images may hold some defects; patches that the other training images do
    # not vouch for are left out of the bank, and images with such patches out of the calibration
    # (core.engine.contamination). Off by default: it costs a pass over all pairs of images.
    contamination: str = option(
        "off",
        "training images may include defects: filter them out (auto) or not (off)",
        choices=("off", "auto"),
    )
    # Where contamination=auto cuts: patches whose mutual score is above median + z * 1.4826 * MAD
    # are left out of the bank. Lower is stricter (drops more defect patches and more rare normal
    # ones).
    contamination_cut_z: float = option(
        3.0,
        "with contamination auto: drop patches scored more than z robust standard deviations "
        "(1.4826 x MAD) above the median (lower is stricter)",
        ge=0,
        le=100,
    )
    holdout_fraction: float = option(
        0.1,
        "share of normal images held out to set the threshold (holdout calibration)",
        ge=0,
        le=0.9,
    )
    seed: int = option(0, "random seed (hold-out split, coreset)", ge=0, le=2**32 - 1)
    batch_size: int = option(16, "images per forward pass", ge=1, le=256)

    def __post_init__(self) -> None:
        object.__setattr__(self, "image_size", parse_image_size(self.image_size))
        object.__setattr__(self, "feature_strides", tuple(int(s) for s in self.feature_strides))
        if not self.feature_strides or sorted(self.feature_strides) != list(self.feature_strides):
            raise ConfigError(f"feature_strides must be increasing, got {self.feature_strides}")
        if self.feature_dim % len(self.feature_strides):
            raise ConfigError(
                f"feature_dim ({self.feature_dim}) must be a multiple of the number of stages "
                f"({len(self.feature_strides)})"
            )
        if self.neighbourhood % 2 == 0:
            raise ConfigError(f"neighbourhood must be an odd size, got {self.neighbourhood}")

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
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known - {"threshold_quantile"}
        if unknown:
            raise ConfigError(f"unknown model config fields: {', '.join(sorted(unknown))}")
        values = dict(data)
        values.setdefault("backbone", PREVIOUS_DEFAULT_BACKBONE)
        values.setdefault(
            "neighbourhood_border", "inside"
        )  # versions fitted before the setting averaged inside the edge only
        if "threshold_quantile" in values:  # versions before 0.2: a held-out quantile
            values["false_alarm_rate"] = 1.0 - float(values.pop("threshold_quantile"))
            values.setdefault("calibration", "holdout")
        if "feature_strides" in values:
            values["feature_strides"] = tuple(values["feature_strides"])
        if "image_size" in values:
            values["image_size"] = tuple(values["image_size"])
        return cls(**values)

    def replace(self, **changes: Any) -> ModelConfig:
        return dataclasses.replace(self, **changes)


# The fit settings a person chooses (CLI flags and HTTP form fields are made from these).
FIT_OPTIONS = (
    "feature_dim",
    "feature_reduction",
    "coreset_ratio",
    "coreset_max_size",
    "index",
    "reweight_neighbours",
    "calibration",
    "calibration_folds",
    "false_alarm_rate",
    "contamination",
    "contamination_cut_z",
    "holdout_fraction",
    "seed",
)

__all__ = ["ModelConfig", "parse_image_size", "DEFAULT_BACKBONE", "FIT_OPTIONS"]
