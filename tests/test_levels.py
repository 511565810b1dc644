"""Input levels: a new light's brightness and contrast undone in the pixels before the backbone."""

import json
import shutil

import numpy as np
import pytest
import torch
from conftest import normal_image, plant_defect

from patchshift.core.adapt import AdaptConfig, adapt
from patchshift.core.artifact import load_model, save_model
from patchshift.core.common.errors import ArtifactError
from patchshift.core.common.images import load_batch, to_tensor
from patchshift.core.engine.levels import (
    LevelCorrection,
    Levels,
    correct_levels,
    image_levels,
    level_correction,
    levels_of,
)
from patchshift.core.evaluation.data import train_images


def halves(low: float, high: float, size: int = 64) -> torch.Tensor:
    """A (1, 3, size, size) image whose left half is `low` and right half `high`."""
    image = torch.full((1, 3, size, size), low)
    image[..., size // 2 :] = high
    return image


def test_image_levels_by_hand():
    # halves 0.2 | 0.6: mean 0.4; the 2 x 2 cells keep the halves, whose deviation is 0.2
    means, spreads = image_levels(torch.cat([halves(0.2, 0.6), halves(0.5, 0.5)]))
    assert torch.allclose(means, torch.tensor([[0.4] * 3, [0.5] * 3]))
    assert torch.allclose(spreads, torch.tensor([[0.2] * 3, [0.0] * 3]), atol=1e-6)


def test_fine_noise_barely_moves_the_spread():
    # the spread is measured over cells of 1/8 of the side: pixel noise of 0.1 averages out
    image = halves(0.3, 0.7, size=256)
    noisy = image + 0.1 * torch.randn(image.shape, generator=torch.Generator().manual_seed(0))
    assert image_levels(noisy)[1][0, 0] == pytest.approx(0.2, abs=0.005)


def source_images(n: int = 12, seed: int = 0) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    return to_tensor([normal_image(rng) for _ in range(n)])


def test_the_correction_undoes_contrast_and_brightness_where_nothing_clipped():
    source = source_images()
    reference = levels_of(source)
    means = source.mean(dim=(2, 3), keepdim=True)
    low_contrast = (source - means) * 0.25 + means  # ImageNet-C's contrast: about each image's mean
    correction = level_correction(reference, levels_of(low_contrast))
    assert correction.gain == pytest.approx((4.0, 4.0, 4.0), rel=1e-3)
    assert correction.offset == (0.0, 0.0, 0.0)  # contrast keeps the levels
    assert torch.allclose(correct_levels(low_contrast, correction), source, atol=1e-4)
    darker = source - 0.2
    correction = level_correction(reference, levels_of(darker))
    assert correction.gain == (1.0, 1.0, 1.0)
    assert correction.offset == pytest.approx((0.2, 0.2, 0.2), abs=1e-5)
    assert torch.allclose(correct_levels(darker, correction), source, atol=1e-5)


def test_ordinary_variation_is_not_corrected():
    # source images at levels 0.3 .. 0.7: a batch 0.03 darker, or 3% flatter, is one of them
    reference = Levels((0.5,) * 3, (0.2,) * 3, level_sd=(0.1,) * 3, log_spread_sd=(0.05,) * 3)
    near = Levels((0.47,) * 3, (0.194,) * 3)
    assert level_correction(reference, near).is_identity
    far = Levels((0.35,) * 3, (0.1,) * 3)
    moved = level_correction(reference, far)
    assert moved.gain == (2.0,) * 3 and moved.offset == pytest.approx((0.15,) * 3)
    assert "x2" in level_correction(reference, far).describe()
    assert "kept" in level_correction(reference, near).describe()


def test_a_stretch_is_capped_where_8_bit_levels_would_show_as_bands():
    # contrast x0.05 leaves an 8-bit image a dozen grey levels: stretched back 20x they would be
    # bands 0.08 apart; the gain stops at 8x (and at 1/8 for the opposite change)
    reference = Levels((0.5,) * 3, (0.2,) * 3, (0.01,) * 3, (0.01,) * 3)
    assert level_correction(reference, Levels((0.5,) * 3, (0.01,) * 3)).gain == (8.0,) * 3
    assert level_correction(reference, Levels((0.5,) * 3, (4.0,) * 3)).gain == (0.125,) * 3


def test_defective_images_do_not_move_the_correction():
    # 40% of a darkened batch carries a large dark blob: the median image is a normal one
    rng = np.random.default_rng(3)
    normal = [normal_image(rng) for _ in range(12)]
    defective = [
        plant_defect(image, rng, side=30)[0] if i < 5 else image for i, image in enumerate(normal)
    ]
    reference = levels_of(source_images(24, seed=1))
    clean = level_correction(reference, levels_of(to_tensor(normal) - 0.25))
    mixed = level_correction(reference, levels_of(to_tensor(defective) - 0.25))
    assert clean.offset[0] == pytest.approx(0.25, abs=0.02)
    assert mixed.offset[0] == pytest.approx(clean.offset[0], abs=0.02)
    assert mixed.gain[0] == pytest.approx(clean.gain[0], rel=0.05)


def test_stored_levels_are_checked():
    assert LevelCorrection.from_dict({"gain": [2, 2, 2], "offset": [0, 0.1, 0]}).gain == (2, 2, 2)
    for bad in (
        {"gain": [2, 2], "offset": [0, 0, 0]},
        {"gain": [2, 2, float("nan")], "offset": [0, 0, 0]},
        {"gain": [100, 1, 1], "offset": [0, 0, 0]},
        {"gain": [1, 1, 1]},
    ):
        with pytest.raises((KeyError, ValueError)):
            LevelCorrection.from_dict(bad)
    levels = Levels((0.5,) * 3, (0.2,) * 3, (0.1,) * 3, (0.05,) * 3)
    assert Levels.from_dict(levels.to_dict()) == levels


def test_fit_records_the_training_images_levels(fitted, dataset):
    images, _ = load_batch(train_images(dataset), fitted.config.image_size)
    assert fitted.extractor.source_levels == levels_of(images)
    assert fitted.extractor.levels is None  # a fitted version corrects nothing


@pytest.fixture(scope="module")
def flat_light():
    """The line's light made flatter and darker: contrast x0.4 about each image's mean, minus 0.1
    (nothing clips), 30 images of which 6 carry a dark blob; and the same images as they were."""
    rng = np.random.default_rng(7)
    images = [normal_image(rng) for _ in range(30)]
    images = [plant_defect(image, rng)[0] if i < 6 else image for i, image in enumerate(images)]
    original = to_tensor(images)
    means = original.mean(dim=(2, 3), keepdim=True)
    return (original - means) * 0.4 + means - 0.1, original


def test_an_adapted_version_sees_the_new_light_as_the_source_saw_the_old(fitted, flat_light):
    shifted, original = flat_light
    adapted, report = adapt(fitted, shifted, AdaptConfig())
    gain, offset = report.details["input_levels"]["gain"], report.details["input_levels"]["offset"]
    assert gain == pytest.approx([2.5] * 3, rel=0.1) and offset[0] == pytest.approx(0.1, abs=0.03)
    assert "levels matched" in report.details["levels"]
    assert fitted.extractor.levels is None  # the parent is not touched
    # the new version's features of the shifted images are the source's of the originals
    # (up to the gain and offset estimated from the batch)
    before = fitted.features(original)
    corrected = (adapted.features(shifted) - before).norm()
    assert corrected < 0.1 * before.norm()
    assert corrected < 0.25 * (fitted.features(shifted) - before).norm()
    unmatched, report = adapt(fitted, shifted, AdaptConfig(input_levels="none"))
    assert unmatched.extractor.levels is None and "input_levels" not in report.details


def test_the_correction_is_stored_with_the_version(fitted, flat_light, tmp_path):
    shifted, _ = flat_light
    adapted, _ = adapt(fitted, shifted, AdaptConfig())
    path = save_model(adapted, tmp_path / "widget-v2")
    loaded = load_model(path, device="cpu")
    assert loaded.extractor.levels == adapted.extractor.levels is not None
    assert loaded.extractor.source_levels == fitted.extractor.source_levels
    assert torch.allclose(loaded.score(shifted).scores, adapted.score(shifted).scores, atol=1e-4)
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["input_levels"] = {"gain": [1e9, 1, 1], "offset": [0, 0, 0]}
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="input levels are invalid"):
        load_model(path, device="cpu")


def test_a_version_fitted_before_levels_were_recorded_adapts_without_them(
    saved_model, flat_light, tmp_path
):
    old = tmp_path / "old-v1"
    shutil.copytree(saved_model, old)
    manifest = json.loads((old / "manifest.json").read_text())
    del manifest["source_levels"], manifest["input_levels"]
    (old / "manifest.json").write_text(json.dumps(manifest))
    legacy = load_model(old, device="cpu")
    assert legacy.extractor.source_levels is None
    adapted, report = adapt(legacy, flat_light[0], AdaptConfig())
    assert adapted.extractor.levels is None
    assert "fit it again" in report.details["levels"]
