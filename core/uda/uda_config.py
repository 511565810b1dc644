"""Configuration of the UDA detector (one dataclass, stored with the model)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

from patchshift.core.common.errors import ConfigError
from patchshift.core.common.options import option
from patchshift.core.engine.model_config import parse_image_size

ENCODERS = ("frozen", "phi", "clip")
# phi when no PatchCore parent says otherwise: the encoder UDA was measured with (it is trained, so
# its cost counts twice); a UDA version made from a PatchCore version inherits that version's
# backbone.
UDA_BACKBONE = "tf_efficientnet_lite0"


@dataclass(frozen=True)
class UDAConfig:
    method: ClassVar[str] = "uda-global"  # the adapter making these versions (core.adapt)
    backbone: str = UDA_BACKBONE  # phi, the trainable encoder
    weights: str | None = None  # local weights file; None: the bundled ones
    image_size: tuple[int, int] = (224, 224)
    embedding_dim: int = option(128, "output of the bias-free projection head", ge=2, le=4096)
    clusters: int = option(
        8, "k-means clusters K on psi(target); the paper finds 8-10 best", ge=2, le=256
    )
    # Refuse to adapt when a two-way split of the target gives two clearly separate groups
    # (separation >= min_separation; about 1 for one mode, pi/2 at most) of comparable size (larger
    # side < min_majority): two products mixed, a half-defective batch whose defects look alike. On
    # ELPV a defective share is not visible this way (poly targets at 10% and 50%: about 1.1), so
    # the check catches mixed populations, not every failure of the scarcity assumption.
    min_majority: float = option(
        0.6, "larger side of a two-way split needed to adapt", ge=0.5, le=1
    )
    min_separation: float = option(
        1.45, "separation index above which two groups are refused", gt=0, le=10
    )
    # psi, the clustering encoder: "frozen" (phi's pretrained backbone, frozen), "phi" (psi = phi,
    # re-clustered as phi learns), or "clip" (an open_clip image tower from a local checkpoint).
    encoder: str = option("frozen", "clustering encoder psi", choices=ENCODERS)
    clip_model: str = "ViT-B-32"  # open_clip architecture name, or the path of its JSON config
    clip_checkpoint: str | None = None  # local weights file; required for encoder="clip"
    epochs: int = option(10, "passes over the target images", ge=1, le=100)
    batch_size: int = option(32, "images per step", ge=2, le=256)
    lr: float = option(1e-4, "learning rate", gt=0, le=1)
    weight_decay: float = option(1e-4, "weight decay", ge=0, le=1)
    tau: float = option(0.1, "InfoNCE temperature", gt=0, le=100)
    lambda_dsvdd: float = option(1.0, "weight of the DSVDD loss", ge=0, le=1000)
    lambda_uda: float = option(1.0, "weight of the contrastive alignment loss", ge=0, le=1000)
    threshold_quantile: float = option(
        0.99, "quantile of held-out source scores used as threshold", gt=0, le=1
    )
    holdout_fraction: float = option(
        0.1, "source normals held out to set the threshold", ge=0, le=0.9
    )
    seed: int = option(0, "random seed", ge=0, le=2**32 - 1)

    def __post_init__(self) -> None:
        object.__setattr__(self, "image_size", parse_image_size(self.image_size))
        if self.encoder == "clip" and not self.clip_checkpoint:
            raise ConfigError(
                "encoder 'clip' needs clip_checkpoint: the local file of an open_clip checkpoint "
                "(nothing is downloaded)"
            )

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["image_size"] = list(self.image_size)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> UDAConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ConfigError(f"unknown UDA setting(s): {', '.join(sorted(unknown))}")
        return cls(**data)


def inherited_settings(parent_config: Any) -> dict[str, Any]:
    """What a UDA version keeps from the version it replaces (that version's config): the encoder
    family and weights file, and from a UDA parent its input size, unless the user says otherwise.
    """
    inherited = {
        "backbone": getattr(parent_config, "backbone", UDA_BACKBONE),
        "weights": getattr(parent_config, "weights", None),
    }
    if isinstance(parent_config, UDAConfig):
        inherited["image_size"] = tuple(parent_config.image_size)
    return inherited
