"""Target memory: the bank moves to the new condition, from unlabeled target images with defects.

Patch features of the target images (through the source backbone, or after a BatchNorm step), the
patches that other target images vouch for (core.engine.contamination), a coreset of them as the
target memory, alone or joined to the source bank. The threshold is re-calibrated from the target
images scored against the memory built without their own fold, each over the patches other images
vouch for: an extreme-value law through two percentiles of those normal scores
(core.engine.threshold.gumbel_threshold), with how sure it is and the share of suspect images it
flags.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from patchshift.core.adapt.adapt_config import AdaptConfig
from patchshift.core.adapt.base import AdaptReport, apply_threshold
from patchshift.core.adapt.batchnorm import batchnorm_step
from patchshift.core.adapt.gate import BatchRanking
from patchshift.core.adapt.methods import Adapter, register
from patchshift.core.common.finite import refuse_non_finite_scores
from patchshift.core.common.progress import CancelFn, ProgressFn, check_cancel, report
from patchshift.core.engine.contamination import (
    MIN_IMAGES,
    TAIL_Z,
    FilterResult,
    FilterSettings,
    filter_patches,
    robust_z,
    vouched_image_scores,
)
from patchshift.core.engine.coreset import coreset_size, kcenter_coreset
from patchshift.core.engine.drift import DriftReference, image_descriptors
from patchshift.core.engine.patchcore import PatchCoreModel, Provenance, kfold_patch_scores
from patchshift.core.engine.threshold import (
    TransferredThreshold,
    gumbel_threshold,
    transferred_calibration,
)


@torch.inference_mode()
def target_features(
    extractor: nn.Module,
    target: torch.Tensor,
    batch_size: int,
    device: torch.device,
    cancel: CancelFn | None = None,
    progress: ProgressFn | None = None,
) -> torch.Tensor:
    """(N, h, w, D) patch features of the target images, on the CPU."""
    extractor.eval()
    chunks = []
    for start in range(0, len(target), batch_size):
        check_cancel(cancel)
        chunks.append(extractor(target[start : start + batch_size].to(device)).cpu())
        report(progress, "target-features", start + len(chunks[-1]), len(target))
    return torch.cat(chunks)


def filter_settings(cfg: AdaptConfig) -> FilterSettings:
    return FilterSettings(
        cfg.filter_references,
        cfg.filter_closest_share,
        cfg.filter_cut_z,
        cfg.seed,
        tail_share=cfg.filter_tail_share,
    )


def filter_verdict(kept: FilterResult, cfg: AdaptConfig) -> str:
    """The filter's decision in words, for the job result."""
    beyond = (
        f"{kept.tail:.2%} of the patches' mutual scores lie beyond {TAIL_Z:g} robust deviations"
    )
    if not np.isfinite(kept.cut):
        return (
            f"every patch kept: {beyond}, no more than the {cfg.filter_tail_share:.3%} of an "
            "outlier-free batch; "
            "nothing stands out from the normal variation"
        )
    return (
        f"kept {kept.kept_share:.1%} of the patches: {beyond} (an outlier tail), "
        f"cut at z {cfg.filter_cut_z:g}"
    )


def scored_images(n_images: int, limit: int, seed: int) -> torch.Tensor:
    """Sorted indices of the target images whose out-of-fold scores move the threshold."""
    if limit <= 0 or n_images <= limit:
        return torch.arange(n_images)
    return torch.from_numpy(np.sort(np.random.default_rng(seed).permutation(n_images)[:limit]))


def batch_threshold(
    patch_scores: torch.Tensor,
    patch_z: torch.Tensor,
    false_alarm_rate: float,
    fallback: float,
    cfg: AdaptConfig,
    image_scores: np.ndarray | None = None,
) -> tuple[TransferredThreshold, np.ndarray]:
    """(S, h, w) out-of-fold patch scores of S target images and their patches' (S, h*w) mutual
    robust z -> the new threshold and the normal scores it was fitted to. Each image counts only the
    patches other images vouch for (cfg.threshold_patch_z), so a defective image scores as the
    normal part it mostly is instead of pushing the law up; an image that loses a patch so is a
    suspect, and the threshold states the share of suspects it flags (its expected recall).
    `image_scores` (S,): the images' deployed scores, where they differ from their largest patch
    score (PatchCore's re-weighting); both scores are put on their scale."""
    normal_scores = vouched_image_scores(patch_scores, patch_z, cfg.threshold_patch_z)
    raw_scores = patch_scores.flatten(1).amax(dim=1).double().numpy()
    if image_scores is not None:  # the re-weighting's factor, per image
        factor = np.divide(
            np.asarray(image_scores, dtype=np.float64),
            raw_scores,
            out=np.ones_like(raw_scores),
            where=raw_scores > 0,
        )
        normal_scores, raw_scores = normal_scores * factor, raw_scores * factor
    return gumbel_threshold(normal_scores, false_alarm_rate, fallback).with_suspects(
        raw_scores, normal_scores
    ), normal_scores


