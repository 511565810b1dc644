import copy
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import normal_image, plant_defect

from patchshift.core.artifact import BANK_FILE, MANIFEST, load_model, save_model
from patchshift.core.common.errors import ArtifactError
from patchshift.core.common.images import to_tensor
from patchshift.core.engine import patchcore_artifact


@pytest.fixture
def batch():
    rng = np.random.default_rng(9)
    return to_tensor([normal_image(rng), plant_defect(normal_image(rng), rng)[0]])


@pytest.fixture
def version_copy(saved_model, tmp_path):
    target = tmp_path / "copy"
    shutil.copytree(saved_model, target)
    return target


def test_round_trip_gives_identical_scores(fitted, saved_model, batch):
    loaded = load_model(saved_model, device="cpu")
    a, b = fitted.score(batch), loaded.score(batch)
    assert torch.equal(a.scores, b.scores)
    assert torch.equal(a.anomaly_maps, b.anomaly_maps)
    assert loaded.threshold == fitted.threshold
    manifest = json.loads((saved_model / MANIFEST).read_text())
    assert manifest["format_version"] == 1 and manifest["bank_size"] == fitted.bank.shape[0]
    assert manifest["method"] == "fit" and manifest["parent"] is None
    assert manifest["image_size"] == [96, 96] and len(manifest["weights_sha256"]) == 64


def test_corrupted_bank_is_rejected(version_copy):
    data = bytearray((version_copy / BANK_FILE).read_bytes())
    data[-10] ^= 0xFF
    (version_copy / BANK_FILE).write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="checksum"):
        load_model(version_copy)


