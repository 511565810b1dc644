"""Feature reductions (core/engine/reduction.py): hand-computed matrices, shapes, determinism,
storage."""

from __future__ import annotations

import json

import pytest
import torch

from patchshift.core.artifact import REDUCTION_FILE, load_model, save_model
from patchshift.core.common.errors import ArtifactError, ConfigError
from patchshift.core.common.images import load_batch
from patchshift.core.engine.backbone import build_backbone
from patchshift.core.engine.features import PatchFeatureExtractor
from patchshift.core.engine.patchcore import fit
from patchshift.core.engine.reduction import (
    REDUCTIONS,
    Reduction,
    check_reduction,
    fit_reduction,
    initial_reduction,
)
from patchshift.core.evaluation.data import labelled_samples, train_images

STAGES = (2, 3)  # a tiny two-stage layout for hand computations


def test_balanced_divides_each_stage_by_its_mean_patch_norm_by_hand():
    # stage 1 (2 channels) has norm 2 on every patch, stage 2 (3 channels) norm 4 then 8: mean 6
    raw = torch.tensor([[2.0, 0, 4, 0, 0], [0, 2, 0, 8, 0]])
    reduction = fit_reduction("balanced", raw, 0, STAGES, seed=0)
    assert reduction.mix is None and reduction.dim == 5
    torch.testing.assert_close(reduction.stage_maps[0], torch.eye(2) / 2)
    torch.testing.assert_close(reduction.stage_maps[1], torch.eye(3) / 6)
    torch.testing.assert_close(
        raw @ reduction.matrix(), torch.tensor([[1.0, 0, 4 / 6, 0, 0], [0, 1, 0, 8 / 6, 0]])
    )


def test_pca_keeps_the_axis_of_largest_variance_by_hand():
    # the patches vary along (1, 1, 0, 0, 0) / sqrt 2 (spread 10) and, much less, along channel 5
    t = torch.tensor([-1.0, 1.0, -2.0, 2.0])
    raw = torch.zeros(4, 5)
    raw[:, 0] = raw[:, 1] = 10 * t
    raw[:, 4] = torch.tensor([0.1, 0.1, -0.1, -0.1])
    reduction = fit_reduction("pca", raw, 1, STAGES, seed=0)
    axis = reduction.matrix()[:, 0]
    torch.testing.assert_close(
        axis, torch.tensor([1.0, 1.0, 0, 0, 0]) / 2**0.5
    )  # sign fixed: largest entry positive


def test_average_none_and_random_need_no_training_patches():
    average = initial_reduction("average", 4, STAGES, seed=0)
    # stage 1 keeps its 2 channels; stage 2 pools 3 channels to 2 (adaptive bins {0, 1} and {1, 2})
    torch.testing.assert_close(
        average.matrix(),
        torch.tensor(
            [[1.0, 0, 0, 0], [0, 1, 0, 0], [0, 0, 0.5, 0], [0, 0, 0.5, 0.5], [0, 0, 0, 0.5]]
        ),
    )
    assert average.dim == 4 and initial_reduction("none", 4, STAGES, 0).dim == 5
    torch.testing.assert_close(initial_reduction("none", 4, STAGES, 0).matrix(), torch.eye(5))
    random = initial_reduction("random", 4, STAGES, seed=3)
    assert random.matrix().shape == (5, 4)
    assert torch.equal(random.matrix(), initial_reduction("random", 4, STAGES, seed=3).matrix())
    assert not torch.equal(random.matrix(), initial_reduction("random", 4, STAGES, seed=4).matrix())


@pytest.mark.parametrize("kind", ["balanced", "pca"])
def test_fitted_reductions_are_deterministic_given_the_seed(kind):
    raw = torch.randn(
        300_000, 5, generator=torch.Generator().manual_seed(0)
    )  # above the sample cap: the seed picks it
    first, again = (
        fit_reduction(kind, raw, 2, STAGES, seed=1),
        fit_reduction(kind, raw, 2, STAGES, seed=1),
    )
    assert torch.equal(first.matrix(), again.matrix())


