"""Pick the compute device: CUDA when present, else CPU; overridable by name."""

from __future__ import annotations

import torch

from patchshift.core.common.errors import ConfigError


def resolve_device(name: str | None = None) -> torch.device:
    """'auto' or None -> cuda if available else cpu; 'cpu', 'cuda', 'cuda:1' taken as given."""
    if name in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"unknown device {name!r}; use auto, cpu or cuda") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' was requested but no CUDA GPU is available")
    return device