def test_truncated_bank_is_rejected(version_copy):
    data = (version_copy / BANK_FILE).read_bytes()
    (version_copy / BANK_FILE).write_bytes(data[: len(data) // 2])
    with pytest.raises(ArtifactError, match="truncated"):
        load_model(version_copy)


def test_missing_and_invalid_manifest(version_copy, tmp_path):
    with pytest.raises(ArtifactError, match="does not exist"):
        load_model(tmp_path / "nothing")
    (version_copy / MANIFEST).write_text("{not json")
    with pytest.raises(ArtifactError, match="not valid JSON"):
        load_model(version_copy)
    (version_copy / MANIFEST).unlink()
    with pytest.raises(ArtifactError, match="manifest.json is missing"):
        load_model(version_copy)


def test_incompatible_format_and_fields(version_copy, saved_model):
    manifest = json.loads((saved_model / MANIFEST).read_text())
    (version_copy / MANIFEST).write_text(json.dumps({**manifest, "format_version": 99}))
    with pytest.raises(ArtifactError, match="format 99"):
        load_model(version_copy)
    broken = dict(manifest)
    del broken["threshold"]
    (version_copy / MANIFEST).write_text(json.dumps(broken))
    with pytest.raises(ArtifactError, match="threshold"):
        load_model(version_copy)


def test_changed_weights_are_rejected(version_copy, saved_model):
    manifest = json.loads((saved_model / MANIFEST).read_text())
    (version_copy / MANIFEST).write_text(json.dumps({**manifest, "weights_sha256": "0" * 64}))
    with pytest.raises(ArtifactError, match="differs from the one the model was fitted with"):
        load_model(version_copy)


def test_save_refuses_to_overwrite_and_is_atomic(fitted, saved_model, tmp_path, monkeypatch):
    with pytest.raises(ArtifactError, match="already exists"):
        save_model(fitted, saved_model)
    target = tmp_path / "v2"

    def explode(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(patchcore_artifact, "build_manifest", explode)
    with pytest.raises(OSError):
        save_model(fitted, target)
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []  # no half-written temporary left behind
    # overwriting an existing version that fails half way keeps the old one intact
    with pytest.raises(OSError):
        save_model(fitted, saved_model, overwrite=True)
    monkeypatch.undo()
    assert load_model(saved_model).threshold == fitted.threshold


def test_overwrite_replaces_whole_version(fitted, tmp_path):
    target = save_model(fitted, tmp_path / "v")
    (target / "stray.txt").write_text("old")
    save_model(fitted, target, overwrite=True)
    assert not (target / "stray.txt").exists()
    assert load_model(target).bank.shape == fitted.bank.shape


def test_an_artifact_written_before_kfold_and_contamination_loads_and_scores_identically(
    saved_model, tmp_path, dataset
):
    """A 0.1-era manifest (a held-out quantile, no calibration, false-alarm, contamination or border
    fields) loads with the former behaviour of each and scores as a manifest stating it does."""
    import json
    import shutil

    from patchshift.core.artifact import load_model
    from patchshift.core.common.images import load_batch
    from patchshift.core.evaluation.data import labelled_samples

    old = tmp_path / "old-v1"
    shutil.copytree(saved_model, old)
    manifest = json.loads((old / "manifest.json").read_text())
    explicit = tmp_path / "explicit-v1"  # the same version stating the former border averaging
    shutil.copytree(saved_model, explicit)
    stated = json.loads((explicit / "manifest.json").read_text())
    stated["config"]["neighbourhood_border"] = "inside"
    (explicit / "manifest.json").write_text(json.dumps(stated))
    assert (
        manifest["config"]["backbone"] == "tf_efficientnet_lite0"
    )  # every version before Lite1 had it
    for key in (
        "backbone",
        "calibration",
        "calibration_folds",
        "false_alarm_rate",
        "contamination",
        "neighbourhood_border",
    ):
        manifest["config"].pop(key)
    manifest["config"]["threshold_quantile"] = 0.99
    (old / "manifest.json").write_text(json.dumps(manifest))
    current, legacy = load_model(explicit, device="cpu"), load_model(old, device="cpu")
    assert legacy.config.calibration == "holdout" and legacy.threshold == current.threshold
    assert legacy.config.backbone == "tf_efficientnet_lite0"
    assert legacy.config.neighbourhood_border == "inside" and legacy.extractor.border == "inside"
    batch, _ = load_batch([s.path for s in labelled_samples(dataset)], legacy.config.image_size)
    a, b = current.score(batch), legacy.score(batch)
    assert torch.equal(a.scores, b.scores) and torch.equal(a.anomaly_maps, b.anomaly_maps)


def test_save_refuses_non_finite_threshold_and_tensors(fitted, tmp_path: Path) -> None:
    from patchshift.core.artifact import save_model
    from patchshift.core.common.errors import ArtifactError
    from patchshift.core.engine.backbone import batchnorm_layers

    bad = copy.copy(fitted)
    bad.threshold = float("inf")
    with pytest.raises(ArtifactError, match="threshold inf"):
        save_model(bad, tmp_path / "a")
    bad = copy.copy(fitted)
    bad.extractor = copy.deepcopy(fitted.extractor)
    next(iter(batchnorm_layers(bad.extractor).values())).weight.data[0] = float("nan")
    with pytest.raises(ArtifactError, match="BatchNorm state holds 1 of"):
        save_model(bad, tmp_path / "b")
    bad = copy.copy(fitted)
    bad.bank = fitted.bank.clone()
    bad.bank[0, 0] = float("inf")
    bad.bank_path = None
    with pytest.raises(ArtifactError, match="memory bank holds 1 of"):
        save_model(bad, tmp_path / "c")
    bad = copy.copy(fitted)
    bad.provenance = copy.deepcopy(fitted.provenance)
    bad.provenance.details = {"seconds": float("nan")}
    with pytest.raises(ArtifactError, match="details.seconds"):
        save_model(bad, tmp_path / "d")
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # nothing half-written, no staging left


def test_loader_refuses_non_finite_values(saved_model: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    from patchshift.core.artifact import BANK_FILE, MANIFEST, load_model
    from patchshift.core.common.errors import ArtifactError
    from patchshift.core.common.fileio import file_sha256

    version = tmp_path / "v1"
    shutil.copytree(saved_model, version)
    bank = load_file(str(version / BANK_FILE))["bank"]
    bank[3, 1] = float("nan")
    (version / BANK_FILE).unlink()  # it may be a hard link shared with other versions
    save_file({"bank": bank}, str(version / BANK_FILE))
    manifest = json.loads((version / MANIFEST).read_text())
    manifest["files"][BANK_FILE] = {
        "sha256": file_sha256(version / BANK_FILE),
        "bytes": (version / BANK_FILE).stat().st_size,
    }
    (version / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="non-finite"):
        load_model(version, device="cpu")
    manifest = json.loads((saved_model / MANIFEST).read_text())
    shutil.rmtree(version)
    shutil.copytree(saved_model, version)
    (version / MANIFEST).write_text(
        json.dumps(manifest).replace(
            f'"threshold": {manifest["threshold"]}', '"threshold": Infinity'
        )
    )
    with pytest.raises(ArtifactError, match="field threshold"):
        load_model(version, device="cpu")


def test_versions_made_under_older_ranges_still_load(
    saved_model: Path, tmp_path: Path, fitted
) -> None:
    """Ranges bound what a person asks for, not what is stored: an old version outside them
    loads."""
    from patchshift.core.artifact import MANIFEST, load_model
    from patchshift.core.common.errors import ConfigError
    from patchshift.core.engine.features import PatchFeatureExtractor
    from patchshift.core.engine.model_config import ModelConfig
    from patchshift.core.engine.patchcore import fit

    version = tmp_path / "v1"
    shutil.copytree(saved_model, version)
    manifest = json.loads((version / MANIFEST).read_text())
    manifest["config"].update(batch_size=512, seed=-1, holdout_fraction=0.95)
    (version / MANIFEST).write_text(json.dumps(manifest))
    model = load_model(version, device="cpu")
    assert model.config.batch_size == 512 and model.threshold == fitted.threshold
    wide = PatchFeatureExtractor(
        fitted.backbone, 256, 3
    )  # more than Lite0 provides: loads, fit refuses it
    assert wide.feature_dim == 256
    with pytest.raises(ConfigError, match="feature_dim must be at most 224"):
        fit(
            [saved_model / "a.png", saved_model / "b.png"],
            ModelConfig(feature_dim=256, image_size=64),
            device="cpu",
        )
    with pytest.raises(ConfigError, match="batch_size must be in"):
        fit(
            [saved_model / "a.png", saved_model / "b.png"],
            ModelConfig(batch_size=512, image_size=64),
            device="cpu",
        )
