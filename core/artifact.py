"""Model version artifacts: one directory with a manifest, the bank and the BatchNorm state.

Layout of a version directory:
  manifest.json          schema below (format_version 1), with a sha256 for every file
  bank.safetensors       the memory bank, float32 (M, D)
  batchnorm.safetensors  every BatchNorm tensor of the backbone (affine and running statistics)
  reduction.safetensors  the feature reduction's matrices (core.reduction), for every reduction
                         but `average` (whose matrices follow from the config)
The backbone's other weights are not copied: the manifest names the weights file and its sha256,
and loading refuses a different file. Saving writes a temporary sibling directory, fsyncs it and
renames it into place, so a reader sees the whole version or none of it.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, ValidationError
from safetensors.torch import load_file, save_file

from .backbone import batchnorm_state, file_sha256, load_batchnorm_state
from .config import ModelConfig
from .device import resolve_device
from .drift import DriftReference
from .errors import ArtifactError, PatchshiftError
from .fileio import fsync_dir, fsync_file
from .finite import count_non_finite, first_non_finite
from .patchcore import PatchCoreModel, Provenance, build_extractor
from .reduction import STORED, Reduction

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
BANK_FILE = "bank.safetensors"
BATCHNORM_FILE = "batchnorm.safetensors"
REDUCTION_FILE = "reduction.safetensors"
ENCODER_FILE = "encoder.safetensors"  # UDA versions: the whole trained encoder


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
    drift_reference: dict | None = (
        None  # DriftReference.to_dict(); absent in versions made before drift monitoring
    )


class Manifest(VersionFields):
    """A PatchCore version: bank + BatchNorm state, scores and heatmaps."""

    kind: Literal["patchcore"]
    stage_names: list[str]
    mean: list[float]
    std: list[float]
    feature_dim: int
    coreset_ratio: float
    bank_size: int


class UDAManifest(VersionFields):
    """A UDA version: a global detector (encoder phi + fixed centre), no bank, no heatmap."""

    kind: Literal["uda"]
    embedding_dim: int
    centre: list[float]


def _fill_uda(model, staging: Path) -> UDAManifest:
    save_file(
        {k: v.contiguous() for k, v in model.encoder.state_dict().items()},
        str(staging / ENCODER_FILE),
    )
    cfg = model.config
    return UDAManifest(
        format_version=FORMAT_VERSION,
        kind="uda",
        config=cfg.to_dict(),
        backbone=cfg.backbone,
        weights_path=model.weights_path,
        weights_sha256=file_sha256(Path(model.weights_path)) if model.weights_path else "",
        image_size=list(cfg.image_size),
        embedding_dim=cfg.embedding_dim,
        centre=[float(v) for v in model.centre.cpu()],
        threshold=model.threshold,
        files=_entries(staging, (ENCODER_FILE,)),
        drift_reference=model.drift_reference.to_dict()
        if model.drift_reference is not None
        else None,
        **dataclasses.asdict(model.provenance),
    )


def build_manifest(model: PatchCoreModel, files: dict[str, FileEntry]) -> Manifest:
    cfg = model.config
    return Manifest(
        format_version=FORMAT_VERSION,
        kind="patchcore",
        config=cfg.to_dict(),
        backbone=cfg.backbone,
        weights_path=model.backbone.weights_path,
        weights_sha256=model.backbone.weights_sha256,
        stage_names=list(model.backbone.stage_names),
        image_size=list(cfg.image_size),
        mean=list(model.backbone.mean),
        std=list(model.backbone.std),
        feature_dim=model.extractor.feature_dim,
        coreset_ratio=cfg.coreset_ratio,
        bank_size=int(model.bank.shape[0]),
        threshold=model.threshold,
        files=files,
        drift_reference=model.drift_reference.to_dict()
        if model.drift_reference is not None
        else None,
        **dataclasses.asdict(model.provenance),
    )


def _write_bank(model: PatchCoreModel, path: Path) -> None:
    """Hard-link the bank file the model was loaded from (versions share it), else write it."""
    source = model.bank_path
    if source is not None and Path(source).is_file():
        try:
            os.link(source, path)
            return
        except OSError:  # another file system, or links not supported: copy instead
            pass
    save_file({"bank": model.bank}, str(path))


def _entries(folder: Path, names: tuple[str, ...]) -> dict[str, FileEntry]:
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


def _manifest_json(manifest: VersionFields) -> str:
    data = manifest.model_dump(mode="python")
    where = first_non_finite(data)
    if where is not None:
        raise ArtifactError(
            f"refusing to save a model whose manifest field {where} is not a finite number"
        )
    return json.dumps(data, indent=2, allow_nan=False)


def _write_atomically(out_dir: str | os.PathLike[str], overwrite: bool, fill) -> Path:
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
        (staging / MANIFEST).write_text(_manifest_json(manifest))
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


def save_model(model, out_dir: str | os.PathLike[str], overwrite: bool = False) -> Path:
    """Write a version (PatchCore or UDA) atomically; refuses to replace a directory unless
    asked."""
    from .uda.model import UDAModel

    _check_threshold(model.threshold)
    if isinstance(model, UDAModel):
        refuse_non_finite(dict(model.encoder.state_dict()), "encoder")
        refuse_non_finite({"centre": model.centre}, "centre")
        target = _write_atomically(out_dir, overwrite, lambda staging: _fill_uda(model, staging))
        model.version = target.name
        return target

    refuse_non_finite({"bank": model.bank}, "memory bank")
    refuse_non_finite(batchnorm_state(model.extractor), "BatchNorm state")
    stored_reduction = model.config.feature_reduction in STORED
    reduction = model.extractor.reduction().state() if stored_reduction else {}
    refuse_non_finite(reduction, "feature reduction")

    def fill(staging: Path) -> Manifest:
        _write_bank(model, staging / BANK_FILE)
        save_file(batchnorm_state(model.extractor), str(staging / BATCHNORM_FILE))
        files = (BANK_FILE, BATCHNORM_FILE)
        if stored_reduction:
            save_file(reduction, str(staging / REDUCTION_FILE))
            files += (REDUCTION_FILE,)
        return build_manifest(model, _entries(staging, files))

    target = _write_atomically(out_dir, overwrite, fill)
    model.version = target.name
    model.bank_path = target / BANK_FILE
    return target


def _check_threshold(threshold: float) -> None:
    if not math.isfinite(threshold) or threshold < 0:
        raise ArtifactError(
            f"refusing to save a model with threshold {threshold!r}: it must be a finite number, "
            "0 or more"
        )


def read_manifest(model_dir: str | os.PathLike[str]) -> Manifest | UDAManifest:
    path = Path(model_dir)
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
    try:
        return (
            UDAManifest if isinstance(raw, dict) and raw.get("kind") == "uda" else Manifest
        ).model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ArtifactError(f"{manifest_path} is invalid: field {where}: {first['msg']}") from None


def verify_files(model_dir: Path, manifest: Manifest) -> None:
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


def load_model(model_dir: str | os.PathLike[str], device: str | torch.device | None = None):
    """Load and validate a version (PatchCoreModel or UDAModel); any inconsistency is an
    ArtifactError naming the problem."""
    path = Path(model_dir)
    manifest = read_manifest(path)
    verify_files(path, manifest)
    if isinstance(manifest, UDAManifest):
        return _load_uda(path, manifest, device)
    try:
        config = ModelConfig.from_dict(manifest.config)
    except (PatchshiftError, TypeError) as exc:
        raise ArtifactError(f"{path}: stored model configuration is invalid ({exc})") from None
    device = device if isinstance(device, torch.device) else resolve_device(device)
    try:
        backbone, extractor = build_extractor(config, device)
    except ArtifactError:
        raise
    except (
        PatchshiftError
    ) as exc:  # weights missing or not the ones it was fitted with, unknown backbone
        raise ArtifactError(f"{path}: cannot build its backbone ({exc})") from None
    if backbone.weights_sha256 != manifest.weights_sha256:
        raise ArtifactError(
            f"{path}: backbone weights file {backbone.weights_path} differs from the one the "
            "model was fitted with "
            f"(sha256 {backbone.weights_sha256[:12]}..., expected "
            f"{manifest.weights_sha256[:12]}...)"
        )
    try:
        batchnorm = load_file(str(path / BATCHNORM_FILE))
        load_batchnorm_state(extractor, batchnorm, BATCHNORM_FILE)
        bank = load_file(str(path / BANK_FILE))["bank"]
        if config.feature_reduction in STORED:
            if REDUCTION_FILE not in manifest.files:
                raise ArtifactError(
                    f"{path}: {REDUCTION_FILE} is missing (its {config.feature_reduction} feature "
                    "reduction was fitted)"
                )
            reduction = load_file(str(path / REDUCTION_FILE))
            _refuse_loading_non_finite(path, {REDUCTION_FILE: reduction})
            extractor.set_reduction(Reduction.from_state(reduction, extractor.stage_channels))
    except PatchshiftError as exc:
        raise ArtifactError(str(exc) if str(path) in str(exc) else f"{path}: {exc}") from None
    except Exception as exc:  # safetensors raises its own types for bad headers
        raise ArtifactError(f"{path}: cannot read stored tensors ({exc})") from None
    _refuse_loading_non_finite(path, {BANK_FILE: bank, BATCHNORM_FILE: batchnorm})
    dim = extractor.feature_dim
    if tuple(bank.shape) != (manifest.bank_size, dim) or manifest.feature_dim != dim:
        raise ArtifactError(
            f"{path}: bank has shape {tuple(bank.shape)}, manifest and features say "
            f"({manifest.bank_size}, {dim})"
        )
    provenance, reference = _provenance_and_reference(path, manifest)
    model = PatchCoreModel(
        config,
        backbone,
        extractor,
        bank,
        manifest.threshold,
        provenance,
        device,
        version=path.name,
        drift_reference=reference,
    )
    model.bank_path = path / BANK_FILE
    return model


def _refuse_loading_non_finite(path: Path, files: dict[str, torch.Tensor]) -> None:
    for name, tensor in files.items():
        bad, total = count_non_finite(tensor.values() if isinstance(tensor, dict) else [tensor])
        if bad:
            raise ArtifactError(
                f"{path}: {name} holds {bad} of {total} non-finite values; this version cannot "
                "score"
            )


def _provenance_and_reference(
    path: Path, manifest: VersionFields
) -> tuple[Provenance, DriftReference | None]:
    provenance = Provenance(
        **{f.name: getattr(manifest, f.name) for f in dataclasses.fields(Provenance)}
    )
    try:
        reference = (
            DriftReference.from_dict(manifest.drift_reference) if manifest.drift_reference else None
        )
    except (PatchshiftError, KeyError, TypeError, ValueError) as exc:
        raise ArtifactError(f"{path}: stored drift reference is invalid ({exc})") from None
    return provenance, reference


def _load_uda(path: Path, manifest: UDAManifest, device: str | torch.device | None):
    from .uda.config import UDAConfig
    from .uda.model import UDAModel, build_encoder

    try:
        config = UDAConfig.from_dict(
            {**manifest.config, "image_size": tuple(manifest.config["image_size"])}
        )
    except (PatchshiftError, TypeError, KeyError) as exc:
        raise ArtifactError(f"{path}: stored UDA configuration is invalid ({exc})") from None
    device = device if isinstance(device, torch.device) else resolve_device(device)
    encoder, weights_path = build_encoder(config, device)
    if manifest.weights_sha256 and file_sha256(Path(weights_path)) != manifest.weights_sha256:
        raise ArtifactError(
            f"{path}: backbone weights file {weights_path} differs from the one the model was "
            "trained from"
        )
    try:
        state = load_file(str(path / ENCODER_FILE))
        encoder.load_state_dict(state)
        _refuse_loading_non_finite(path, {ENCODER_FILE: state})
    except ArtifactError:
        raise
    except Exception as exc:  # safetensors and torch raise their own types
        raise ArtifactError(f"{path}: cannot read {ENCODER_FILE} ({exc})") from None
    if len(manifest.centre) != config.embedding_dim:
        raise ArtifactError(
            f"{path}: centre has {len(manifest.centre)} values, embedding_dim is "
            f"{config.embedding_dim}"
        )
    provenance, reference = _provenance_and_reference(path, manifest)
    model = UDAModel(
        config,
        encoder.eval(),
        torch.tensor(manifest.centre),
        manifest.threshold,
        provenance,
        device,
        weights_path,
        version=path.name,
    )
    model.drift_reference = reference
    return model
