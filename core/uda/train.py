"""Fit the UDA detector: cluster the target with psi, keep the dominant cluster, train phi on
L = lambda1 * L_DSVDD(source) + lambda2 * L_InfoNCE(source normals <-> dominant-cluster targets)."""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from patchshift.core.common.device import resolve_device
from patchshift.core.common.errors import DatasetError
from patchshift.core.common.finite import refuse_diverged
from patchshift.core.common.images import ImageSource, load_target
from patchshift.core.common.options import check_options
from patchshift.core.common.progress import CancelFn, ProgressFn, check_cancel, report
from patchshift.core.engine.drift import DriftReference
from patchshift.core.engine.patchcore import Provenance, split_holdout
from patchshift.core.engine.threshold import quantile_threshold
from patchshift.core.uda.clip import load_clip_encoder
from patchshift.core.uda.clustering import dominant_cluster, require_images_for_clusters
from patchshift.core.uda.losses import dsvdd_loss, info_nce
from patchshift.core.uda.model import Encoder, UDAModel, build_encoder
from patchshift.core.uda.uda_config import UDAConfig

log = logging.getLogger(__name__)


@dataclass
class UDAReport:
    cluster_sizes: list[int] = field(default_factory=list)
    dominant_share: float = 0.0
    message: str = ""
    losses: list[float] = field(default_factory=list)
    steps: int = 0
    seconds: float = 0.0
    selected: np.ndarray | None = None  # (N_target,) bool, the presumed normals
    psi: torch.nn.Module | None = None  # the clustering encoder (frozen unless psi = phi)


@torch.inference_mode()
def _batched(fn, images: torch.Tensor, device: torch.device, batch_size: int) -> torch.Tensor:
    return torch.cat(
        [
            fn(images[i : i + batch_size].to(device)).float().cpu()
            for i in range(0, len(images), batch_size)
        ]
    )


def clustering_encoder(
    phi: Encoder, cfg: UDAConfig, device: torch.device
) -> tuple[torch.nn.Module, Callable[[torch.Tensor], torch.Tensor]]:
    """psi (in eval mode) and the features k-means sees: phi's frozen pooled backbone, phi itself,
    or CLIP."""
    if cfg.encoder == "phi":
        return phi, phi
    if cfg.encoder == "clip":
        clip = load_clip_encoder(cfg.clip_model, cfg.clip_checkpoint, device)
        return clip, clip
    frozen = copy.deepcopy(phi).requires_grad_(False).eval()
    return frozen, frozen.pooled


def select_normals(
    embed: Callable[[torch.Tensor], torch.Tensor],
    target: torch.Tensor,
    cfg: UDAConfig,
    device: torch.device,
    report_: UDAReport,
) -> torch.Tensor:
    """Dominant k-means cluster of the target under psi; raises when no cluster dominates."""
    feats = _batched(embed, target, device, cfg.batch_size)
    found = dominant_cluster(
        torch.nn.functional.normalize(feats, dim=1),
        cfg.clusters,
        cfg.min_majority,
        cfg.min_separation,
        cfg.seed,
    )
    report_.cluster_sizes, report_.message = found.sizes, found.message
    report_.dominant_share = found.sizes[0] / len(target)
    if not found.dominant:
        raise DatasetError(found.message)
    return found.members


