import copy

import numpy as np
import pytest
import torch
from conftest import SIZE, normal_image, plant_defect
from PIL import Image

from patchshift.core.common.errors import ConfigError, DatasetError
from patchshift.core.common.images import to_tensor
from patchshift.core.engine.patchcore import fit, split_holdout


def test_bank_and_threshold(fitted, tiny_config):
    # k-fold calibration: all 24 images of 12 x 12 patches in the bank, 25% kept; 24 calibration
    # scores
    assert fitted.bank.shape == (int(np.ceil(24 * 144 * 0.25)), 64)
    assert len(fitted.provenance.calibration_scores) == 24
    assert fitted.threshold == pytest.approx(
        np.quantile(fitted.provenance.calibration_scores, 0.99)
    )


def test_holdout_calibration_keeps_images_out_of_the_bank(dataset, tiny_config):
    from patchshift.core.evaluation.data import train_images

    model = fit(train_images(dataset), tiny_config.replace(calibration="holdout"), device="cpu")
    # 24 images, 20% held out -> 19 bank images of 12 x 12 patches, 25% kept
    assert model.bank.shape == (int(np.ceil(19 * 144 * 0.25)), 64)
    assert len(model.provenance.calibration_scores) == 5
    assert model.threshold == pytest.approx(np.quantile(model.provenance.calibration_scores, 0.99))


def test_kfold_scores_leave_out_the_rows_of_the_images_fold(fitted):
    """Brute force: each image's score is its patches' worst nearest distance to bank rows of other
    folds."""
    from patchshift.core.engine.patchcore import PatchCoreModel, kfold_scores

    gen = torch.Generator().manual_seed(0)
    feats = torch.randn(6, 2, 3, 64, generator=gen)
    rows = torch.tensor([0, 5, 7, 13, 20, 26, 31, 35])  # patch indices; 6 patches per image
    row_image = rows // 6
    model = PatchCoreModel(
        fitted.config.replace(calibration_folds=3),
        fitted.backbone,
        fitted.extractor,
        feats.reshape(-1, 64)[rows],
        1.0,
        fitted.provenance,
        torch.device("cpu"),
    )
    scores = kfold_scores(model, feats, row_image)
    fold_of = np.random.default_rng(0).permutation(6) % 3
    for image in range(6):
        others = model.bank[torch.from_numpy(fold_of[row_image.numpy()] != fold_of[image])]
        expected = torch.cdist(feats[image].reshape(-1, 64), others).min(dim=1).values.max()
        assert scores[image] == pytest.approx(float(expected), rel=1e-4)
    # images 4 and 5 gave the bank no row (uda's memory holds the dominant cluster's only): they
    # are scored against the whole bank, as the deployed version scores them
    model = PatchCoreModel(
        model.config,
        fitted.backbone,
        fitted.extractor,
        feats.reshape(-1, 64)[rows[:5]],
        1.0,
        fitted.provenance,
        torch.device("cpu"),
    )
    scores = kfold_scores(model, feats, row_image[:5])
    for image in (4, 5):
        expected = torch.cdist(feats[image].reshape(-1, 64), model.bank).min(dim=1).values.max()
        assert scores[image] == pytest.approx(float(expected), rel=1e-4)


def test_planted_defect_scores_above_every_normal_and_heatmap_peaks_inside(fitted):
    rng = np.random.default_rng(123)
    normals = [normal_image(rng) for _ in range(8)]
    defects, masks = zip(*(plant_defect(normal_image(rng), rng) for _ in range(4)), strict=False)
    result = fitted.score(to_tensor(normals + list(defects)))
    scores = result.scores.numpy()
    assert scores[8:].min() > scores[:8].max()
    assert result.anomaly_maps.shape == (12, SIZE, SIZE)
    for i, mask in enumerate(masks):
        heat = result.anomaly_maps[8 + i].numpy()
        y, x = np.unravel_index(heat.argmax(), heat.shape)
        assert mask[y, x], f"defect {i}: heatmap peak at {(y, x)} is outside the defect"
    assert (scores[8:] > fitted.threshold).all()


def test_reweighting_damps_scores(fitted):
    rng = np.random.default_rng(5)
    batch = to_tensor([plant_defect(normal_image(rng), rng)[0] for _ in range(3)])
    plain = fitted.score(batch).scores
    reweighting = copy.copy(fitted)  # the session's model stays as it is
    reweighting.config = fitted.config.replace(reweight_neighbours=3)
    weighted = reweighting.score(batch).scores
    assert (weighted <= plain + 1e-6).all() and (weighted > 0).all() and (weighted < plain).any()
    assert fitted.config.reweight_neighbours == 0


