"""The one place an adaptation method's name is resolved: name -> adapter.

An adapter takes the source model, the target batch (N, 3, H, W) and the config, and returns a
new model version (the source is never modified). Adding a method means registering it here; the
CLI, the HTTP route, the worker and the benchmarks list and call methods through this registry.
Modules named in PATCHSHIFT_ADAPTER_PLUGINS (comma-separated, importable) are imported once the
built-in adapters are registered, so a site or a test can add a method without touching the
service.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..errors import ConfigError
from ..patchcore import PatchCoreModel
from ..progress import CancelFn, ProgressFn
from .base import AdaptReport
from .config import AdaptConfig

AdaptFn = Callable[[PatchCoreModel, torch.Tensor, AdaptConfig, AdaptReport, ProgressFn | None, CancelFn | None], PatchCoreModel]


@dataclass(frozen=True)
class Adapter:
    name: str
    summary: str  # one line: when to pick it
    run: AdaptFn
    moves_memory: bool = False  # the new version carries its own bank
    min_images: int = 1  # fewer target images are refused before any work


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
        raise ConfigError(f"unknown adaptation method {name!r}; choose from {', '.join(_ADAPTERS)}") from None


def adapter_names() -> tuple[str, ...]:
    return tuple(_ADAPTERS)


def load_plugins(spec: str | None = None) -> None:
    """Import the plugin modules (they call `register`); an unimportable one is an error naming it."""
    spec = os.environ.get("PATCHSHIFT_ADAPTER_PLUGINS", "") if spec is None else spec
    for name in filter(None, (part.strip() for part in spec.split(","))):
        try:
            importlib.import_module(name)
        except ImportError as exc:
            raise ConfigError(f"adapter plugin {name!r} (PATCHSHIFT_ADAPTER_PLUGINS) cannot be imported: {exc}") from None
