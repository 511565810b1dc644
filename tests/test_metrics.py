import numpy as np
import pytest

from patchshift.core.common.errors import ConfigError
from patchshift.core.evaluation.metrics import (
    aupro,
    auroc,
    f1_at_threshold,
    image_auroc,
    oracle_recall,
    oracle_threshold,
    pixel_auroc,
    sorted_quantiles,
)


def test_auroc_by_hand():
    assert image_auroc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.75)
    assert image_auroc([0, 1], [0.2, 0.9]) == 1.0
    assert image_auroc([0, 1], [0.9, 0.2]) == 0.0
    assert image_auroc([0, 1], [0.5, 0.5]) == 0.5  # a tie counts half


def test_auroc_matches_sklearn():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 500)
    scores = np.round(rng.random(500) + labels * 0.3, 2)  # rounding creates ties
    assert auroc(labels, scores) == pytest.approx(roc_auc_score(labels, scores))


def test_auroc_needs_both_classes():
    with pytest.raises(ConfigError):
        image_auroc([1, 1], [0.1, 0.2])


def test_pixel_auroc_by_hand():
    masks = np.array([[[1, 0], [0, 0]]])
    maps = np.array([[[0.9, 0.1], [0.95, 0.2]]])
    assert pixel_auroc(masks, maps) == pytest.approx(2 / 3)


def test_aupro_by_hand_one_region():
    # one region of two pixels (0.9 and 0.2); defect-free pixels 0.5 and 0.1.
    # PRO is 0.5 from FPR 0 to FPR 0.5, so the normalised area up to 0.3 is 0.5.
    masks = np.array([[[1, 1, 0, 0]]])
    maps = np.array([[[0.9, 0.2, 0.5, 0.1]]])
    assert aupro(masks, maps) == pytest.approx(0.5)


def test_aupro_by_hand_two_regions():
    # two one-pixel regions weigh one half each; PRO 0.5 on [0, 1/3], 1 beyond; up to 0.5: (1/6 +
    # 1/6) / 0.5
    masks = np.array([[[1, 0, 1, 0, 0]]])
    maps = np.array([[[0.9, 0.5, 0.3, 0.1, 0.05]]])
    assert aupro(masks, maps, max_fpr=0.5) == pytest.approx(2 / 3)


def test_aupro_perfect_and_shape_check():
    masks = np.zeros((2, 8, 8), bool)
    masks[0, 2:4, 2:4] = True
    assert aupro(masks, masks.astype(float)) == pytest.approx(1.0)
    with pytest.raises(ConfigError):
        aupro(masks, np.zeros((2, 8, 7)))


def test_f1_by_hand():
    assert f1_at_threshold([1, 1, 0, 0], [0.9, 0.2, 0.6, 0.1], 0.5) == pytest.approx(0.5)
    assert f1_at_threshold([1, 0], [0.1, 0.2], 0.5) == 0.0


def test_binned_pixel_auroc_matches_exact_on_random_maps():
    rng = np.random.default_rng(1)
    masks = rng.random((4, 30, 30)) < 0.1
    maps = rng.random((4, 30, 30)) + masks * 0.3
    assert pixel_auroc(masks, maps) == pytest.approx(auroc(masks.ravel(), maps.ravel()), abs=1e-4)


def test_pixel_metrics_survive_an_extreme_pixel():
    rng = np.random.default_rng(2)
    masks = rng.random((3, 20, 20)) < 0.1
    maps = rng.random((3, 20, 20)) + masks * 0.3
    exact = auroc(masks.ravel(), maps.ravel())
    maps[0, 0, 0] = 1e30  # one absurd value must not squash the others into a few bins
    masks[0, 0, 0] = True
    exact = auroc(masks.ravel(), maps.ravel())
    assert pixel_auroc(masks, maps) == pytest.approx(exact, abs=1e-4)


def test_gumbel_threshold_by_hand():
    from patchshift.core.engine.threshold import gumbel_reduced, gumbel_threshold

    assert gumbel_reduced(0.5) == pytest.approx(0.366513, abs=1e-6)  # -log(log 2)
    # 21 scores 0..20: 10th percentile 2, median 10. y(0.1) = -0.834032, y(0.5) = 0.366513, y(0.99)
    # = 4.600149; scale 8 / 1.200545 = 6.663640, location 2 + 0.834032 * 6.663640 = 7.557688,
    # threshold 7.557688 + 4.600149 * 6.663640
    scores = np.arange(21.0)
    assert gumbel_threshold(scores, 0.01, fallback=99.0, quantiles=(0.1, 0.5))[:2] == (
        pytest.approx(38.2114, abs=1e-3),
        None,
    )
    assert gumbel_threshold(
        scores, 0.05, fallback=99.0, quantiles=(0.1, 0.5)
    ).value == pytest.approx(27.3500, abs=1e-3)  # y(0.95) = 2.970195
    # the default pair, the 20th percentile (4) and the median: y(0.2) = -0.475885, scale 6 /
    # 0.842398 = 7.122524, location 4 + 0.475885 * 7.122524 = 7.389502, threshold 7.389502 +
    # 4.600149 * 7.122524
    assert gumbel_threshold(scores, 0.01, fallback=99.0).value == pytest.approx(40.1541, abs=1e-3)
    flat = gumbel_threshold(
        np.full(21, 7.0), 0.01, fallback=99.0
    )  # no spread to fit: the parent's stays, and why
    assert flat.value == 99.0 and "all equal" in flat.kept_reason
    assert "no false alarm" in gumbel_threshold(scores, 0.0, fallback=99.0).kept_reason
    assert "only 4" in gumbel_threshold(scores[:4], 0.01, fallback=99.0).kept_reason
    with pytest.raises(ConfigError, match="not finite"):
        gumbel_threshold(np.r_[scores, np.nan], 0.01, fallback=99.0)


