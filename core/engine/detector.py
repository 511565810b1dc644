"""What every kind of model version offers the service, whatever it is inside.

PatchCore (a bank of patch features; scores, heatmaps) and UDA (a global detector; scores only)
implement `Detector`. The service scores, thresholds, monitors and stores versions through this
interface alone; what differs between kinds lives in the kind's own class, in core.artifact
(save/load by the manifest's kind) and in the adapters' `parent` (core.adapt.methods).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import Any, ClassVar, Protocol, runtime_checkable

import numpy as np
import torch

from patchshift.core.engine.drift import DriftReference
from patchshift.core.engine.patchcore import Provenance, ScoreResult


@runtime_checkable
class Detector(Protocol):
    kind: ClassVar[str]  # the manifest's "kind": how the artifact is loaded
    gives_heatmaps: ClassVar[bool]  # False: a global detector, scores only
    config: Any  # the kind's config dataclass (to_dict() is stored in the manifest)
    threshold: float
    version: str | None
    provenance: Provenance
    device: torch.device
    drift_reference: DriftReference | None

    @property
    def input_hw(self) -> tuple[int, int]:
        """(height, width) of the batches `score` takes."""

    def score(self, images: torch.Tensor) -> ScoreResult:
        """(B, 3, H, W) images in [0, 1] at the input size -> scores (B,), maps or None, drift
        descriptors."""

    def score_batches(
        self, batches: Iterable[torch.Tensor]
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Scores (N,) and heatmaps (N, H, W) or None of a stream of input batches."""


def with_threshold(model: Detector, threshold: float, provenance: Provenance) -> Detector:
    """A new, unsaved version sharing `model`'s read-only networks and bank, with another
    threshold."""
    derived = copy.copy(model)
    derived.threshold = float(threshold)
    derived.version = None
    derived.provenance = provenance
    return derived
