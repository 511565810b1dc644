"""Model versions on disk, every kind through one door: save_model, read_manifest, load_model.

The directory format (a manifest with checksums, written atomically) is
core/common/artifact_format.py; each kind's fields and files are its own persistence module. A
kind is looked up by the manifest's `kind` (absent: PatchCore, the only kind of the first
versions) or the model's `kind` attribute.
"""

from __future__ import annotations

import os
from pathlib import Path
from types import ModuleType

import torch

from patchshift.core.common.artifact_format import (
    MANIFEST,
    VersionFields,
    check_threshold,
    read_raw_manifest,
    validate_manifest,
    verify_files,
    write_atomically,
)
from patchshift.core.common.errors import ArtifactError
from patchshift.core.engine import patchcore_artifact
from patchshift.core.engine.patchcore_artifact import (
    BANK_FILE,
    BATCHNORM_FILE,
    REDUCTION_FILE,
    Manifest,
)
from patchshift.core.uda import uda_artifact
from patchshift.core.uda.uda_artifact import ENCODER_FILE, UDAManifest

__all__ = [
    "BANK_FILE",
    "BATCHNORM_FILE",
    "ENCODER_FILE",
    "MANIFEST",
    "REDUCTION_FILE",
    "Manifest",
    "UDAManifest",
    "load_model",
    "read_manifest",
    "save_model",
]

# kind -> (manifest schema, the module that saves and loads it)
KINDS: dict[str, tuple[type[VersionFields], ModuleType]] = {
    "patchcore": (Manifest, patchcore_artifact),
    "uda": (UDAManifest, uda_artifact),
}


def _kind(name: str) -> tuple[type[VersionFields], ModuleType]:
    try:
        return KINDS[name]
    except KeyError:
        raise ArtifactError(
            f"unknown model kind {name!r}; this patchshift saves and loads {', '.join(KINDS)}"
        ) from None


def save_model(model, out_dir: str | os.PathLike[str], overwrite: bool = False) -> Path:
    """Write a version atomically; refuses to replace a directory unless asked."""
    check_threshold(model.threshold)
    _, persistence = _kind(model.kind)
    target = write_atomically(out_dir, overwrite, persistence.checked_fill(model))
    model.version = target.name
    persistence.saved(model, target)
    return target


def read_manifest(model_dir: str | os.PathLike[str]) -> VersionFields:
    path = Path(model_dir)
    raw = read_raw_manifest(path)
    name = raw.get("kind", "patchcore") if isinstance(raw, dict) else "patchcore"
    schema, _ = _kind(name) if isinstance(name, str) else _kind(repr(name))
    return validate_manifest(path, raw, schema)


def load_model(model_dir: str | os.PathLike[str], device: str | torch.device | None = None):
    """Load and validate a version of any kind; any inconsistency is an ArtifactError naming the
    problem."""
    path = Path(model_dir)
    manifest = read_manifest(path)
    verify_files(path, manifest)
    _, persistence = _kind(manifest.kind)
    return persistence.load(path, manifest, device)
