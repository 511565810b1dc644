"""The one place an adaptation method's name is resolved: name -> adapter.

An adapter takes the source model, the target batch (N, 3, H, W), its config and, if it asks for
them, normal images of the source domain, and returns a new model version (the source is never
modified). It says which model class it adapts, which settings a person may give it and how its
config is made, so the CLI, the HTTP route, the worker, the drift monitor and the benchmarks list,
validate and call every method (uda included) through this registry and nowhere else.
Modules named in PATCHSHIFT_ADAPTER_PLUGINS (comma-separated, importable) are imported once the
built-in adapters are registered, so a site or a test can add a method without touching the
service.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from patchshift.core.adapt.adapt_config import ADAPT_OPTIONS, AdaptConfig
from patchshift.core.adapt.base import AdaptReport
from patchshift.core.common.errors import ConfigError, DatasetError
from patchshift.core.common.options import check_options
from patchshift.core.common.progress import CancelFn, ProgressFn
from patchshift.core.engine.patchcore import PatchCoreModel

# run(parent, target (N, 3, H, W), config, report, progress, cancel[, source]) -> the new version;
# `source` (normal images of the source domain) is passed only to adapters with min_source_images.
AdaptFn = Callable[
    [Any, torch.Tensor, Any, AdaptReport, ProgressFn | None, CancelFn | None, Any], Any
]


def adapt_config(name: str, parent: Any, options: dict[str, Any]) -> AdaptConfig:
    return AdaptConfig(method=name, **options)


@dataclass(frozen=True)
class Adapter:
    name: str
    summary: str  # one line: when to pick it
    run: AdaptFn
    moves_memory: bool = False  # the new version carries its own bank
    min_images: int = 1  # fewer target images are refused before any work
    parent: type | None = PatchCoreModel  # the model class it adapts; None: a version of any kind
    min_source_images: int = 0  # normal images of the source domain it needs (a model keeps none)
    options: tuple[str, ...] = (
        ADAPT_OPTIONS  # the settings a person may give it (CLI flags, HTTP fields)
    )
    # (name, parent, options) -> its config; the config's `method` names this adapter
    make_config: Callable[[str, Any, dict[str, Any]], Any] = adapt_config
    config_type: type = AdaptConfig  # what make_config returns
    own_input_size: bool = False  # target images at config.image_size, not the parent's input size
    # Under a shift, its version may go live where the batch's own ranking cannot judge
    # (core.adapt.gate): a memory built from the batch's patches; never worse than no adaptation on
    # a shifted batch without an outlier tail in any measured row (docs/results.md, "The activation
    # gate").
    trusted_when_unranked: bool = False
    # Its config's input_levels is honoured: the parent's input levels are matched to the target
    # before it runs (core.adapt.input_levels).
    matches_levels: bool = False

    def configure(self, parent: Any, options: dict[str, Any]) -> Any:
        """The config of an adaptation of `parent` with the settings a person gave (the others
        default)."""
        foreign = sorted(set(options) - set(self.options))
        if foreign:
            raise ConfigError(
                f"{', '.join(foreign)} "
                f"{'is not a setting' if len(foreign) == 1 else 'are not settings'} of "
                f"method {self.name} (its settings: {', '.join(self.options) or 'none'})"
            )
        try:
            cfg = self.make_config(self.name, parent, options)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"invalid {self.name} settings: {exc}") from None
        check_options(cfg)
        return cfg

    def check_config(self, cfg: Any) -> None:
        if not isinstance(cfg, self.config_type):
            raise ConfigError(
                f"method {self.name} takes a {self.config_type.__name__}, got a "
                f"{type(cfg).__name__}"
            )

    def accepts(self, parent: Any) -> bool:
        return self.parent is None or isinstance(parent, self.parent)

    def check_parent(self, parent: Any, label: str) -> None:
        """A clear refusal when `parent` (named `label` in the message) is not a kind this method
        adapts."""
        if not self.accepts(parent):
            wanted = getattr(self.parent, "kind", self.parent.__name__)
            raise ConfigError(
                f"{label} is a "
                f"{getattr(parent, 'described', getattr(parent, 'kind', type(parent).__name__))} "
                "model; "
                f"{self.name} adapts {wanted} versions"
            )

    def check_counts(self, n_images: int, n_source_images: int) -> None:
        if n_images < self.min_images:
            raise DatasetError(
                f"method {self.name} needs at least {self.min_images} images of the new "
                f"condition, got {n_images}"
            )
        if n_source_images < self.min_source_images:
            raise DatasetError(
                f"method {self.name} needs at least {self.min_source_images} normal images of the "
                "source "
                f"domain (a model keeps no training images), got {n_source_images}"
            )

    def input_size(self, parent: Any, cfg: Any) -> tuple[int, int]:
        """(width, height) the target images are loaded at."""
        return cfg.image_size if self.own_input_size else parent.config.image_size


_ADAPTERS: dict[str, Adapter] = {}


def register(adapter: Adapter) -> Adapter:
    if adapter.name in _ADAPTERS:
        raise ValueError(f"adaptation method {adapter.name!r} is registered twice")
    _ADAPTERS[adapter.name] = adapter
    return adapter


def get_adapter(name: str) -> Adapter:
    try:
        return _ADAPTERS[name]
    except KeyError:
        raise ConfigError(
            f"unknown adaptation method {name!r}; choose from {', '.join(_ADAPTERS)}"
        ) from None


def adapter_names() -> tuple[str, ...]:
    return tuple(_ADAPTERS)


def load_plugins(spec: str | None = None) -> None:
    """Import the plugin modules (they call `register`); an unimportable one is an error naming
    it."""
    spec = os.environ.get("PATCHSHIFT_ADAPTER_PLUGINS", "") if spec is None else spec
    for name in filter(None, (part.strip() for part in spec.split(","))):
        try:
            importlib.import_module(name)
        except ImportError as exc:
            raise ConfigError(
                f"adapter plugin {name!r} (PATCHSHIFT_ADAPTER_PLUGINS) cannot be imported: {exc}"
            ) from None