def fit_uda(
    source: Sequence[ImageSource] | torch.Tensor,
    target: Sequence[ImageSource] | torch.Tensor | None,
    cfg: UDAConfig,
    device: str | torch.device | None = None,
    progress: ProgressFn | None = None,
    cancel: CancelFn | None = None,
    selected: torch.Tensor | None = None,
) -> tuple[UDAModel, UDAReport]:
    """Source normals + unlabeled target -> a detector for the target domain.

    target=None trains DSVDD on the source alone (the lower bound). `selected` overrides the
    clustering with known target normals (the supervised oracle, or "align all" when all True).
    """
    check_options(cfg)
    device = device if isinstance(device, torch.device) else resolve_device(device)
    torch.manual_seed(cfg.seed)
    started = time.perf_counter()
    report_ = UDAReport()
    clusters_target = target is not None and selected is None
    # The encoders first: a wrong weights file or CLIP checkpoint fails before any image is read.
    phi, weights_path = build_encoder(cfg, device)
    if clusters_target:
        report_.psi, embed = clustering_encoder(phi, cfg, device)
    source_images = load_target(source, cfg.image_size)
    if len(source_images) < 2:
        raise DatasetError("UDA needs at least 2 normal source images")
    train_idx, holdout_idx = split_holdout(len(source_images), cfg.holdout_fraction, cfg.seed)
    src_train = source_images[train_idx]
    target_images = load_target(target, cfg.image_size) if target is not None else None
    if clusters_target:
        require_images_for_clusters(len(target_images), cfg.clusters)

    recluster = clusters_target and cfg.encoder == "phi"
    if target_images is not None:
        if clusters_target:
            selected = select_normals(embed, target_images, cfg, device, report_)
        else:
            report_.message = (
                f"{int(selected.sum())} of {len(selected)} target images given as normal"
            )
        report_.selected = selected.numpy()

    centre = (
        _batched(phi, src_train, device, cfg.batch_size).mean(dim=0).to(device)
    )  # fixed from here on
    params = [p for p in phi.parameters() if p.requires_grad]
    optimiser = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = max(1, -(-len(src_train) // cfg.batch_size))
    total = cfg.epochs * steps_per_epoch
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, max(1, total))
    generator = torch.Generator().manual_seed(cfg.seed)
    positives_all = torch.nonzero(selected).flatten() if target_images is not None else None
    negatives_all = torch.nonzero(~selected).flatten() if target_images is not None else None
    for epoch in range(cfg.epochs):
        if recluster and epoch > 0:  # psi = phi: the clusters follow phi as it learns
            selected = select_normals(phi, target_images, cfg, device, report_)
            positives_all, negatives_all = (
                torch.nonzero(selected).flatten(),
                torch.nonzero(~selected).flatten(),
            )
            report_.selected = selected.numpy()
        order = torch.randperm(len(src_train), generator=generator)
        for step in range(steps_per_epoch):
            check_cancel(cancel)
            batch = src_train[order[step * cfg.batch_size : (step + 1) * cfg.batch_size]].to(device)
            phi.eval()  # BatchNorm statistics stay the pretrained ones; only weights learn
            with torch.enable_grad():
                z_s = phi(batch)
                loss = cfg.lambda_dsvdd * dsvdd_loss(z_s, centre)
                if target_images is not None and len(positives_all):
                    pos = positives_all[
                        torch.randint(len(positives_all), (len(batch),), generator=generator)
                    ]
                    n_neg = min(len(batch), len(negatives_all))
                    neg = (
                        negatives_all[
                            torch.randint(len(negatives_all), (n_neg,), generator=generator)
                        ]
                        if n_neg
                        else pos[:0]
                    )
                    z_t = phi(target_images[torch.cat([pos, neg])].to(device))
                    loss = loss + cfg.lambda_uda * info_nce(z_s, z_t[: len(pos)], z_t, cfg.tau)
                optimiser.zero_grad(set_to_none=True)
                loss.backward()
                optimiser.step()
                scheduler.step()
            report_.losses.append(float(loss.detach()))
            report_.steps += 1
            report(progress, "uda", report_.steps, total)

    for p in phi.parameters():
        p.requires_grad_(False)
    refuse_diverged(phi.state_dict().values(), "encoder", cfg.lr)
    model = UDAModel(
        cfg,
        phi.eval(),
        centre,
        float("inf"),
        Provenance(
            method="uda-global" if target_images is not None else "dsvdd-source-only",
            threshold_source="holdout-quantile",
            n_train_images=len(source_images),
        ),
        device,
        weights_path,
    )
    # Label-free threshold: the presumed-normal targets when there is a target, else the source
    # holdout.
    if target_images is not None and positives_all is not None and len(positives_all):
        calibration, embeddings = model.embed_and_score(
            target_images[positives_all], cfg.batch_size
        )
        model.provenance.threshold_source = "dominant-cluster-quantile"
    else:
        calibration, embeddings = model.embed_and_score(source_images[holdout_idx], cfg.batch_size)
    if len(embeddings) >= 2:
        model.drift_reference = DriftReference.from_descriptors(embeddings)
    model.threshold = (
        quantile_threshold(calibration, cfg.threshold_quantile)
        if len(calibration)
        else float("inf")
    )
    model.provenance.calibration_scores = [float(s) for s in calibration]
    report_.seconds = time.perf_counter() - started
    model.provenance.details = {
        "uda_config": cfg.to_dict(),
        "cluster_sizes": report_.cluster_sizes,
        "message": report_.message,
        "steps": report_.steps,
        "seconds": report_.seconds,
    }
    log.info("UDA fitted in %.1f s (%d steps): %s", report_.seconds, report_.steps, report_.message)
    return model, report_
