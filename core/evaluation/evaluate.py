"""Score a labelled test set (optionally corrupted) and compute the detection metrics."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from patchshift.core.common.images import iter_batches
from patchshift.core.common.progress import CancelFn, ProgressFn, check_cancel, report
from patchshift.core.engine.patchcore import PatchCoreModel
from patchshift.core.evaluation.corruptions import corrupt
from patchshift.core.evaluation.data import Sample, load_mask
from patchshift.core.evaluation.metrics import (
    aupro,
    f1_at_threshold,
    image_auroc,
    oracle_recall,
    pixel_auroc,
)


@dataclass
class EvalResult:
    image_auroc: float
    # NaN (null in JSON) without a mask for every defective image, or for a global detector
    pixel_auroc: float
    aupro: float
    f1: float
    threshold: float
    n_images: int
    n_anomalous: int
    seconds: float
    false_alarm_rate: float = float("nan")  # share of good images above the stored threshold
    recall: float = float("nan")  # share of defective images above it
    # The threshold that flags exactly the model's false-alarm rate of these good images (needs
    # labels), and its recall: what a perfect threshold would catch; recall / oracle_recall is the
    # threshold's share.
    oracle_threshold: float = float("nan")
    oracle_recall: float = float("nan")
    n_masks: int = 0  # defective images with a ground-truth mask
    corruption: str | None = None
    severity: int | None = None

    def to_dict(self) -> dict:
        """JSON-ready: metrics a model cannot give (pixel metrics of a global detector) are null."""
        return {
            k: (None if isinstance(v, float) and v != v else v) for k, v in asdict(self).items()
        }


def asked_false_alarm_rate(model: PatchCoreModel) -> float:
    """The share of good parts the version's threshold was set to flag (a UDA version states its
    quantile)."""
    return asked_rate(model.config.to_dict())


def asked_rate(config: dict) -> float:
    """asked_false_alarm_rate from a version's stored config (its manifest), without loading it."""
    if "false_alarm_rate" in config:
        return float(config["false_alarm_rate"])
    return 1.0 - float(config["threshold_quantile"])


def score_samples(
    model: PatchCoreModel,
    samples: Sequence[Sample],
    corruption: str | None = None,
    severity: int | None = None,
    seed: int = 0,
    progress: ProgressFn | None = None,
    cancel: CancelFn | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Image scores (N,) and heatmaps (N, H, W) at the model input resolution."""
    paths = [s.path for s in samples]

    def batches():
        for batch, _, start in iter_batches(
            paths, model.config.image_size, model.config.batch_size
        ):
            check_cancel(cancel)
            yield (
                corrupt(batch, corruption, severity or 5, seed=seed + start)
                if corruption
                else batch
            )
            report(progress, "score", start + len(batch), len(paths))

    return model.score_batches(batches())


def evaluate(
    model: PatchCoreModel,
    samples: Sequence[Sample],
    corruption: str | None = None,
    severity: int | None = None,
    seed: int = 0,
    progress: ProgressFn | None = None,
) -> EvalResult:
    started = time.perf_counter()
    scores, maps = score_samples(model, samples, corruption, severity, seed, progress)
    labels = np.array([s.label for s in samples])
    n_masks = sum(1 for s in samples if s.label == 1 and s.mask_path is not None)
    if (
        maps is None or n_masks < labels.sum()
    ):  # a global detector (UDA), or images labelled without masks
        pixel, pro = float("nan"), float("nan")
    else:
        masks = np.stack([load_mask(s, model.config.image_size) for s in samples])
        pixel, pro = pixel_auroc(masks, maps), aupro(masks, maps)
    oracle_at, oracle_caught = oracle_recall(labels, scores, asked_false_alarm_rate(model))
    return EvalResult(
        image_auroc=image_auroc(labels, scores),
        pixel_auroc=pixel,
        aupro=pro,
        f1=f1_at_threshold(labels, scores, model.threshold),
        false_alarm_rate=float((scores[labels == 0] > model.threshold).mean()),
        recall=float((scores[labels == 1] > model.threshold).mean()),
        oracle_threshold=oracle_at,
        oracle_recall=oracle_caught,
        n_masks=n_masks,
        threshold=model.threshold,
        n_images=len(samples),
        n_anomalous=int(labels.sum()),
        seconds=time.perf_counter() - started,
        corruption=corruption,
        severity=severity if corruption else None,
    )
