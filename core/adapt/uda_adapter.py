"""The alternate adaptation as one more adapter: `uda` trains a new global detector (core.uda)
from normal source images and the unlabeled target, by anomaly scarcity."""

from __future__ import annotations

from typing import Any

import torch

from patchshift.core.adapt.base import AdaptReport
from patchshift.core.adapt.methods import Adapter, register
from patchshift.core.common.progress import CancelFn, ProgressFn
from patchshift.core.uda import UDAConfig
from patchshift.core.uda.model import UDAModel
from patchshift.core.uda.train import fit_uda
from patchshift.core.uda.uda_config import inherited_settings

# What a person may set (CLI flags; over HTTP the clip_* come from the server's settings).
UDA_OPTIONS = ("epochs", "lr", "clusters", "image_size", "encoder", "clip_checkpoint", "clip_model")


def uda_config(name: str, parent: Any, options: dict[str, Any]) -> UDAConfig:
    return UDAConfig(**{**inherited_settings(parent.config), **options})


def adapt_uda(
    parent: Any,
    target: torch.Tensor,
    cfg: UDAConfig,
    report_: AdaptReport,
    progress: ProgressFn | None,
    cancel: CancelFn | None,
    source: Any,
) -> UDAModel:
    model, summary = fit_uda(
        source, target, cfg, device=parent.device, progress=progress, cancel=cancel
    )
    model.provenance.parent = parent.version
    report_.steps, report_.losses, report_.message = summary.steps, summary.losses, summary.message
    report_.details.update(
        n_source_images=len(source), cluster_sizes=summary.cluster_sizes, clustering=summary.message
    )
    report_.target_scores = model.score_batches(
        target[i : i + cfg.batch_size] for i in range(0, len(target), cfg.batch_size)
    )[0]
    return model


register(
    Adapter(
        "uda",
        "a new global detector (scores, no heatmaps) trained from source normals and the target, "
        "by anomaly scarcity",
        adapt_uda,
        parent=None,
        min_source_images=2,
        options=UDA_OPTIONS,
        make_config=uda_config,
        config_type=UDAConfig,
        own_input_size=True,
    )
)
