"""The UDA detector: a global image encoder phi with a bias-free projection head, a fixed centre.

score(x) = ||phi(x) - mu||^2. It is a global detector: no pixel heatmap.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from patchshift.core.common.errors import ConfigError
from patchshift.core.engine.backbone import load_classifier
from patchshift.core.engine.drift import DriftReference
from patchshift.core.engine.patchcore import Provenance, ScoreResult
from patchshift.core.uda.uda_config import UDAConfig


class Encoder(nn.Module):
    """phi: the pretrained classifier without its head, global average pooled, then a linear map
    without bias."""

    def __init__(
        self,
        backbone: nn.Module,
        embedding_dim: int,
        mean: tuple[float, ...],
        std: tuple[float, ...],
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(backbone.num_features, embedding_dim, bias=False)
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    def pooled(self, images: torch.Tensor) -> torch.Tensor:
        return self.backbone((images - self.mean) / self.std)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.pooled(images))


def build_encoder(cfg: UDAConfig, device: torch.device) -> tuple[Encoder, str]:
    """phi with pretrained weights; the head starts as a fixed random orthogonal projection
    (seeded)."""
    classifier, path = load_classifier(cfg.backbone, cfg.weights)
    if not hasattr(classifier, "reset_classifier"):
        raise ConfigError(f"backbone {cfg.backbone} cannot drop its classifier head")
    classifier.reset_classifier(0)
    pretrained = getattr(classifier, "pretrained_cfg", {}) or {}
    encoder = Encoder(
        classifier,
        cfg.embedding_dim,
        tuple(pretrained.get("mean", (0.485, 0.456, 0.406))),
        tuple(pretrained.get("std", (0.229, 0.224, 0.225))),
    )
    generator = torch.Generator().manual_seed(cfg.seed)
    weight = torch.empty_like(encoder.head.weight)
    nn.init.orthogonal_(weight, generator=generator)
    with torch.no_grad():
        encoder.head.weight.copy_(weight)
    return encoder.to(device).eval(), str(path)


class UDAModel:
    """A global detector (distance of an image embedding to a centre): scores, no heatmaps
    (core.engine.detector.Detector)."""

    kind = "uda"  # the artifact kind, kept from before the method was named uda-global
    described = "uda-global"  # how messages name it (the method that makes it)
    gives_heatmaps = False

    def __init__(
        self,
        config: UDAConfig,
        encoder: Encoder,
        centre: torch.Tensor,
        threshold: float,
        provenance: Provenance,
        device: torch.device,
        weights_path: str = "",
        version: str | None = None,
    ) -> None:
        self.config = config
        self.encoder = encoder
        self.centre = centre.detach().to(device)
        self.threshold = float(threshold)
        self.provenance = provenance
        self.device = device
        self.weights_path = weights_path
        self.version = version
        self.drift_reference: DriftReference | None = (
            None  # embeddings of the images it was made for
        )

    @property
    def input_hw(self) -> tuple[int, int]:
        return (self.config.image_size[1], self.config.image_size[0])

    @torch.inference_mode()
    def embed(self, images: torch.Tensor) -> torch.Tensor:
        self.encoder.eval()
        return self.encoder(images.to(self.device))

    @torch.inference_mode()
    def score(self, images: torch.Tensor) -> ScoreResult:
        """images (B, 3, H, W) in [0, 1] at the input size -> squared distances to the centre.

        A global detector: no patch scores and no heatmap; the embeddings are the drift descriptors.
        """
        expected = self.input_hw
        if images.ndim != 4 or tuple(images.shape[-2:]) != expected:
            raise ConfigError(
                f"expected a (B, 3, {expected[0]}, {expected[1]}) batch, got {tuple(images.shape)}"
            )
        embeddings = self.embed(images)
        return ScoreResult((embeddings - self.centre).square().sum(dim=1), None, None, embeddings)

    def score_batches(self, batches) -> tuple[np.ndarray, None]:
        """Scores (N,) of a stream of input batches; no heatmaps (a global detector)."""
        scores = [self.score(batch).scores.cpu().numpy() for batch in batches]
        return (np.concatenate(scores) if scores else np.zeros(0)), None

    def score_tensor(self, images: torch.Tensor, batch_size: int = 32) -> np.ndarray:
        return self.embed_and_score(images, batch_size)[0]

    def embed_and_score(
        self, images: torch.Tensor, batch_size: int = 32
    ) -> tuple[np.ndarray, np.ndarray]:
        if len(images) == 0:
            return np.zeros(0), np.zeros((0, self.config.embedding_dim))
        results = [
            self.score(images[i : i + batch_size]) for i in range(0, len(images), batch_size)
        ]
        return np.concatenate([r.scores.cpu().numpy() for r in results]), np.concatenate(
            [r.descriptors.cpu().numpy() for r in results]
        )
