"""Test-time adaptation of a PatchCore model to a new camera or lighting, from unlabeled images.

One interface: adapt(model, images, cfg, progress, cancel, judge) -> (new model version, report).
Methods live in one registry (core.adapt.methods): the BatchNorm adapters (roda, bn-stats,
moment-matching, ot-continuous, none) change only BatchNorm state; target-memory moves the bank.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence

import numpy as np
import torch

from patchshift.core.adapt import batchnorm, target_memory, uda_adapter  # noqa: F401  (register the adapters)
from patchshift.core.adapt.adapt_config import AdaptConfig
from patchshift.core.adapt.base import AdaptReport
from patchshift.core.adapt.gate import (
    BatchRanking,
    GateVerdict,
    reference_ranking,
    refuse_unsupported_threshold,
)
from patchshift.core.adapt.gate import (
    judge as judge_versions,
)
from patchshift.core.adapt.input_levels import match_levels
from patchshift.core.adapt.methods import Adapter, adapter_names, get_adapter, load_plugins
from patchshift.core.adapt.target_memory import filter_settings, target_features
from patchshift.core.common.errors import AdaptationError
from patchshift.core.common.images import ImageSource, load_target
from patchshift.core.common.options import check_options
from patchshift.core.common.progress import CancelFn, ProgressFn, check_cancel
from patchshift.core.engine.contamination import MIN_IMAGES, FilterSettings
from patchshift.core.engine.detector import Detector
from patchshift.core.engine.patchcore import PatchCoreModel
from patchshift.core.uda import UDAConfig

log = logging.getLogger(__name__)

load_plugins()
METHODS = adapter_names()
RECOMMENDED = AdaptConfig().method
GATE_MIN_IMAGES = (
    MIN_IMAGES  # the label-free check ranks the batch by its own patches, as the filter does
)


def adapt(
    model: Detector,
    images: Sequence[ImageSource] | torch.Tensor,
    cfg: AdaptConfig | UDAConfig,
    progress: ProgressFn | None = None,
    cancel: CancelFn | None = None,
    judge: bool = False,
    source_images: Sequence[ImageSource] | torch.Tensor | None = None,
) -> tuple[Detector, AdaptReport]:
    """Adapt `model` to the condition shown by `images` with the method `cfg.method` names; the
    source model is never modified. `source_images` are normal images of the source domain, for
    the methods that need them (uda-global).

    With `judge`, the report carries the label-free verdict on whether the new version ranks the
    target images better than the source (report.gate)."""
    adapter = get_adapter(cfg.method)
    adapter.check_config(cfg)
    adapter.check_parent(model, f"version {model.version or '(unsaved)'}")
    check_options(cfg)
    target = load_target(images, adapter.input_size(model, cfg))
    adapter.check_counts(len(target), len(source_images) if source_images is not None else 0)
    report_ = AdaptReport(method=cfg.method, n_images=len(target))
    started = time.perf_counter()
    # source images only to the adapters that ask for them (older plugins take six arguments)
    extra = (source_images,) if adapter.min_source_images else ()
    parent = model
    if adapter.matches_levels and cfg.input_levels == "match":
        parent, levels_details = match_levels(model, target)
        report_.details.update(levels_details)
    adapted = adapter.run(parent, target, cfg, report_, progress, cancel, *extra)
    if parent is not model:  # its features are not the parent's: the gate computes those itself
        report_.source_features = None
    check_cancel(cancel)
    if not math.isfinite(adapted.threshold) or adapted.threshold <= 0:
        raise AdaptationError(
            f"adaptation gave an unusable threshold ({adapted.threshold!r}); the source version "
            "stays as it is"
        )
    report_.seconds = time.perf_counter() - started
    adapted.provenance.details["seconds"] = report_.seconds
    if judge:
        if not isinstance(model, PatchCoreModel):  # the check ranks patches on the parent's bank
            report_.gate = GateVerdict(
                False,
                None,
                None,
                f"no label-free check for a {model.kind} parent; activate the new version by hand",
            )
        else:
            same_size = tuple(adapter.input_size(model, cfg)) == tuple(model.config.image_size)
            parent_view = target if same_size else load_target(images, model.config.image_size)
            # the user's filter settings rank the batch, as the target memory's own filter did
            settings = (
                filter_settings(cfg)
                if isinstance(cfg, AdaptConfig)
                else FilterSettings(seed=cfg.seed)
            )
            report_.gate = gate(
                model,
                parent_view,
                report_.target_scores,
                settings,
                cancel,
                report_.reference_ranking,
                report_.source_features,
                report_.target_index,
                adapter.trusted_when_unranked,
            )
            report_.gate = refuse_unsupported_threshold(report_.gate, report_.threshold)
        adapted.provenance.details["gate"] = report_.gate.to_dict()
    report_.source_features = None  # large; only the gate needed it
    log.info(
        "adapted with %s on %d images in %.1f s (%d steps)",
        cfg.method,
        len(target),
        report_.seconds,
        report_.steps,
    )
    return adapted, report_


def gate(
    model: PatchCoreModel,
    target: torch.Tensor,
    after_scores: np.ndarray,
    settings: FilterSettings,
    cancel: CancelFn | None = None,
    reference: BatchRanking | None = None,
    feats: torch.Tensor | None = None,
    index: np.ndarray | None = None,
    trust_unranked: bool = False,
) -> GateVerdict:
    """Does a new version, which scored the (N, 3, H, W) target images `after_scores`, rank them
    better than `model` does, and is there a shift at all? (core.adapt.gate) `reference` and `feats`
    (the target's features through `model`'s extractor) are computed here unless the adapter already
    had them; with `index`, `after_scores` are of those images only, and the check compares on them.
    `trust_unranked`: the adapter built the new memory from the batch
    (Adapter.trusted_when_unranked)."""
    if len(target) < GATE_MIN_IMAGES:
        return GateVerdict(
            False,
            None,
            None,
            f"{len(target)} image(s) are too few for the label-free check (at least "
            f"{GATE_MIN_IMAGES}); the parent stays active, activate the new version by hand if it "
            "is wanted",
        )
    if feats is None:
        feats = target_features(
            model.extractor, target, model.config.batch_size, model.device, cancel
        )
    # each image against the others: from every image, whichever are compared
    reference = (
        reference_ranking(feats.to(model.device), settings)
        if reference is None
        else BatchRanking.coerce(reference)
    )
    if index is not None:
        feats, reference = feats[torch.as_tensor(index)], reference.subset(index)
    before = np.concatenate(
        [
            model.score_features(feats[i : i + model.config.batch_size])[1].cpu().numpy()
            for i in range(0, len(feats), model.config.batch_size)
        ]
    )
    calibration = np.asarray(model.provenance.calibration_scores, dtype=np.float64)
    return judge_versions(
        reference,
        before,
        None if after_scores is None else np.asarray(after_scores, dtype=np.float64),
        calibration=calibration,
        trust_unranked=trust_unranked,
    )


__all__ = [
    "adapt",
    "gate",
    "Adapter",
    "AdaptConfig",
    "AdaptReport",
    "GateVerdict",
    "GATE_MIN_IMAGES",
    "METHODS",
    "RECOMMENDED",
    "get_adapter",
]
