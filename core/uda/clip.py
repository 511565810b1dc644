"""psi from CLIP, as in the UDA paper: the image tower of an open_clip model, loaded from a local
checkpoint file (never downloaded). Only used to cluster the target; it is never trained."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from patchshift.core.common.errors import ConfigError

log = logging.getLogger(__name__)


class ClipImageEncoder(nn.Module):
    """Images in [0, 1] at any size -> CLIP image embeddings (resized and normalised as CLIP
    expects)."""

    def __init__(
        self,
        clip: nn.Module,
        size: tuple[int, int],
        mean: tuple[float, ...],
        std: tuple[float, ...],
    ) -> None:
        super().__init__()
        self.clip = clip
        self.size = size
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if tuple(images.shape[-2:]) != self.size:
            images = F.interpolate(
                images, size=self.size, mode="bilinear", antialias=True, align_corners=False
            )
        return self.clip.encode_image((images - self.mean) / self.std)


def load_clip_encoder(
    model_name: str, checkpoint: str | Path, device: torch.device
) -> ClipImageEncoder:
    """`model_name`: an open_clip architecture (e.g. ViT-B-32) or the path of its JSON config;
    `checkpoint`: the local weights file of that architecture."""
    try:
        import open_clip
    except ImportError:
        raise ConfigError(
            "encoder 'clip' needs the open-clip-torch package: pip install 'patchshift[clip]'"
        ) from None
    path = Path(checkpoint).expanduser()
    if not path.is_file():
        raise ConfigError(
            f"CLIP checkpoint {path} does not exist (give the local file of a {model_name} "
            "open_clip checkpoint)"
        )
    config = Path(model_name).expanduser()
    if config.suffix == ".json":
        if not config.is_file():
            raise ConfigError(f"CLIP model config {config} does not exist")
        open_clip.add_model_config(config)
        model_name = config.stem
    if model_name not in open_clip.list_models():
        raise ConfigError(
            f"unknown CLIP architecture {model_name!r}; give an open_clip name such as ViT-B-32 "
            "or a JSON config file"
        )
    try:
        clip = open_clip.create_model(model_name, pretrained=str(path), device=device)
    except (
        Exception
    ) as exc:  # whatever the file holds, the engineer needs to know it is the wrong one
        raise ConfigError(
            f"CLIP checkpoint {path} does not load into {model_name}: "
            f"{str(exc).splitlines()[0][:300]}"
        ) from None
    clip.eval().requires_grad_(False)
    preprocess = open_clip.get_model_preprocess_cfg(clip)
    size = preprocess.get("size", 224)
    size = (size, size) if isinstance(size, int) else tuple(size)
    log.info("psi: CLIP %s image encoder from %s", model_name, path)
    return (
        ClipImageEncoder(clip, size, tuple(preprocess["mean"]), tuple(preprocess["std"]))
        .to(device)
        .eval()
    )
