"""UDA by anomaly scarcity, the alternate adaptation for changes too large for a memory move.

`uda` keeps the paper's idea, that the dominant cluster of the unlabeled target is normal, and
applies it where the measurements say it earns something: it chooses which target images build a
memory of the new domain. The target images' patch features (the parent's frozen extractor) are
clustered by image (core.uda.clustering), the largest cluster's images give the vouched-for
patches of a new memory, without the source bank (a different domain's normal patches cover the
new domain's defects), and every target image is scored for the threshold. The result is a
PatchCore version: heatmaps, review and the gate as for every other.

`uda-global` is the paper's own method (core.uda.train: a trained global encoder, DSVDD and
contrastive alignment, no heatmaps), kept for comparison: on ELPV it is slower and worse than
doing nothing (docs/adaptation.md, "UDA").
"""

from __future__ import annotations

from typing import Any

import torch

from patchshift.core.adapt.adapt_config import AdaptConfig
from patchshift.core.adapt.base import AdaptReport
from patchshift.core.adapt.methods import Adapter, register
from patchshift.core.adapt.target_memory import memory_version, target_features
from patchshift.core.common.errors import DatasetError
from patchshift.core.common.progress import CancelFn, ProgressFn
from patchshift.core.engine.contamination import MIN_IMAGES
from patchshift.core.engine.patchcore import PatchCoreModel
from patchshift.core.uda import UDAConfig
from patchshift.core.uda.clustering import (
    cluster_descriptors,
    dominant_cluster,
    require_images_for_clusters,
)
from patchshift.core.uda.model import UDAModel
from patchshift.core.uda.train import fit_uda
from patchshift.core.uda.uda_config import inherited_settings

# What uda changes from the target memory's defaults: the memory is the new domain's alone.
UDA_DEFAULTS: dict[str, Any] = {"memory": "target"}
UDA_OPTIONS = (
    "clusters",
    "min_majority",
    "min_separation",
    "memory",
    "filter_cut_z",
    "filter_tail_share",
)
# 2 target images per cluster at the default 8 clusters, as uda-global asks.
MIN_UDA_IMAGES = 16
# What a person may set on uda-global (CLI flags; over HTTP the clip_* come from the server's
# settings).
UDA_GLOBAL_OPTIONS = (
    "epochs",
    "lr",
    "clusters",
    "image_size",
    "encoder",
    "clip_checkpoint",
    "clip_model",
)


def uda_config(name: str, parent: Any, options: dict[str, Any]) -> AdaptConfig:
    return AdaptConfig(method=name, **{**UDA_DEFAULTS, **options})


def adapt_uda(
    parent: PatchCoreModel,
    target: torch.Tensor,
    cfg: AdaptConfig,
    report_: AdaptReport,
    progress: ProgressFn | None,
    cancel: CancelFn | None,
) -> PatchCoreModel:
    require_images_for_clusters(len(target), cfg.clusters)
    feats = target_features(
        parent.extractor, target, parent.config.batch_size, parent.device, cancel, progress
    )
    found = dominant_cluster(
        cluster_descriptors(feats), cfg.clusters, cfg.min_majority, cfg.min_separation, cfg.seed
    )
    if not found.dominant:
        raise DatasetError(found.message)
    n_members = int(found.members.sum())
    if n_members < MIN_IMAGES:
        raise DatasetError(
            f"the dominant cluster holds {n_members} target image(s), too few to "
            f"vouch for each other (at least {MIN_IMAGES}); add images of the new condition or "
            "lower the clusters setting (--clusters / clusters)"
        )
    report_.message = found.message
    report_.details.update(cluster_sizes=found.sizes, clustering=found.message)
    adapted = memory_version(
        parent, parent.extractor, feats, cfg, report_, progress, cancel, members=found.members
    )
    # the cluster's images whose patches reached the memory (the filter may drop all of some)
    rows = report_.memory_image[report_.memory_image >= 0]
    report_.details["memory_images"] = int(torch.unique(rows).numel())
    adapted.provenance.details["memory_images"] = report_.details["memory_images"]
    return adapted


def uda_global_config(name: str, parent: Any, options: dict[str, Any]) -> UDAConfig:
    return UDAConfig(**{**inherited_settings(parent.config), **options})


def adapt_uda_global(
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
        "a memory of the new domain from the dominant cluster of the target images (anomaly "
        "scarcity); for a new material, module type or imaging setup",
        adapt_uda,
        moves_memory=True,
        min_images=MIN_UDA_IMAGES,
        options=UDA_OPTIONS,
        make_config=uda_config,
    )
)
register(
    Adapter(
        "uda-global",
        "the UDA paper's global detector (trained encoder, DSVDD, contrastive alignment; scores, "
        "no heatmaps), for comparison: slower and weaker than uda",
        adapt_uda_global,
        parent=None,
        min_source_images=2,
        options=UDA_GLOBAL_OPTIONS,
        make_config=uda_global_config,
        config_type=UDAConfig,
        own_input_size=True,
    )
)
