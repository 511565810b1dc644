import numpy as np
import pytest
import torch
from PIL import Image

from conftest import SIZE, normal_image, plant_defect
from patchshift.core.errors import ConfigError, DatasetError
from patchshift.core.images import to_tensor
from patchshift.core.patchcore import fit, split_holdout


def test_bank_and_threshold(fitted, tiny_config):
    # 24 images, 20% held out -> 19 bank images of 12 x 12 patches, 25% kept
    assert fitted.bank.shape == (int(np.ceil(19 * 144 * 0.25)), 64)
    assert len(fitted.provenance.calibration_scores) == 5
    assert fitted.threshold == pytest.approx(np.quantile(fitted.provenance.calibration_scores, 0.99))


def test_planted_defect_scores_above_every_normal_and_heatmap_peaks_inside(fitted):
    rng = np.random.default_rng(123)
    normals = [normal_image(rng) for _ in range(8)]
    defects, masks = zip(*(plant_defect(normal_image(rng), rng) for _ in range(4)))
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
    fitted.config = fitted.config.replace(reweight_neighbours=3)
    try:
        weighted = fitted.score(batch).scores
    finally:
        fitted.config = fitted.config.replace(reweight_neighbours=0)
    assert (weighted <= plain + 1e-6).all() and (weighted > 0).all()


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
        fit([tmp_path / "x.png"], tiny_config.replace(holdout_fraction=0.0))


def test_fit_with_given_threshold_and_no_holdout(tmp_path, tiny_config):
    rng = np.random.default_rng(0)
    paths = []
    for i in range(3):
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(normal_image(rng)).save(paths[-1])
    model = fit(paths, tiny_config.replace(holdout_fraction=0.0, coreset_max_size=50), threshold=1.5)
    assert model.threshold == 1.5 and model.bank.shape[0] == 50
    assert model.provenance.threshold_source == "given"
