"""The BatchNorm adapters: only BatchNorm state changes; the bank and every other weight stay
byte-identical."""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from torch import nn

from patchshift.core.adapt.adapt_config import AdaptConfig
from patchshift.core.adapt.base import (
    AdaptReport,
    derive_version,
    reestimate_statistics,
    train_affine,
)
from patchshift.core.adapt.baselines import moment_loss
from patchshift.core.adapt.methods import Adapter, register
from patchshift.core.adapt.roda import ot_loss
from patchshift.core.common.errors import ConfigError
from patchshift.core.common.finite import refuse_diverged
from patchshift.core.common.progress import CancelFn, ProgressFn, check_cancel
from patchshift.core.engine.backbone import batchnorm_state
from patchshift.core.engine.patchcore import PatchCoreModel


def _copied(model: PatchCoreModel, target, cfg, report_, progress, cancel) -> nn.Module:
    return copy.deepcopy(model.extractor)


def _reestimated(model: PatchCoreModel, target, cfg, report_, progress, cancel) -> nn.Module:
    extractor = copy.deepcopy(model.extractor)
    reestimate_statistics(
        extractor, target, model.config.batch_size, model.device, progress, cancel
    )
    return extractor


def _trained(loss_of: Callable[[PatchCoreModel, AdaptConfig], Callable]):
    def step(model: PatchCoreModel, target, cfg, report_, progress, cancel) -> nn.Module:
        return train_affine(model, target, cfg, loss_of(model, cfg), report_, progress, cancel)

    return step


# How each step moves a copy of the extractor's BatchNorm to the target.
BATCHNORM_STEPS = {
    "none": _copied,
    "stats": _reestimated,  # AdaBN
    "moment-matching": _trained(lambda model, cfg: moment_loss(model)),
    "ot-continuous": _trained(lambda model, cfg: ot_loss(model, cfg, continuous=True)),
    "roda": _trained(lambda model, cfg: ot_loss(model, cfg, continuous=False)),
}


def batchnorm_step(
    model: PatchCoreModel,
    target: torch.Tensor,
    step: str,
    cfg: AdaptConfig,
    report_: AdaptReport,
    progress: ProgressFn | None,
    cancel: CancelFn | None,
) -> nn.Module:
    """A copy of the model's extractor with its BatchNorm moved to the target by `step`
    (BATCHNORM_STEPS)."""
    if step not in BATCHNORM_STEPS:
        raise ConfigError(
            f"unknown BatchNorm step {step!r}; choose from {', '.join(BATCHNORM_STEPS)}"
        )
    check_cancel(cancel)
    extractor = BATCHNORM_STEPS[step](model, target, cfg, report_, progress, cancel)
    check_cancel(cancel)
    if step != "none":
        refuse_diverged(batchnorm_state(extractor).values(), "BatchNorm", cfg.lr)
    return extractor


def _batchnorm_adapter(step: str):
    def run(model, target, cfg, report_, progress, cancel) -> PatchCoreModel:
        extractor = batchnorm_step(model, target, step, cfg, report_, progress, cancel)
        return derive_version(model, extractor, target, report_, cfg, progress)

    return run


for _name, _step, _summary in (
    (
        "roda",
        "roda",
        "BatchNorm aligned to the bank by discretised optimal transport (RoDA); the bank stays",
    ),
    (
        "bn-stats",
        "stats",
        "AdaBN: BatchNorm statistics re-estimated on the target; seconds, no training",
    ),
    (
        "moment-matching",
        "moment-matching",
        "BatchNorm trained to match the bank's feature moments (TTT++ baseline)",
    ),
    ("ot-continuous", "ot-continuous", "RoDA's loss on the continuous transport plan (baseline)"),
    ("none", "none", "no change but the threshold, moved to the target's scores"),
):
    register(Adapter(_name, _summary, _batchnorm_adapter(_step)))