def test_gumbel_threshold_flags_the_asked_share_of_normal_images_beside_a_defective_majority():
    from patchshift.core.engine.threshold import gumbel_threshold

    rng = np.random.default_rng(0)
    fresh = rng.gumbel(20.0, 1.0, 100_000)  # the normal images the line will see next
    clean = gumbel_threshold(rng.gumbel(20.0, 1.0, 200), 0.01, fallback=0.0).value
    assert 0.004 <= (fresh > clean).mean() <= 0.025, clean  # asked 1%, estimated from 200 images
    # 30% of the batch defective (high scores): the median stays among the normal images
    normal, defective = rng.gumbel(20.0, 1.0, 70), rng.normal(40.0, 8.0, 30)
    contaminated = gumbel_threshold(np.concatenate([normal, defective]), 0.01, fallback=0.0).value
    assert (fresh > contaminated).mean() <= 0.015 and (defective > contaminated).mean() >= 0.85, (
        contaminated
    )
    # 60%: the median lies among the defects, which widens the fit: fewer alarms, never more (and
    # fewer catches)
    normal, defective = rng.gumbel(20.0, 1.0, 40), rng.normal(40.0, 8.0, 60)
    majority = gumbel_threshold(np.concatenate([normal, defective]), 0.01, fallback=0.0).value
    assert (fresh > majority).mean() <= 0.01 and majority > contaminated


def test_threshold_stays_when_too_few_target_images_score():
    from patchshift.core.engine.threshold import (
        MIN_TRANSFER_IMAGES,
        gumbel_threshold,
        transferred_calibration,
    )

    source = np.array([10.0, 11.0, 12.0, 13.0, 14.0])
    few = np.array([30.0, 31.0, 32.0, 33.0, 34.0][: MIN_TRANSFER_IMAGES - 1])
    assert (
        gumbel_threshold(few, 0.01, fallback=15.0).value == 15.0
    )  # one defective image must not move it by its own score
    assert transferred_calibration(list(source), few) == list(
        source
    )  # and the gate's normal scores stay the source's
    enough = np.array([30.0, 31.0, 32.0, 33.0, 34.0, 35.0][:MIN_TRANSFER_IMAGES])
    assert gumbel_threshold(enough, 0.01, fallback=15.0).value > 34.0 and transferred_calibration(
        list(source), enough
    ) == list(enough)


@pytest.mark.parametrize("n", [1, 2, 7, 5000])
def test_sorted_quantiles_are_numpys_linear_quantiles_to_the_bit(n):
    values = np.random.default_rng(n).gamma(2.0, size=n)
    values[::3] = values[0]  # ties
    q = np.linspace(0, 1, 1001)
    assert np.array_equal(sorted_quantiles(values, q), np.quantile(values, q))


def test_oracle_threshold_flags_exactly_the_asked_share_of_good_images():
    good = np.arange(1.0, 201.0)  # 200 good scores 1..200
    assert oracle_threshold(good, 0.01) == 198.0  # flags 199 and 200: 2 of 200
    assert oracle_threshold(good, 0.0) == 200.0  # flags none
    assert oracle_threshold(good, 0.004) == 200.0  # 0.8 of an image: none
    assert oracle_threshold(good[:100], 0.01) == 99.0  # 1 of 100
    with pytest.raises(ConfigError, match="good images"):
        oracle_threshold([], 0.01)


def test_oracle_recall_by_hand():
    labels = [0] * 10 + [1] * 4
    scores = list(range(10)) + [9.5, 8.5, 3.0, 20.0]  # good 0..9; at 10% the oracle flags only 9
    threshold, recall = oracle_recall(labels, scores, 0.1)
    assert threshold == 8.0 and recall == 0.75  # 9.5, 8.5 and 20 lie above 8
    assert oracle_recall(labels, scores, 0.0) == (9.0, 0.5)
