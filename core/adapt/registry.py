"""The one place an adaptation method's name is resolved: name -> adapter.

An adapter takes the source model, the target batch (N, 3, H, W) and the config, and returns a
new model version (the source is never modified). Adding a method means registering it here; the
CLI, the HTTP route, the worker and the benchmarks list and call methods through this registry.
"""

from __future__ import annotations

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