@pytest.mark.parametrize(
    ("kind", "dim", "expected"),
    [
        ("average", 64, 64),
        ("none", 64, 152),
        ("balanced", 64, 152),
        ("random", 32, 32),
        ("pca", 16, 16),
    ],
)
def test_feature_shapes_of_every_reduction(kind, dim, expected):
    backbone = build_backbone("tf_efficientnet_lite0", None, (8, 16))
    extractor = PatchFeatureExtractor(backbone, dim, 3, reduction=kind).eval()
    if kind in ("balanced", "pca"):
        with torch.inference_mode():
            raw = extractor(torch.rand(2, 3, 64, 64))
        extractor.set_reduction(
            fit_reduction(kind, raw.reshape(-1, raw.shape[-1]), dim, extractor.stage_channels, 0)
        )
    with torch.inference_mode():
        z = extractor(torch.rand(2, 3, 64, 96))
    assert (
        z.shape == (2, 8, 12, expected)
        and extractor.feature_dim == expected
        and torch.isfinite(z).all()
    )


def test_a_reduction_applied_in_the_extractor_equals_its_matrix_on_raw_features():
    """The extractor maps each stage before averaging and upsampling; all linear, so the result is
    the raw features times the reduction's one matrix."""
    backbone = build_backbone("tf_efficientnet_lite0", None, (8, 16))
    raw_extractor = PatchFeatureExtractor(backbone, 64, 3, reduction="none").eval()
    mixed = PatchFeatureExtractor(backbone, 24, 3, reduction="random", seed=5).eval()
    images = torch.rand(2, 3, 64, 64)
    with torch.inference_mode():
        expected = raw_extractor(images) @ mixed.reduction().matrix()
        torch.testing.assert_close(mixed(images), expected, rtol=1e-4, atol=1e-4)


def test_dimension_limits_name_the_reduction():
    with pytest.raises(ConfigError, match="at most 152 with pca"):
        check_reduction("pca", 200, "tf_efficientnet_lite0", (40, 112))
    with pytest.raises(ConfigError, match="at most 224 for tf_efficientnet_lite0"):
        check_reduction("average", 256, "tf_efficientnet_lite0", (40, 112))
    check_reduction(
        "random", 1024, "tf_efficientnet_lite0", (40, 112)
    )  # any D: a projection may widen
    with pytest.raises(ConfigError, match="feature_reduction must be one of"):
        check_reduction("svd", 64, "tf_efficientnet_lite0", (40, 112))
    with pytest.raises(ConfigError, match="expected"):
        Reduction.from_state({"stage0": torch.eye(40)}, (40, 112))


@pytest.mark.parametrize("kind", [k for k in REDUCTIONS if k != "average"])
def test_every_reduction_is_stored_and_reloaded_bit_exact(kind, dataset, tiny_config, tmp_path):
    config = tiny_config.replace(feature_reduction=kind, feature_dim=32)
    model = fit(train_images(dataset)[:8], config, device="cpu")
    saved = save_model(model, tmp_path / "v1")
    manifest = json.loads((saved / "manifest.json").read_text())
    assert REDUCTION_FILE in manifest["files"] and manifest["feature_dim"] == model.bank.shape[1]
    loaded = load_model(saved, device="cpu")
    assert torch.equal(loaded.extractor.reduction().matrix(), model.extractor.reduction().matrix())
    batch, _ = load_batch([s.path for s in labelled_samples(dataset)][:4], config.image_size)
    before, after = model.score(batch), loaded.score(batch)
    assert torch.equal(before.scores, after.scores) and torch.equal(
        before.anomaly_maps, after.anomaly_maps
    )
    # a fitted reduction is part of the version: without its file the version refuses to load
    (saved / REDUCTION_FILE).write_bytes(b"\0" * (saved / REDUCTION_FILE).stat().st_size)
    with pytest.raises(ArtifactError, match="reduction.safetensors is corrupt"):
        load_model(saved, device="cpu")


def test_pca_fitted_by_fit_depends_on_the_training_images(dataset, tiny_config):
    config = tiny_config.replace(feature_reduction="pca", feature_dim=16)
    first = fit(train_images(dataset)[:8], config, device="cpu").extractor.reduction().matrix()
    again = fit(train_images(dataset)[:8], config, device="cpu").extractor.reduction().matrix()
    other = fit(train_images(dataset)[8:16], config, device="cpu").extractor.reduction().matrix()
    assert torch.equal(first, again) and not torch.allclose(first, other)
