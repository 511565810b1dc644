"""What every model version's directory is, whatever its kind: a manifest with a sha256 for every
file, written atomically.

Saving writes a temporary sibling directory, fsyncs it and renames it into place, so a reader sees
the whole version or none of it. Each model kind (core/engine/patchcore_artifact.py,
core/uda/uda_artifact.py) declares its manifest fields and files and saves and loads itself through
these helpers.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, ValidationError

from patchshift.core.common.errors import ArtifactError
from patchshift.core.common.fileio import file_sha256, fsync_dir, fsync_file
from patchshift.core.common.finite import count_non_finite, first_non_finite

FORMAT_VERSION = 1
MANIFEST = "manifest.json"


class FileEntry(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    sha256: str
    bytes: int


class VersionFields(BaseModel):
    """What every version's manifest holds, whatever its kind."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    format_version: Literal[1]
    config: dict
    backbone: str
    weights_path: str
    weights_sha256: str
    image_size: list[int]
    threshold: float
    threshold_source: str
    calibration_scores: list[float]
    n_train_images: int
    created: str
    parent: str | None
    method: str
    details: dict
    files: dict[str, FileEntry]
    # DriftReference.to_dict(); absent in versions made before drift monitoring
    drift_reference: dict | None = None


def file_entries(folder: Path, names: tuple[str, ...]) -> dict[str, FileEntry]:
    """fsync each written file and record its checksum and size for the manifest."""
    files = {}
    for name in names:
        fsync_file(folder / name)
        files[name] = FileEntry(
            sha256=file_sha256(folder / name), bytes=(folder / name).stat().st_size
        )
    return files


def refuse_non_finite(tensors: dict[str, torch.Tensor], what: str) -> None:
    """A version is never written with NaN or infinite values: it would score every image the
    same."""
    bad, total = count_non_finite(tensors.values())
    if bad:
        raise ArtifactError(
            f"refusing to save a model whose {what} holds {bad} of {total} non-finite values"
        )


def refuse_loading_non_finite(path: Path, files: dict[str, torch.Tensor | dict]) -> None:
    for name, tensor in files.items():
        bad, total = count_non_finite(tensor.values() if isinstance(tensor, dict) else [tensor])
        if bad:
            raise ArtifactError(
                f"{path}: {name} holds {bad} of {total} non-finite values; this version cannot "
                "score"
            )


def check_threshold(threshold: float) -> None:
    if not math.isfinite(threshold) or threshold < 0:
        raise ArtifactError(
            f"refusing to save a model with threshold {threshold!r}: it must be a finite number, "
            "0 or more"
        )


def manifest_json(manifest: VersionFields) -> str:
    data = manifest.model_dump(mode="python")
    where = first_non_finite(data)
    if where is not None:
        raise ArtifactError(
            f"refusing to save a model whose manifest field {where} is not a finite number"
        )
    return json.dumps(data, indent=2, allow_nan=False)


def write_atomically(
    out_dir: str | os.PathLike[str], overwrite: bool, fill: Callable[[Path], VersionFields]
) -> Path:
    """Create the version in a temporary sibling (fill(staging) writes the files and returns the
    manifest), fsync it and rename it into place; a reader sees the whole version or none of it."""
    target = Path(out_dir)
    if target.exists() and not overwrite:
        raise ArtifactError(
            f"{target} already exists; choose another directory or overwrite it explicitly"
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        manifest = fill(staging)
        (staging / MANIFEST).write_text(manifest_json(manifest))
        fsync_file(staging / MANIFEST)
        fsync_dir(staging)
        if target.exists():
            trash = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
            os.rename(target, trash / "old")
            os.rename(staging, target)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.rename(staging, target)
        fsync_dir(target.parent)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def read_raw_manifest(path: Path) -> dict:
    """The manifest's JSON, checked to be a version directory of the format this code reads."""
    if not path.is_dir():
        raise ArtifactError(f"{path} is not a model directory (it does not exist)")
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        raise ArtifactError(f"{path} is not a model directory: {MANIFEST} is missing")
    try:
        raw = json.loads(manifest_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"{manifest_path} is corrupt (not valid JSON: {exc})") from None
    if isinstance(raw, dict) and raw.get("format_version") not in (None, FORMAT_VERSION):
        raise ArtifactError(
            f"{path} has artifact format {raw.get('format_version')}, this patchshift reads "
            f"format {FORMAT_VERSION}"
        )
    return raw


def validate_manifest(path: Path, raw: dict, schema: type[VersionFields]) -> VersionFields:
    try:
        return schema.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        message = f"{path / MANIFEST} is invalid: field {where}: {first['msg']}"
        raise ArtifactError(message) from None


def verify_files(model_dir: Path, manifest: VersionFields) -> None:
    for name, entry in manifest.files.items():
        file = model_dir / name
        if not file.is_file():
            raise ArtifactError(f"{model_dir}: {name} is missing")
        if file.stat().st_size != entry.bytes:
            raise ArtifactError(
                f"{model_dir}: {name} is truncated or altered ({file.stat().st_size} bytes, "
                f"expected {entry.bytes})"
            )
        if file_sha256(file) != entry.sha256:
            raise ArtifactError(f"{model_dir}: {name} is corrupt (checksum mismatch)")
