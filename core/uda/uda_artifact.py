"""How a UDA version saves and loads itself: the whole trained encoder (encoder.safetensors) and
the fixed centre in the manifest; no bank, no heatmap."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Literal

import torch
from safetensors.torch import load_file, save_file

from patchshift.core.common.artifact_format import (
    FORMAT_VERSION,
    VersionFields,
    file_entries,
    refuse_loading_non_finite,
    refuse_non_finite,
)
from patchshift.core.common.device import resolve_device
from patchshift.core.common.errors import ArtifactError, PatchshiftError
from patchshift.core.common.fileio import file_sha256
from patchshift.core.engine.patchcore_artifact import provenance_and_reference
from patchshift.core.uda.model import UDAModel, build_encoder
from patchshift.core.uda.uda_config import UDAConfig

ENCODER_FILE = "encoder.safetensors"


class UDAManifest(VersionFields):
    """A UDA version: a global detector (encoder phi + fixed centre), no bank, no heatmap."""

    kind: Literal["uda"]
    embedding_dim: int
    centre: list[float]


def checked_fill(model: UDAModel):
    """Refuse a model with non-finite tensors, then the function that writes its files into a
    staging directory and returns its manifest."""
    refuse_non_finite(dict(model.encoder.state_dict()), "encoder")
    refuse_non_finite({"centre": model.centre}, "centre")

    def fill(staging: Path) -> UDAManifest:
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
            files=file_entries(staging, (ENCODER_FILE,)),
            drift_reference=model.drift_reference.to_dict()
            if model.drift_reference is not None
            else None,
            **dataclasses.asdict(model.provenance),
        )

    return fill


def saved(model: UDAModel, target: Path) -> None:
    """Nothing is shared between UDA versions."""


def load(path: Path, manifest: UDAManifest, device: str | torch.device | None) -> UDAModel:
    """A verified version directory -> the UDA model; any inconsistency names the file."""
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
        refuse_loading_non_finite(path, {ENCODER_FILE: state})
    except ArtifactError:
        raise
    except Exception as exc:  # safetensors and torch raise their own types
        raise ArtifactError(f"{path}: cannot read {ENCODER_FILE} ({exc})") from None
    if len(manifest.centre) != config.embedding_dim:
        raise ArtifactError(
            f"{path}: centre has {len(manifest.centre)} values, embedding_dim is "
            f"{config.embedding_dim}"
        )
    provenance, reference = provenance_and_reference(path, manifest)
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
