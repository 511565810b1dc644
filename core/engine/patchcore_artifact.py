"""How a PatchCore version saves and loads itself.

Files beside the manifest:
  bank.safetensors       the memory bank, float32 (M, D)
  batchnorm.safetensors  every BatchNorm tensor of the backbone (affine and running statistics)
  reduction.safetensors  the feature reduction's matrices (core/engine/reduction.py), for every
                         reduction but `average` (whose matrices follow from the config)
The backbone's other weights are not copied: the manifest names the weights file and its sha256,
and loading refuses a different file.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Literal

import torch
from safetensors.torch import load_file, save_file

from patchshift.core.common.artifact_format import (
    FORMAT_VERSION,
    FileEntry,
    VersionFields,
    file_entries,
    refuse_loading_non_finite,
    refuse_non_finite,
)
from patchshift.core.common.device import resolve_device
from patchshift.core.common.errors import ArtifactError, PatchshiftError
from patchshift.core.engine.backbone import batchnorm_state, load_batchnorm_state
from patchshift.core.engine.drift import DriftReference
from patchshift.core.engine.levels import LevelCorrection, Levels
from patchshift.core.engine.model_config import ModelConfig
from patchshift.core.engine.patchcore import PatchCoreModel, Provenance, build_extractor
from patchshift.core.engine.reduction import STORED, Reduction

BANK_FILE = "bank.safetensors"
BATCHNORM_FILE = "batchnorm.safetensors"
REDUCTION_FILE = "reduction.safetensors"


class Manifest(VersionFields):
    """A PatchCore version: bank + BatchNorm state, scores and heatmaps."""

    kind: Literal["patchcore"]
    stage_names: list[str]
    mean: list[float]
    std: list[float]
    feature_dim: int
    coreset_ratio: float
    bank_size: int
    # core.engine.levels: the training images' levels (absent in versions fitted before they were
    # recorded) and an adapted version's input correction (absent: none)
    source_levels: dict | None = None
    input_levels: dict | None = None


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
        source_levels=_levels_dict(model.extractor.source_levels),
        input_levels=_levels_dict(model.extractor.levels),
        threshold=model.threshold,
        files=files,
        drift_reference=model.drift_reference.to_dict()
        if model.drift_reference is not None
        else None,
        **dataclasses.asdict(model.provenance),
    )


def _levels_dict(levels: Levels | LevelCorrection | None) -> dict | None:
    return levels.to_dict() if levels is not None else None


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


def checked_fill(model: PatchCoreModel):
    """Refuse a model with non-finite tensors, then the function that writes its files into a
    staging directory and returns its manifest."""
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
        return build_manifest(model, file_entries(staging, files))

    return fill


def saved(model: PatchCoreModel, target: Path) -> None:
    """After the rename: later versions hard-link this bank file."""
    model.bank_path = target / BANK_FILE


def provenance_and_reference(
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


def load(path: Path, manifest: Manifest, device: str | torch.device | None) -> PatchCoreModel:
    """A verified version directory -> the PatchCore model; any inconsistency names the file."""
    try:
        config = ModelConfig.from_dict(manifest.config)
    except (PatchshiftError, TypeError) as exc:
        raise ArtifactError(f"{path}: stored model configuration is invalid ({exc})") from None
    device = device if isinstance(device, torch.device) else resolve_device(device)
    try:
        backbone, extractor = build_extractor(config, device)
    except ArtifactError:
        raise
    except PatchshiftError as exc:  # weights missing or not the fitted ones, unknown backbone
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
            refuse_loading_non_finite(path, {REDUCTION_FILE: reduction})
            extractor.set_reduction(Reduction.from_state(reduction, extractor.stage_channels))
    except PatchshiftError as exc:
        raise ArtifactError(str(exc) if str(path) in str(exc) else f"{path}: {exc}") from None
    except Exception as exc:  # safetensors raises its own types for bad headers
        raise ArtifactError(f"{path}: cannot read stored tensors ({exc})") from None
    refuse_loading_non_finite(path, {BANK_FILE: bank, BATCHNORM_FILE: batchnorm})
    try:
        if manifest.source_levels is not None:
            extractor.source_levels = Levels.from_dict(manifest.source_levels)
        if manifest.input_levels is not None:
            extractor.levels = LevelCorrection.from_dict(manifest.input_levels)
    except (KeyError, TypeError, ValueError) as exc:
        raise ArtifactError(f"{path}: stored input levels are invalid ({exc})") from None
    dim = extractor.feature_dim
    if tuple(bank.shape) != (manifest.bank_size, dim) or manifest.feature_dim != dim:
        raise ArtifactError(
            f"{path}: bank has shape {tuple(bank.shape)}, manifest and features say "
            f"({manifest.bank_size}, {dim})"
        )
    provenance, reference = provenance_and_reference(path, manifest)
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
