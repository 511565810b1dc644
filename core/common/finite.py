"""Non-finite values (NaN, +-inf) are refused wherever a model is made, saved or loaded."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import numpy as np
import torch

from patchshift.core.common.errors import AdaptationError


def count_non_finite(tensors: Iterable[torch.Tensor]) -> tuple[int, int]:
    """(non-finite values, all values) over floating-point tensors; integer tensors are always
    finite."""
    bad = total = 0
    for tensor in tensors:
        total += tensor.numel()
        if tensor.is_floating_point():
            bad += int((~torch.isfinite(tensor)).sum())
    return bad, total


def refuse_diverged(tensors: Iterable[torch.Tensor], what: str, lr: float) -> None:
    """A training run whose parameters left the finite numbers is a failure, not a new version."""
    bad, total = count_non_finite(tensors)
    if bad:
        raise AdaptationError(
            f"adaptation diverged: {bad} of {total} {what} values are not finite; try a lower lr "
            f"(it was {lr:g})"
        )


def refuse_non_finite_scores(scores: Any, lr: float | None = None) -> None:
    """Target images that score NaN or infinity cannot set a threshold: the adaptation fails, the
    source stays."""
    bad = int((~np.isfinite(np.asarray(scores, dtype=np.float64))).sum())
    if bad:
        hint = f"; try a lower lr (it was {lr:g})" if lr is not None else ""
        raise AdaptationError(
            f"{bad} target image(s) got a non-finite score after adaptation; the source version "
            f"stays as it is{hint}"
        )


def first_non_finite(data: Any, path: str = "") -> str | None:
    """The dotted path of the first non-finite float in nested dicts and lists, or None."""
    if isinstance(data, float):
        return None if math.isfinite(data) else path or "<value>"
    if isinstance(data, dict):
        items: Iterable[tuple[str, Any]] = (
            (f"{path}.{k}" if path else str(k), v) for k, v in data.items()
        )
    elif isinstance(data, (list, tuple)):
        items = ((f"{path}[{i}]", v) for i, v in enumerate(data))
    else:
        return None
    for where, value in items:
        found = first_non_finite(value, where)
        if found is not None:
            return found
    return None
