"""PatchCore: fit a memory bank of normal patch features; score images against it.

`PatchCoreModel` holds the feature extractor (with its BatchNorm state, the only part that
adaptation changes), the frozen bank, its FAISS index and the decision threshold.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch

from patchshift.core.common.device import resolve_device
from patchshift.core.common.errors import ConfigError, DatasetError
from patchshift.core.common.images import ImageSource, iter_batches
from patchshift.core.common.options import check_options
from patchshift.core.common.progress import CancelFn, ProgressFn, check_cancel, report
from patchshift.core.engine.anomaly_map import anomaly_maps
from patchshift.core.engine.backbone import Backbone, build_backbone
from patchshift.core.engine.contamination import FilterSettings, filter_patches, robust_cut
from patchshift.core.engine.coreset import coreset_size, kcenter_coreset
from patchshift.core.engine.drift import DriftReference, image_descriptors
from patchshift.core.engine.features import PatchFeatureExtractor
from patchshift.core.engine.index import BankIndex
from patchshift.core.engine.levels import image_levels, pooled_levels
from patchshift.core.engine.model_config import ModelConfig
from patchshift.core.engine.reduction import FITTED, check_reduction, fit_reduction
from patchshift.core.engine.threshold import quantile_threshold

log = logging.getLogger(__name__)


@dataclass
class ScoreResult:
    scores: torch.Tensor  # (B,) image scores
    patch_scores: (
        torch.Tensor | None
    )  # (B, h, w) distance of each patch to its nearest bank row (None: global detector)
    anomaly_maps: (
        torch.Tensor | None
    )  # (B, H, W) blurred heatmap at the model input resolution (None: global detector)
    descriptors: torch.Tensor  # (B, 2D) per-image feature summary for drift monitoring


@dataclass
class Provenance:
    """Where a model version came from; stored in its manifest."""

    method: str = "fit"
    parent: str | None = None
    created: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    threshold_source: str = "holdout-quantile"
    calibration_scores: list[float] = field(default_factory=list)
    n_train_images: int = 0
    details: dict = field(default_factory=dict)


def build_extractor(
    config: ModelConfig, device: torch.device
) -> tuple[Backbone, PatchFeatureExtractor]:
    backbone = build_backbone(config.backbone, config.weights, config.feature_strides)
    extractor = PatchFeatureExtractor(
        backbone,
        config.feature_dim,
        config.neighbourhood,
        config.neighbourhood_border,
        config.feature_reduction,
        config.seed,
    )
    return backbone, extractor.to(device).eval()


class PatchCoreModel:
    """A memory bank of normal patch features: image scores and pixel heatmaps
    (core.engine.detector.Detector)."""

    kind = "patchcore"
    gives_heatmaps = True

    def __init__(
        self,
        config: ModelConfig,
        backbone: Backbone,
        extractor: PatchFeatureExtractor,
        bank: torch.Tensor,
        threshold: float,
        provenance: Provenance,
        device: torch.device,
        index: BankIndex | None = None,
        version: str | None = None,
        drift_reference: DriftReference | None = None,
    ) -> None:
        self.config = config
        self.backbone = backbone
        self.extractor = extractor
        self.bank = bank.detach().to("cpu", torch.float32).contiguous()
        self.threshold = float(threshold)
        self.provenance = provenance
        self.device = device
        # The bank never changes between versions of a model, so adapted versions share the index.
        self.index = index or BankIndex(self.bank, config.index, config.ivf_nprobe, device)
        self.version = version  # the name it was loaded under (a directory name); None until saved
        self.bank_path: Path | None = None  # the stored bank file, which new versions hard-link
        self.drift_reference = drift_reference  # the condition this version was made for

    @property
    def input_hw(self) -> tuple[int, int]:
        return self.config.input_hw

    @torch.inference_mode()
    def features(self, images: torch.Tensor) -> torch.Tensor:
        self.extractor.eval()
        return self.extractor(images.to(self.device))

    @torch.inference_mode()
    def score(self, images: torch.Tensor) -> ScoreResult:
        """images: (B, 3, H, W) in [0, 1] at the model input size."""
        expected = self.config.input_hw
        if tuple(images.shape[-2:]) != expected or images.ndim != 4:
            raise ConfigError(
                f"expected a (B, 3, {expected[0]}, {expected[1]}) batch, got {tuple(images.shape)}"
            )
        feats = self.features(images)
        patch_scores, image_scores = self.score_features(feats)
        maps = anomaly_maps(patch_scores, expected, self.config.blur_sigma)
        return ScoreResult(image_scores, patch_scores, maps, image_descriptors(feats))

    @torch.inference_mode()
    def score_features(self, feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, h, w, D) patch features -> patch scores (B, h, w) and image scores (B,)."""
        feats = feats.to(self.device)
        batch, h, w, dim = feats.shape
        flat = feats.reshape(-1, dim)
        distances, nearest = self.index.search_images(feats.reshape(batch, h * w, dim))
        patch_scores = distances.view(batch, h, w)
        scores = patch_scores.flatten(1).max(dim=1)
        image_scores = scores.values
        if self.config.reweight_neighbours > 0:
            image_scores = self._reweight(
                flat.view(batch, h * w, dim), scores.indices, nearest.view(batch, -1), image_scores
            )
        return patch_scores, image_scores

    def _reweight(
        self,
        feats: torch.Tensor,
        worst: torch.Tensor,
        nearest: torch.Tensor,
        worst_scores: torch.Tensor,
    ) -> torch.Tensor:
        """PatchCore Eq. 7: damp the score when the nearest bank row sits in a dense
        neighbourhood."""
        rows = torch.arange(feats.shape[0], device=feats.device)
        test_patch = feats[rows, worst]  # (B, D)
        star = nearest[rows, worst]  # (B,) index of m*
        star_vectors = self.bank[star.cpu()].to(feats.device)
        _, neighbours = self.index.search(
            star_vectors, k=self.config.reweight_neighbours
        )  # N_b(m*)
        bank_rows = self.bank[neighbours.cpu().clamp_min(0)].to(feats.device)  # (B, b, D)
        dist = torch.linalg.vector_norm(bank_rows - test_patch.unsqueeze(1), dim=-1)
        weight = 1.0 - torch.exp(worst_scores - torch.logsumexp(dist, dim=1))
        return weight * worst_scores

    def score_batches(self, batches: Iterable[torch.Tensor]) -> tuple[np.ndarray, np.ndarray]:
        """Scores (N,) and heatmaps (N, H, W) of a stream of input batches, on the CPU."""
        scores, maps, _ = self.score_stream(batches)
        return scores, maps

    def score_stream(
        self, batches: Iterable[torch.Tensor]
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Scores (N,), heatmaps (N, H, W) and drift descriptors (N, 2D), on the CPU."""
        scores, maps, descriptors = [], [], []
        for batch in batches:
            result = self.score(batch)
            scores.append(result.scores.cpu().numpy())
            maps.append(result.anomaly_maps.cpu().numpy())
            descriptors.append(result.descriptors.cpu().numpy())
        if not scores:
            return (
                np.zeros(0),
                np.zeros((0, *self.config.input_hw)),
                np.zeros((0, 2 * self.extractor.feature_dim)),
            )
        return np.concatenate(scores), np.concatenate(maps), np.concatenate(descriptors)


def split_holdout(n_images: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Random (bank, holdout) index split; at least one holdout image when fraction > 0."""
    if fraction <= 0:
        return np.arange(n_images), np.arange(0)
    n_holdout = max(1, round(n_images * fraction))
    if n_images - n_holdout < 1:
        raise DatasetError(
            f"{n_images} normal image(s) are too few: the threshold needs {n_holdout} held out "
            "and the bank at least one"
        )
    order = np.random.default_rng(seed).permutation(n_images)
    return np.sort(order[n_holdout:]), np.sort(order[:n_holdout])


def fit(
    sources: Sequence[ImageSource],
    config: ModelConfig,
    device: str | torch.device | None = None,
    threshold: float | None = None,
    progress: ProgressFn | None = None,
    cancel: CancelFn | None = None,
) -> PatchCoreModel:
    """Fit on normal images: a coreset memory bank, and a threshold that flags `false_alarm_rate`
    of normal images (k-fold or held-out calibration; `threshold` fixes it instead)."""
    if len(sources) == 0:
        raise DatasetError("no normal images to fit on")
    kfold = config.calibration == "kfold"
    if not kfold and config.holdout_fraction <= 0 and threshold is None:
        raise ConfigError("with no held-out images (holdout fraction 0) a threshold must be given")
    if kfold and threshold is None and len(sources) < 2:
        raise DatasetError("k-fold calibration needs at least 2 normal images")
    check_options(config)
    device = device if isinstance(device, torch.device) else resolve_device(device)
    torch.manual_seed(config.seed)
    backbone, extractor = build_extractor(config, device)
    check_reduction(
        config.feature_reduction, config.feature_dim, backbone.name, backbone.stage_channels
    )
    bank_idx, holdout_idx = split_holdout(
        len(sources), 0.0 if kfold else config.holdout_fraction, config.seed
    )
    bank_sources = [sources[i] for i in bank_idx]
    if config.feature_reduction in FITTED:
        fit_extractor_reduction(extractor, bank_sources, config, device, cancel)

    chunks: list[torch.Tensor] = []
    descriptors: list[torch.Tensor] = []
    levels: list[tuple[torch.Tensor, torch.Tensor]] = []
    with torch.inference_mode():
        for batch, _, start in iter_batches(bank_sources, config.image_size, config.batch_size):
            check_cancel(cancel)
            feats = extractor(batch.to(device))
            descriptors.append(image_descriptors(feats).cpu())
            levels.append(image_levels(batch))
            chunks.append(feats.cpu())
            report(progress, "features", start + len(batch), len(bank_sources))
    image_feats = torch.cat(chunks)  # (N, h, w, D): k-fold calibration scores them again
    del chunks
    # what an adaptation matches a new condition's input levels to (core.engine.levels)
    extractor.source_levels = pooled_levels(levels)
    n_images, h, w, _ = image_feats.shape
    patches = image_feats.reshape(-1, image_feats.shape[-1])
    patch_image = torch.arange(n_images).repeat_interleave(h * w)  # the image each patch came from
    clean_images = torch.ones(n_images, dtype=torch.bool)
    if config.contamination == "auto":
        settings = FilterSettings(cut_z=config.contamination_cut_z, seed=config.seed)
        kept = filter_patches(
            image_feats.reshape(n_images, h * w, -1).to(device), settings, progress, cancel
        ).to("cpu")
        patches, patch_image = patches[kept.keep.flatten()], patch_image[kept.keep.flatten()]
        clean_images = suspect_free_images(kept.scores)
        log.info(
            "contamination filter: kept %.1f%% of patches; %d of %d images left out of the "
            "calibration",
            100 * kept.kept_share,
            int((~clean_images).sum()),
            n_images,
        )
    size = coreset_size(len(patches), config.coreset_ratio, config.coreset_max_size)
    log.info("selecting %d of %d patches for the memory bank", size, len(patches))

    def coreset_progress(done: int, total: int) -> None:
        if done % 50 == 0 or done == total:
            check_cancel(cancel)
            report(progress, "coreset", done, total)

    picked = kcenter_coreset(
        patches.to(device),
        size,
        config.coreset_projection_dim,
        config.seed,
        progress=coreset_progress,
    ).cpu()
    bank = patches[picked].clone()
    provenance = Provenance(method="fit", n_train_images=len(sources))
    if config.contamination == "auto":
        provenance.details.update(
            kept_patch_share=round(float(len(patches)) / (n_images * h * w), 4),
            images_left_out_of_calibration=int((~clean_images).sum()),
        )
    reference = (
        DriftReference.from_descriptors(torch.cat(descriptors).numpy())
        if len(bank_sources) >= 2
        else None
    )
    model = PatchCoreModel(
        config, backbone, extractor, bank, math.inf, provenance, device, drift_reference=reference
    )
    if threshold is not None:
        model.threshold = float(threshold)
        provenance.threshold_source = "given"
        return model
    if kfold:
        calibration = kfold_scores(model, image_feats, patch_image[picked], cancel)
        calibration = calibration[
            clean_images.numpy()
        ]  # images that look defective do not calibrate
        provenance.threshold_source = "kfold-quantile"
    else:
        holdout = [sources[i] for i in holdout_idx]
        batches = (b for b, _, _ in iter_batches(holdout, config.image_size, config.batch_size))
        calibration, _ = model.score_batches(batches)
    report(progress, "threshold", 1, 1)
    model.threshold = quantile_threshold(calibration, 1.0 - config.false_alarm_rate)
    provenance.calibration_scores = [float(s) for s in calibration]
    return model


REDUCTION_FIT_IMAGES = 64  # training images whose raw patches fit a balanced or pca reduction


def fit_extractor_reduction(
    extractor: PatchFeatureExtractor,
    sources: Sequence[ImageSource],
    config: ModelConfig,
    device: torch.device,
    cancel: CancelFn | None = None,
) -> None:
    """Fit the extractor's reduction on the raw patch features (every channel) of up to
    REDUCTION_FIT_IMAGES training images, chosen by the seed; one extra forward pass over them."""
    pick = np.sort(
        np.random.default_rng(config.seed).permutation(len(sources))[:REDUCTION_FIT_IMAGES]
    )
    chunks = []
    with torch.inference_mode():
        for batch, _, _ in iter_batches(
            [sources[i] for i in pick], config.image_size, config.batch_size
        ):
            check_cancel(cancel)
            feats = extractor(batch.to(device))
            chunks.append(feats.reshape(-1, feats.shape[-1]))
    reduction = fit_reduction(
        config.feature_reduction,
        torch.cat(chunks),
        config.feature_dim,
        extractor.stage_channels,
        config.seed,
    )
    extractor.set_reduction(reduction)


def suspect_free_images(mutual: torch.Tensor, z: float = 3.0) -> torch.Tensor:
    """(N, P) mutual patch scores -> (N,) bool: images whose worst patch is not an outlier among
    the images' worst patches (median + z robust deviations). Every image when fewer than half
    would remain: a calibration set is not cut down to the few most typical images."""
    worst = mutual.amax(dim=1)
    clean = worst <= robust_cut(worst, z)
    return clean if int(clean.sum()) * 2 >= len(clean) else torch.ones_like(clean)


def kfold_scores(
    model: PatchCoreModel,
    image_feats: torch.Tensor,
    row_image: torch.Tensor,
    cancel: CancelFn | None = None,
    scored: torch.Tensor | None = None,
) -> np.ndarray:
    """Out-of-fold score of every training image: its features against the model's bank without
    the rows that came from its fold's images (so no image is scored against its own patches).

    image_feats: (N, h, w, D); row_image: (M,) the image each bank row came from, -1 for rows
    that came from none of them (they stay in every fold's bank); scored: the indices of the
    images to score (default: all), in the order of the result."""
    return kfold_patch_scores(model, image_feats, row_image, cancel, scored)[1]


def kfold_patch_scores(
    model: PatchCoreModel,
    image_feats: torch.Tensor,
    row_image: torch.Tensor,
    cancel: CancelFn | None = None,
    scored: torch.Tensor | None = None,
) -> tuple[torch.Tensor, np.ndarray]:
    """kfold_scores with the patch scores behind them: (S, h, w) patch scores and (S,) image scores
    of the `scored` images (default: all N). An image that gave the bank no row is scored against
    the whole bank, as a deployed version would score it."""
    config = model.config
    n_images, h, w = image_feats.shape[:3]
    scored = torch.arange(n_images) if scored is None else scored
    owns = torch.zeros(n_images, dtype=torch.bool)
    owns[row_image[row_image >= 0]] = True
    folds = min(config.calibration_folds, n_images)
    fold_of = torch.from_numpy(np.random.default_rng(config.seed).permutation(n_images) % folds)
    scores = torch.full((n_images,), math.nan)
    patches = torch.full((n_images, h, w), math.nan)
    for fold in range(folds):
        check_cancel(cancel)
        keep = (row_image < 0) | (fold_of[row_image.clamp_min(0)] != fold)
        members = scored[(fold_of[scored] == fold) & owns[scored]]
        if not keep.any():  # every bank row came from this fold: nothing to score against
            raise DatasetError(
                "too few distinct images to score each one against a memory without its own "
                "patches (every "
                "memory row came from one group of images); add images (when fitting: or use "
                "holdout calibration)"
            )
        fold_model = PatchCoreModel(
            config,
            model.backbone,
            model.extractor,
            model.bank[keep],
            math.inf,
            model.provenance,
            model.device,
        )
        for start in range(0, len(members), config.batch_size):
            chunk = members[start : start + config.batch_size]
            patch_scores, image_scores = fold_model.score_features(image_feats[chunk])
            scores[chunk], patches[chunk] = image_scores.cpu(), patch_scores.cpu()
    strangers = scored[~owns[scored]]
    for start in range(0, len(strangers), config.batch_size):
        chunk = strangers[start : start + config.batch_size]
        patch_scores, image_scores = model.score_features(image_feats[chunk])
        scores[chunk], patches[chunk] = image_scores.cpu(), patch_scores.cpu()
    return patches[scored], scores[scored].numpy()
