"""Fit and adaptation requests, validated once.

The CLI, the HTTP routes and the worker call these functions, so a request is refused with the
same message wherever it comes from (the CLI as a usage error, HTTP as a 422), before any work
starts; the worker calls them again on what a job stored, so a job never runs on settings that
would be refused today. A setting's range is checked where it is declared (core/common/options.py)
by every front end: argparse, the HTTP form models and the config dataclasses use the same
`Bounds.check`.
"""

from __future__ import annotations

from typing import Any

from patchshift.core.adapt import GATE_MIN_IMAGES, Adapter
from patchshift.core.common.errors import ConfigError, DatasetError
from patchshift.core.common.options import check_options
from patchshift.core.engine.backbone import stage_channels
from patchshift.core.engine.model_config import ModelConfig
from patchshift.core.engine.reduction import check_reduction

MIN_FIT_IMAGES = 2
ACTIVATE_ALWAYS, ACTIVATE_NEVER, ACTIVATE_IF_BETTER = "true", "false", "if-better"
ACTIVATION_POLICIES = (ACTIVATE_ALWAYS, ACTIVATE_NEVER, ACTIVATE_IF_BETTER)


def fit_config(values: dict[str, Any], fixed_threshold: bool = False) -> ModelConfig:
    """The config of a fit from the settings a person gave; ConfigError naming the first problem.

    `fixed_threshold`: the caller sets the threshold itself (CLI `--threshold`), so holdout
    calibration may hold out nothing."""
    try:
        config = ModelConfig(**values)
    except TypeError as exc:
        raise ConfigError(f"invalid fit settings: {exc}") from None
    check_options(config)
    if config.calibration == "holdout" and config.holdout_fraction == 0 and not fixed_threshold:
        raise ConfigError(
            "holdout_fraction must be above 0 with holdout calibration: the held-out images set "
            "the threshold (or fix the threshold: fit --threshold, PUT /v1/models/{name}/threshold)"
        )
    channels = stage_channels(config.backbone, config.feature_strides)
    check_reduction(config.feature_reduction, config.feature_dim, config.backbone, channels)
    return config


def check_fit_images(n_images: int) -> None:
    if n_images < MIN_FIT_IMAGES:
        raise DatasetError(
            f"fitting needs at least {MIN_FIT_IMAGES} normal images (the threshold is set on "
            f"images the bank does not hold), got {n_images}"
        )


def adaptation_config(adapter: Adapter, parent: Any, label: str, values: dict[str, Any]) -> Any:
    """The config of an adaptation of `parent` (named `label` in messages) from the settings a
    person gave; ConfigError naming the first problem."""
    adapter.check_parent(parent, label)
    return adapter.configure(parent, values)


def check_adaptation_images(
    adapter: Adapter, n_images: int, n_source_images: int, policy: str = ACTIVATE_ALWAYS
) -> None:
    """Enough images of the new condition, source images exactly where the method learns from
    them, and enough images for the label-free check when it decides."""
    if n_source_images and not adapter.min_source_images:
        raise ConfigError(
            "source images belong to methods that learn from them (uda-global), not to "
            f"{adapter.name}"
        )
    if adapter.min_source_images and not n_source_images:
        raise ConfigError(
            f"method {adapter.name} needs source images: normal images of the source domain "
            "(CLI --source-images, HTTP source_files; a model keeps no training images)"
        )
    adapter.check_counts(n_images, n_source_images)
    if policy == ACTIVATE_IF_BETTER and n_images < GATE_MIN_IMAGES:
        raise DatasetError(
            "activate=if-better checks the new version on the images themselves, which needs at "
            f"least {GATE_MIN_IMAGES} of them (got {n_images}); send more, or activate=false to "
            "keep it for review"
        )
