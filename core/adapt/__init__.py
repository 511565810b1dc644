"""Test-time adaptation of a PatchCore model to a new camera or lighting, from unlabeled images.

One interface: adapt(model, images, cfg, progress, cancel) -> (new model version, report).
Methods: none, bn-stats (AdaBN), moment-matching (TTT++), ot-continuous, roda.
Only BatchNorm state changes; the bank and every other weight stay byte-identical.
"""

from __future__ import annotations

import copy
import math
import logging
import time
from collections.abc import Sequence

import torch

from ..backbone import batchnorm_state
from ..errors import AdaptationError, ConfigError
from ..finite import refuse_diverged
from ..options import check_options
from ..patchcore import ImageSource, PatchCoreModel
from ..progress import CancelFn, ProgressFn, check_cancel
from .base import AdaptReport, derive_version, load_target, reestimate_statistics, train_affine
from .baselines import moment_loss
from .config import AdaptConfig
from .roda import ot_loss

log = logging.getLogger(__name__)

METHODS = ("roda", "bn-stats", "moment-matching", "ot-continuous", "none")


def adapt(
    model: PatchCoreModel,
    images: Sequence[ImageSource] | torch.Tensor,
    cfg: AdaptConfig,
    progress: ProgressFn | None = None,
    cancel: CancelFn | None = None,
) -> tuple[PatchCoreModel, AdaptReport]:
    """Adapt `model` to the condition shown by `images`; the source model is never modified."""
    if cfg.method not in METHODS:
        raise ConfigError(f"unknown adaptation method {cfg.method!r}; choose from {', '.join(METHODS)}")
    check_options(cfg)
    target = load_target(images, model.config.image_size)
    report_ = AdaptReport(method=cfg.method, n_images=len(target))
    started = time.perf_counter()
    if cfg.method == "none":
        extractor = copy.deepcopy(model.extractor)
    elif cfg.method == "bn-stats":
        check_cancel(cancel)
        extractor = copy.deepcopy(model.extractor)
        reestimate_statistics(extractor, target, model.config.batch_size, model.device, progress, cancel)
    else:
        if cfg.method == "moment-matching":
            loss = moment_loss(model)
        else:
            loss = ot_loss(model, cfg, continuous=cfg.method == "ot-continuous")
        extractor = train_affine(model, target, cfg, loss, report_, progress, cancel)
    check_cancel(cancel)
    refuse_diverged(batchnorm_state(extractor).values(), "BatchNorm", cfg.lr)
    adapted = derive_version(model, extractor, target, report_, cfg, progress)
    if not math.isfinite(adapted.threshold) or adapted.threshold <= 0:
        raise AdaptationError(f"adaptation gave an unusable threshold ({adapted.threshold!r}); the source version stays as it is")
    report_.seconds = time.perf_counter() - started
    adapted.provenance.details["seconds"] = report_.seconds
    log.info("adapted with %s on %d images in %.1f s (%d steps)", cfg.method, len(target), report_.seconds, report_.steps)
    return adapted, report_


__all__ = ["adapt", "AdaptConfig", "AdaptReport", "METHODS"]