def test_score_rejects_wrong_input_size(fitted):
    with pytest.raises(ConfigError, match="expected"):
        fitted.score(torch.rand(1, 3, 32, 32))


def test_holdout_split():
    bank, holdout = split_holdout(10, 0.2, seed=0)
    assert len(holdout) == 2 and len(bank) == 8 and not set(bank) & set(holdout)
    with pytest.raises(DatasetError, match="too few"):
        split_holdout(1, 0.5, 0)


def test_fit_errors(tiny_config, tmp_path):
    with pytest.raises(DatasetError):
        fit([], tiny_config)
    with pytest.raises(ConfigError, match="threshold must be given"):
        fit([tmp_path / "x.png"], tiny_config.replace(calibration="holdout", holdout_fraction=0.0))
    with pytest.raises(DatasetError, match="at least 2 normal images"):
        fit([tmp_path / "x.png"], tiny_config)


def test_fit_with_given_threshold_and_no_holdout(tmp_path, tiny_config):
    rng = np.random.default_rng(0)
    paths = []
    for i in range(3):
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(normal_image(rng)).save(paths[-1])
    model = fit(
        paths, tiny_config.replace(holdout_fraction=0.0, coreset_max_size=50), threshold=1.5
    )
    assert model.threshold == 1.5 and model.bank.shape[0] == 50
    assert model.provenance.threshold_source == "given"


def test_kfold_threshold_gives_the_requested_false_alarm_rate_on_fresh_normals(tmp_path):
    """Calibrated on training images only, the threshold flags about the requested share of new
    normal images: the count on 100 fresh ones lies in the 99.9% binomial interval."""
    from conftest import normal_image
    from scipy.stats import binom

    from patchshift.core.engine.model_config import ModelConfig
    from patchshift.core.engine.patchcore import fit

    rng = np.random.default_rng(7)
    paths = []
    for i in range(40):
        path = tmp_path / f"{i:03d}.png"
        Image.fromarray(normal_image(rng, 256)).save(path)
        paths.append(path)
    rate = 0.1
    config = ModelConfig(false_alarm_rate=rate)  # every other setting at its default
    model = fit(paths, config, device="cpu")
    assert (
        model.provenance.threshold_source == "kfold-quantile"
        and len(model.provenance.calibration_scores) == 40
    )
    fresh = (
        torch.stack(
            [torch.from_numpy(normal_image(rng, 256)).permute(2, 0, 1) for _ in range(100)]
        ).float()
        / 255
    )
    flagged = int(
        sum(
            (model.score(fresh[i : i + 50]).scores > model.threshold).sum()
            for i in range(0, 100, 50)
        )
    )
    low, high = binom.interval(0.999, 100, rate)
    assert low <= flagged <= high, (flagged, low, high)


def test_versions_before_kfold_calibration_read_as_holdout():
    from patchshift.core.engine.model_config import ModelConfig

    old = ModelConfig().to_dict()
    for key in ("calibration", "calibration_folds", "false_alarm_rate"):
        old.pop(key)
    old["threshold_quantile"] = 0.95
    config = ModelConfig.from_dict(old)
    assert config.calibration == "holdout" and abs(config.false_alarm_rate - 0.05) < 1e-12


def test_a_small_planted_defect_is_found_by_the_default_configuration(tmp_path):
    """Every setting at its default (256 px input, zero-bordered neighbourhoods, k-fold calibration
    at 1% false alarms): a 10-px blob on a fresh image is flagged, and its heatmap peaks on it."""
    from conftest import normal_image, plant_defect

    from patchshift.core.engine.model_config import ModelConfig
    from patchshift.core.engine.patchcore import fit

    rng = np.random.default_rng(11)
    paths = []
    for i in range(16):
        paths.append(tmp_path / f"{i:03d}.png")
        Image.fromarray(normal_image(rng, 256)).save(paths[-1])
    model = fit(paths, ModelConfig(), device="cpu")
    normals = [normal_image(rng, 256) for _ in range(6)]
    defects, masks = zip(
        *(plant_defect(normal_image(rng, 256), rng, side=10) for _ in range(3)), strict=False
    )
    result = model.score(to_tensor(normals + list(defects)))
    scores = result.scores.numpy()
    assert (scores[6:] > model.threshold).all() and scores[6:].min() > scores[:6].max(), (
        scores,
        model.threshold,
    )
    for i, mask in enumerate(masks):
        heat = result.anomaly_maps[6 + i].numpy()
        assert mask[np.unravel_index(heat.argmax(), heat.shape)], (
            f"defect {i}: heatmap peak outside the defect"
        )