def adapt_memory(
    model: PatchCoreModel,
    target: torch.Tensor,
    cfg: AdaptConfig,
    report_: AdaptReport,
    progress: ProgressFn | None,
    cancel: CancelFn | None,
) -> PatchCoreModel:
    extractor = batchnorm_step(model, target, cfg.memory_bn, cfg, report_, progress, cancel)
    feats = target_features(
        extractor, target, model.config.batch_size, model.device, cancel, progress
    )
    return memory_version(model, extractor, feats, cfg, report_, progress, cancel)


def memory_version(
    model: PatchCoreModel,
    extractor: nn.Module,
    feats: torch.Tensor,
    cfg: AdaptConfig,
    report_: AdaptReport,
    progress: ProgressFn | None,
    cancel: CancelFn | None,
    members: torch.Tensor | None = None,
) -> PatchCoreModel:
    """A version whose memory holds the vouched-for patches of the (N, h, w, D) target features
    `feats` (through `extractor`); with `members` (N,) bool, of those images only. Every target
    image, member or not, is scored for the threshold: the deployed version meets them all."""
    config = model.config
    n, h, w, dim = feats.shape
    patches = feats.reshape(n, h * w, dim)
    kept = filter_patches(patches.to(model.device), filter_settings(cfg), progress, cancel).to(
        "cpu"
    )
    keep = kept.keep if members is None else kept.keep & members.unsqueeze(1)
    candidates = patches[keep]  # (K, D)
    candidate_image = torch.arange(n).unsqueeze(1).expand(n, h * w)[keep]
    size = coreset_size(len(candidates), config.coreset_ratio, config.coreset_max_size)

    def coreset_progress(done: int, total: int) -> None:
        if done % 50 == 0 or done == total:
            check_cancel(cancel)
            report(progress, "coreset", done, total)

    picked = kcenter_coreset(
        candidates.to(model.device),
        size,
        config.coreset_projection_dim,
        cfg.seed,
        progress=coreset_progress,
    ).cpu()
    memory, memory_image = candidates[picked], candidate_image[picked]
    if cfg.memory == "union":
        memory = torch.cat([model.bank, memory])
        memory_image = torch.cat(
            [torch.full((len(model.bank),), -1, dtype=torch.long), memory_image]
        )
    adapted = PatchCoreModel(
        config,
        model.backbone,
        extractor,
        memory,
        model.threshold,
        Provenance(
            method=report_.method,
            parent=model.version,
            threshold_source="target-kfold-transferred",
            n_train_images=model.provenance.n_train_images,
        ),
        model.device,
        drift_reference=DriftReference.from_descriptors(image_descriptors(feats).numpy()),
    )
    # Every target image against the memory without its own fold's patches: the scores a deployed
    # version would give them.
    scored = scored_images(n, cfg.threshold_images, cfg.seed)
    patch_scores, scores = kfold_patch_scores(adapted, feats, memory_image, cancel, scored)
    refuse_non_finite_scores(scores, cfg.lr if report_.steps else None)
    patch_z = robust_z(kept.scores.cpu())[scored]
    threshold, normal_scores = batch_threshold(
        patch_scores, patch_z, config.false_alarm_rate, model.threshold, cfg, scores
    )
    report(progress, "threshold", 1, 1)
    apply_threshold(adapted, threshold, report_)
    adapted.provenance.calibration_scores = transferred_calibration(
        model.provenance.calibration_scores, normal_scores
    )
    report_.target_scores, report_.target_index, report_.memory_image = (
        scores,
        scored.numpy(),
        memory_image,
    )
    report_.target_patch_scores, report_.target_patch_z = patch_scores, patch_z
    if cfg.memory_bn == "none":  # the features are the source's: the gate needs no second pass
        report_.source_features, report_.reference_ranking = (
            feats,
            BatchRanking.of(kept.scores, kept.tail),
        )
    report_.details.update(
        {
            "adapt_config": cfg.to_dict(),
            "n_target_images": n,
            "kept_patch_share": round(kept.kept_share, 4),
            "filter": filter_verdict(kept, cfg),
            "filter_cut": kept.cut if np.isfinite(kept.cut) else None,
            "filter_tail": round(kept.tail, 4),
            "memory_rows": int(size),
            "bank_rows": int(memory.shape[0]),
        }
    )
    adapted.provenance.details.update(
        report_.details
    )  # the manifest says how the version was made, as BatchNorm versions' do
    return adapted


register(
    Adapter(
        "target-memory",
        "the bank itself moves: target patches that other target images vouch for join the "
        "memory; for camera or lighting changes",
        adapt_memory,
        moves_memory=True,
        min_images=MIN_IMAGES,
        trusted_when_unranked=True,
        matches_levels=True,
    )
)
