"""The shift benchmarks' shared protocol: splits, images as uint8, corruptions, evaluation, the
cached source model, and the options of the one-dataset scripts that reuse it (no benchmark imports
another's main)."""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch

from patchshift.core.evaluation.corruptions import CORRUPTIONS

from .helpers import DEFAULT_DATA_ROOT, RESULTS, model_settings


def stratified_split(
    labels: np.ndarray, fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """(adaptation, evaluation) indices; each class split at `fraction`."""
    rng = np.random.default_rng(seed)
    adapt_idx = []
    for value in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == value))
        adapt_idx.extend(members[: max(1, round(len(members) * fraction))])
    adapt_idx = np.sort(np.array(adapt_idx))
    return adapt_idx, np.setdiff1d(np.arange(len(labels)), adapt_idx)


def shift_split(labels: np.ndarray, seed: int, max_eval: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The shift benchmark's (adaptation, evaluation) indices: 20% of each class adapts, the rest
    is scored, subsampled (stratified) to `max_eval` images when given."""
    adapt_idx, eval_idx = stratified_split(labels, 0.2, seed)
    if max_eval and len(eval_idx) > max_eval:
        keep, _ = stratified_split(labels[eval_idx], max_eval / len(eval_idx), seed + 1)
        eval_idx = eval_idx[keep]
    return adapt_idx, eval_idx


def load_images(paths: list[Path], size: tuple[int, int]) -> torch.Tensor:
    """All images as one uint8 (N, 3, H, W) tensor at the model input size."""
    from patchshift.core.common.images import iter_batches

    return torch.cat(
        [(b * 255).round().to(torch.uint8) for b, _, _ in iter_batches(paths, size, 32)]
    )


def corrupt_uint8(images: torch.Tensor, name: str | None, severity: int, seed: int) -> torch.Tensor:
    from patchshift.core.evaluation.corruptions import corrupt

    if not name:
        return images
    out = []
    for start in range(0, len(images), 32):
        batch = images[start : start + 32].float() / 255
        out.append(
            (corrupt(batch, name, severity, seed=seed + start) * 255).round().to(torch.uint8)
        )
    return torch.cat(out)


def as_float(images: torch.Tensor) -> torch.Tensor:
    return images.float() / 255


def evaluate_on(
    model, images: torch.Tensor, labels: np.ndarray, masks: np.ndarray, keep_scores: bool = False
) -> dict:
    """Ranking (image and pixel AUROC, AUPRO) and the verdicts at the model's own threshold: the
    share of good images it flags (false alarms) and of defective images it catches (recall)."""
    from patchshift.core.common.images import resize_batch
    from patchshift.core.evaluation.evaluate import asked_false_alarm_rate
    from patchshift.core.evaluation.metrics import aupro, image_auroc, oracle_recall, pixel_auroc

    scores, maps = model.score_batches(
        resize_batch(as_float(images[i : i + 16]), model.input_hw)
        for i in range(0, len(images), 16)
    )
    scores, labels = np.asarray(scores, dtype=np.float64), np.asarray(labels)
    flagged = scores > model.threshold
    has_regions = (
        maps is not None and np.asarray(masks).any()
    )  # a product without masks has no pixel metrics
    result = {
        "image_auroc": image_auroc(labels, scores),
        "pixel_auroc": pixel_auroc(masks, maps) if has_regions else None,
        "aupro": aupro(masks, maps) if has_regions else None,
        "false_alarm_rate": float(flagged[labels == 0].mean()) if (labels == 0).any() else None,
        "recall": float(flagged[labels == 1].mean()) if (labels == 1).any() else None,
        "threshold": float(model.threshold),
    }
    if (labels == 0).any() and (
        labels == 1
    ).any():  # the recall a perfect threshold at the asked rate would get
        result["oracle_recall"] = oracle_recall(labels, scores, asked_false_alarm_rate(model))[1]
    if keep_scores:
        result["scores"] = [round(float(s), 4) for s in scores]
    return result


def get_model(name: str, root: Path, cache: Path, device: str, overrides: dict):
    """Fit on clean train/good once; later runs load the cached version. The cache is keyed by the
    whole config, so a changed default (backbone, folds, border...) fits anew."""
    import hashlib

    from patchshift.core.artifact import load_model, save_model
    from patchshift.core.engine.model_config import ModelConfig
    from patchshift.core.engine.patchcore import fit
    from patchshift.core.evaluation.data import train_images

    config = ModelConfig(**overrides)
    digest = hashlib.sha256(json.dumps(config.to_dict(), sort_keys=True).encode()).hexdigest()[:10]
    target = (
        cache
        / f"{name}-{config.image_size[0]}x{config.image_size[1]}-{config.feature_dim}-{digest}"
    )
    if (target / "manifest.json").is_file():
        return load_model(target, device=device)
    model = fit(train_images(root), config, device=device)
    save_model(model, target, overwrite=True)
    return model


def add_protocol_arguments(parser: argparse.ArgumentParser, severities: list[int]) -> None:
    """The options of the one-dataset scripts that reuse this protocol (design-runs, alignment)."""
    parser.add_argument("--data-root", default=str(DEFAULT_DATA_ROOT))
    parser.add_argument("--dataset", default="bsd")
    parser.add_argument(
        "--image-size", default=None, help="override the dataset's model input size"
    )
    parser.add_argument("--corruptions", nargs="*", default=list(CORRUPTIONS))
    parser.add_argument("--severities", nargs="*", type=int, default=severities)
    parser.add_argument("--model-cache", default=str(RESULTS / "models"))
    parser.add_argument("--device", default="auto")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out-dir", default=str(RESULTS))


def protocol_split(args: argparse.Namespace):
    """(model, samples, labels, adaptation indices): the fitted model and the 20% adaptation
    split."""
    from patchshift.core.evaluation.data import labelled_samples

    root = Path(args.data_root) / args.dataset
    overrides = model_settings(args.dataset, args.image_size)
    model = get_model(args.dataset, root, Path(args.model_cache), args.device, overrides)
    samples = labelled_samples(root)
    labels = np.array([s.label for s in samples])
    adapt_idx, _ = stratified_split(labels, 0.2, args.seed)
    return model, samples, labels, adapt_idx


def parse_settings(items: Iterable[str]) -> dict:
    """['epochs=3', 'memory=target'] -> {'epochs': 3, 'memory': 'target'}, JSON values else text."""
    fields = {}
    for item in filter(None, items):
        key, _, value = item.partition("=")
        try:
            fields[key] = json.loads(value)
        except json.JSONDecodeError:
            fields[key] = value
    return fields


def parse_variant(text: str) -> tuple[str, dict]:
    """'label:epochs=3,lr=0.001' -> ('label', {'epochs': 3, 'lr': 0.001})."""
    label, _, spec = text.partition(":")
    return label, parse_settings(spec.split(","))


def adaptation_batch(args: argparse.Namespace):
    """(model, images, labels): the fitted model, the adaptation split's clean images as uint8 (N,
    3, H, W) at its input size, and their labels."""
    model, samples, labels, adapt_idx = protocol_split(args)
    return (
        model,
        load_images([samples[i].path for i in adapt_idx], model.config.image_size),
        labels[adapt_idx],
    )
