"""The target memory: contamination filter, adapter, gate, versions with their own bank."""

import copy
import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import normal_image, plant_defect, texture_defect

from patchshift.core.adapt import AdaptConfig, adapt, get_adapter
from patchshift.core.adapt.gate import BatchRanking, judge, spearman
from patchshift.core.adapt.target_memory import filter_settings
from patchshift.core.common.errors import ConfigError, DatasetError
from patchshift.core.common.images import to_tensor
from patchshift.core.engine.contamination import (
    MIN_IMAGES,
    NORMAL_TAIL_SHARE,
    FilterSettings,
    filter_patches,
    mutual_scores,
    outlier_tail,
    reference_choice,
    robust_cut,
)
from patchshift.core.evaluation.corruptions import corrupt
from patchshift.core.evaluation.metrics import image_auroc


def test_references_are_other_images_without_repeats():
    chosen = reference_choice(7, 4, seed=0)
    assert chosen.shape == (7, 4)
    for image, row in enumerate(chosen.tolist()):
        assert image not in row and len(set(row)) == 4
    assert reference_choice(3, 10, seed=0).shape == (3, 2)  # never more than the others


def test_mutual_scores_by_hand():
    # 5 images of 2 one-dimensional patches: every image has a patch at 0; image 0's other patch
    # sits at 10, the others' at 1. Each patch is compared with all 4 other images (R = 4), and
    # the closest ceil(0.5 * 4) = 2 distances are averaged.
    feats = torch.tensor([[[0.0], [10.0]]] + [[[0.0], [1.0]]] * 4)
    scores = mutual_scores(feats, FilterSettings(references=4, closest_share=0.5))
    assert torch.allclose(scores[:, 0], torch.zeros(5))
    assert scores[0, 1].item() == pytest.approx(9.0)  # |10 - 1| to each other image
    assert torch.allclose(scores[1:, 1], torch.zeros(4))  # each finds a 1 in the other images 1-4


@pytest.mark.parametrize("block_elements", [1, 7, 48, 2**26])
def test_mutual_scores_are_the_same_in_any_block_size(block_elements):
    # 12 images of 16 patches against 5 references each: blocks of one distance, of a part of one
    # reference, of several whole references, and all at once give the same scores.
    feats = torch.randn(12, 16, 3, generator=torch.Generator().manual_seed(0))
    settings = FilterSettings(references=5, closest_share=0.4)
    refs = reference_choice(12, 5, 0)
    exact = torch.stack(
        [
            torch.cdist(feats[i], feats[refs[i]].reshape(-1, 3))
            .view(16, 5, 16)
            .amin(2)
            .topk(2, 1, largest=False)
            .values.mean(1)
            for i in range(12)
        ]
    )
    assert torch.allclose(
        mutual_scores(feats, settings, block_elements=block_elements), exact, atol=1e-5
    )


def test_per_position_scoring_compares_a_patch_only_with_its_own_place_by_hand():
    # Five aligned images on a 1 x 4 grid whose patch at position p has the value p; image 0 shows
    # at position 0 what belongs at position 3. Anywhere, it finds a 3 in every other image (score
    # 0); with window 0 it meets only their 0s (score 3); with window 2, their 2s (score 1).
    feats = torch.arange(4.0).view(1, 4, 1).repeat(5, 1, 1)
    feats[0, 0, 0] = 3.0
    anywhere = mutual_scores(feats, FilterSettings(references=4, closest_share=0.5))
    own_place = mutual_scores(
        feats, FilterSettings(references=4, closest_share=0.5, window=0), grid=(1, 4)
    )
    near = mutual_scores(
        feats, FilterSettings(references=4, closest_share=0.5, window=2), grid=(1, 4)
    )
    assert anywhere[0, 0] == 0.0 and own_place[0, 0] == 3.0 and near[0, 0] == 1.0
    assert torch.equal(own_place[1:], torch.zeros(4, 4))  # the others match in place
    with pytest.raises(ConfigError, match="patch grid"):
        mutual_scores(feats, FilterSettings(window=1))
    with pytest.raises(ConfigError, match="0 or more"):
        FilterSettings(window=-1)


@pytest.mark.parametrize(
    "block_elements", [1, 36, 288, 2**26]
)  # a row; 3 rows; 2 whole references; all at once
def test_per_position_scores_are_the_same_in_any_block_size(block_elements):
    feats = torch.randn(8, 12, 3, generator=torch.Generator().manual_seed(1))  # a 3 x 4 grid
    rows, cols = torch.meshgrid(torch.arange(3), torch.arange(4), indexing="ij")
    apart = torch.maximum(
        (rows.flatten()[:, None] - rows.flatten()[None]).abs(),
        (cols.flatten()[:, None] - cols.flatten()[None]).abs(),
    )
    refs = reference_choice(8, 4, 0)
    distances = torch.stack(
        [torch.cdist(feats[i], feats[refs[i]].reshape(-1, 3)).view(12, 4, 12) for i in range(8)]
    )
    exact = (
        distances.masked_fill((apart > 1)[None, :, None, :], float("inf"))
        .amin(3)
        .topk(2, 2, largest=False)
        .values.mean(2)
    )
    settings = FilterSettings(references=4, closest_share=0.5, window=1)
    assert torch.allclose(
        mutual_scores(feats, settings, block_elements=block_elements, grid=(3, 4)), exact, atol=1e-5
    )


def test_a_defect_shared_by_a_few_images_does_not_vouch_for_itself():
    # The same odd patch in 2 of 9 images: with R = 8 and the closest half (4) averaged, 3 of
    # the 4 distances are large, so it stays far above the normal patches.
    feats = torch.zeros(9, 4, 1)
    feats[:, :, 0] = torch.tensor([0.0, 1.0, 2.0, 3.0])
    feats[0, 3, 0] = feats[1, 3, 0] = 50.0
    scores = mutual_scores(feats, FilterSettings(references=8, closest_share=0.5))
    assert scores[0, 3] > 30 and scores[1, 3] > 30
    assert scores[2:].max() == 0


def test_outlier_tail_by_hand():
    # 0..8 and two far scores: median 5, MAD 3, so 3 robust deviations end at 5 + 3 * 1.4826 * 3 =
    # 18.3: 2 of the 11 scores lie beyond.
    assert outlier_tail(torch.tensor([0.0, 1, 2, 3, 4, 5, 6, 7, 8, 100, 1000])) == pytest.approx(
        2 / 11
    )
    assert outlier_tail(torch.tensor([0.0, 1, 2, 3, 4, 5, 6, 7, 8, 18, 18.5])) == pytest.approx(
        1 / 11
    )


def test_the_cut_waits_for_an_outlier_tail_by_hand():
    # 6 images of 4 one-dimensional patches at 100 j + o_i, o = 0, 1, 3, 6, 10, 15; each patch's
    # nearest patch in another image (closest_share 0.2 of R = 5: the nearest one) is its neighbour
    # offset: scores 1, 1, 2, 3, 4, 5 per image. Median 2, MAD 1: nothing beyond 2 + 3 * 1.4826, no
    # outlier tail, so every patch is kept; told to cut always, z 0.5 (2.74) drops images 3 to 5.
    offsets = torch.tensor([0.0, 1, 3, 6, 10, 15])
    feats = (torch.arange(4.0) * 100).view(1, 4, 1) + offsets.view(6, 1, 1)
    settings = FilterSettings(
        references=5, closest_share=0.2, cut_z=0.5, tail_share=NORMAL_TAIL_SHARE
    )
    calm = filter_patches(feats, settings)
    assert calm.scores[:, 0].tolist() == [1, 1, 2, 3, 4, 5]
    assert calm.tail == 0 and calm.cut == float("inf") and calm.keep.all()
    always = filter_patches(
        feats, FilterSettings(references=5, closest_share=0.2, cut_z=0.5, tail_share=0.0)
    )
    assert (
        always.cut == pytest.approx(2 + 0.5 * 1.4826)
        and always.keep[:3].all()
        and not always.keep[3:].any()
    )
    # A defect far from everything (image 2's last patch at 1000: the nearest patch of another
    # image, 315, is 685 away) is a tail of 1 in 24 scores, more than an outlier-free batch's share:
    # the cut applies and drops it.
    feats[2, 3, 0] = 1000.0
    tailed = filter_patches(feats, settings)
    assert (
        tailed.tail == pytest.approx(1 / 24) and tailed.cut < float("inf") and not tailed.keep[2, 3]
    )
    with pytest.raises(ConfigError, match="outlier tail"):
        FilterSettings(tail_share=1.0)


def test_robust_cut_ignores_the_tail():
    # 0, 1, ..., 8 and two far outliers: median 5, absolute deviations 5,4,3,2,1,0,1,2,3,95,995 ->
    # MAD 3
    scores = torch.tensor([0.0, 1, 2, 3, 4, 5, 6, 7, 8, 100, 1000])
    assert robust_cut(scores, 2.0) == pytest.approx(5 + 2 * 1.4826 * 3)


def test_too_few_images_is_a_clear_error(fitted):
    rng = np.random.default_rng(1)
    images = to_tensor([normal_image(rng) for _ in range(MIN_IMAGES - 1)])
    with pytest.raises(DatasetError, match=f"at least {MIN_IMAGES}"):
        adapt(fitted, images, AdaptConfig(method="target-memory"))


def test_unknown_method_names_the_choices():
    with pytest.raises(ConfigError, match="target-memory"):
        get_adapter("tgt-memory")


@pytest.fixture(scope="module")
def planted():
    """20 normal images, 6 of them (30%) with a dark blob, and the blob masks."""
    rng = np.random.default_rng(5)
    images, masks = [], []
    for i in range(20):
        image, mask = normal_image(rng), np.zeros((96, 96), bool)
        if i < 6:
            image, mask = plant_defect(image, rng)
        images.append(image)
        masks.append(mask)
    return to_tensor(images), torch.from_numpy(np.stack(masks)).float()


def test_filter_drops_planted_defects_and_keeps_normal_patches(fitted, planted):
    images, masks = planted
    feats = fitted.features(images)
    n, h, w, d = feats.shape
    kept = filter_patches(feats.reshape(n, h * w, d), FilterSettings()).keep
    coverage = F.adaptive_avg_pool2d(masks.unsqueeze(1), (h, w)).flatten(1)
    defect, normal = coverage >= 0.5, coverage == 0
    assert defect.sum() > 20
    assert kept[defect].float().mean() < 0.05
    assert kept[normal].float().mean() > 0.80
    # The target memory's own settings: the planted blobs are an outlier tail, so its stricter cut
    # applies.
    adapting = filter_patches(feats.reshape(n, h * w, d), filter_settings(AdaptConfig()))
    assert adapting.tail > AdaptConfig().filter_tail_share and adapting.cut < float("inf")
    assert adapting.keep[defect].float().mean() < 0.05


@pytest.fixture(scope="module")
def blurred():
    """24 normal and 6 texture-defect images under defocus blur 5: the source model ranks them
    poorly."""
    rng = np.random.default_rng(0)
    images = [normal_image(rng) for _ in range(24)] + [
        texture_defect(normal_image(rng), rng) for _ in range(6)
    ]
    return corrupt(to_tensor(images), "defocus_blur", 5, seed=1), np.array([0] * 24 + [1] * 6)


def test_target_memory_beats_none_and_adabn_under_a_shift(fitted, blurred):
    images, labels = blurred
    auroc = {}
    for method in ("none", "bn-stats", "target-memory"):
        adapted, _ = adapt(fitted, images, AdaptConfig(method=method))
        auroc[method] = image_auroc(labels, adapted.score(images).scores.numpy())
    assert auroc["none"] < 0.8, auroc
    assert (
        auroc["target-memory"] > auroc["none"] + 0.2
        and auroc["target-memory"] > auroc["bn-stats"] + 0.1
    ), auroc


@pytest.mark.parametrize(("side", "gain"), [(6, 1.8), (8, 2.0)])
def test_target_memory_beats_none_and_adabn_under_a_brightness_shift(fitted, side, gain):
    """The issue's case, a lighting change: the camera's gain raised (clipped, as a sensor
    saturates), 20% of the batch with small dark blobs."""
    rng = np.random.default_rng(5)
    images = [normal_image(rng) for _ in range(24)] + [
        plant_defect(normal_image(rng), rng, side=side)[0] for _ in range(6)
    ]
    labels = np.array([0] * 24 + [1] * 6)
    bright = ((to_tensor(images) * gain).clamp(0, 1) * 255).round() / 255
    auroc = {}
    for method in ("none", "bn-stats", "target-memory"):
        adapted, _ = adapt(fitted, bright, AdaptConfig(method=method))
        auroc[method] = image_auroc(labels, adapted.score(bright).scores.numpy())
    assert (
        auroc["target-memory"] > auroc["none"] + 0.05
        and auroc["target-memory"] > auroc["bn-stats"] + 0.05
    ), auroc


def test_target_memory_version_has_its_own_bank_and_leaves_the_source_alone(fitted, blurred):
    images, _ = blurred
    bank = fitted.bank.clone()
    adapted, report = adapt(
        fitted, images, AdaptConfig(method="target-memory", memory="union"), judge=True
    )
    assert torch.equal(fitted.bank, bank)
    assert adapted.bank.shape[0] > fitted.bank.shape[0] and torch.equal(
        adapted.bank[: len(bank)], bank
    )
    assert adapted.index is not fitted.index and adapted.bank_path is None
    assert (
        adapted.provenance.parent == fitted.version and adapted.provenance.method == "target-memory"
    )
    assert len(report.target_scores) == len(images) and np.isfinite(adapted.threshold)
    assert report.gate is not None and adapted.provenance.details["gate"] == report.gate.to_dict()
    # which target image each row came from: -1 for the source bank's, a target index for the rest
    assert (
        report.memory_image.shape == (len(adapted.bank),)
        and (report.memory_image[: len(bank)] == -1).all()
    )
    assert report.memory_image[len(bank) :].min() >= 0 and report.memory_image.max() < len(images)
    alone, _ = adapt(fitted, images, AdaptConfig(method="target-memory", memory="target"))
    assert alone.bank.shape[0] == report.details["memory_rows"]
    # the manifest says how the version was made: the filter's verdict and what it kept
    assert (
        adapted.provenance.details["filter"] == report.details["filter"]
        and "kept_patch_share" in adapted.provenance.details
    )
    assert (
        adapted.provenance.threshold_source == "target-kfold-transferred"
        and "threshold_note" not in report.details
    )


@pytest.mark.parametrize("method", ["target-memory", "bn-stats"])
def test_a_threshold_that_cannot_move_stays_the_parents_and_says_why(fitted, blurred, method):
    """false_alarm_rate 0 asks for no false alarm: no law fitted to the batch promises that."""
    images, _ = blurred
    strict = copy.copy(fitted)
    strict.config = dataclasses.replace(fitted.config, false_alarm_rate=0.0)
    adapted, report = adapt(strict, images, AdaptConfig(method=method))
    assert (
        adapted.threshold == fitted.threshold
        and adapted.provenance.threshold_source == "parent-kept"
    )
    assert "no false alarm" in report.details["threshold_note"]


def test_only_defective_target_images_give_a_result_not_a_crash(fitted):
    rng = np.random.default_rng(3)
    images = to_tensor([texture_defect(normal_image(rng), rng) for _ in range(8)])
    adapted, report = adapt(fitted, images, AdaptConfig(method="target-memory"), judge=True)
    assert np.isfinite(adapted.threshold) and report.gate is not None


def test_spearman_and_judge_by_hand():
    assert spearman(np.array([1, 2, 3]), np.array([10, 20, 30])) == pytest.approx(1.0)
    assert spearman(np.array([1, 2, 3]), np.array([3, 2, 1])) == pytest.approx(-1.0)
    reference = np.array([0.0, 1.0, 2.0, 3.0])
    verdict = judge(
        reference, before=np.array([3.0, 2.0, 1.0, 0.0]), after=np.array([0.0, 1.0, 3.0, 2.0])
    )
    assert (
        verdict.better
        and verdict.agreement_before == pytest.approx(-1.0)
        and verdict.agreement_after == pytest.approx(0.8)
    )
    assert not judge(reference, before=reference, after=reference).better  # a tie keeps the parent


def blurred_batch(
    n_normal: int, n_defective: int, dark_blobs: bool = False, seed: int = 0
) -> tuple[torch.Tensor, np.ndarray]:
    """Normal and texture-defect (or dark-blob) images under defocus blur 5, as the `blurred`
    fixture, in other numbers."""
    rng = np.random.default_rng(seed)
    defect = (
        (lambda image: plant_defect(image, rng)[0])
        if dark_blobs
        else (lambda image: texture_defect(image, rng))
    )
    images = [normal_image(rng) for _ in range(n_normal)] + [
        defect(normal_image(rng)) for _ in range(n_defective)
    ]
    return corrupt(to_tensor(images), "defocus_blur", 5, seed=1 + seed), np.array(
        [0] * n_normal + [1] * n_defective
    )


def test_gate_passes_a_version_that_ranks_the_shifted_images_better(fitted):
    """120 images, a fifth with dark blobs: the new threshold is supported (1% asked: the law's own
    spread needs about 90 images) and catches the blobs the batch finds suspect."""
    images, labels = blurred_batch(96, 24, dark_blobs=True)
    adapted, report = adapt(fitted, images, AdaptConfig(method="target-memory"), judge=True)
    fresh, fresh_labels = blurred_batch(
        48, 48, dark_blobs=True, seed=5
    )  # the line after adaptation
    new, old = (
        adapted.score(fresh).scores.numpy() > adapted.threshold,
        fitted.score(fresh).scores.numpy() > fitted.threshold,
    )
    assert (
        old[fresh_labels == 0].mean() > 0.9
    )  # the parent flags the shifted good parts: the line stops
    assert new[fresh_labels == 0].mean() <= 0.02 and new[fresh_labels == 1].mean() > 0.9
    assert (
        report.gate.ranking_tail > NORMAL_TAIL_SHARE
    )  # the batch's ranking decided, not the trust in an unranked batch
    assert report.threshold.supported and report.threshold.expected_recall > 0.9, (
        report.threshold.note
    )
    assert report.gate.better and report.gate.agreement_after > report.gate.agreement_before


def test_gate_keeps_the_parent_when_the_new_threshold_passes_what_the_batch_finds_suspect(fitted):
    """120 blurred images, a fifth with a finer texture: the new version ranks them better and its
    threshold is supported, but it sits above every image with a patch no other image vouches for.
    It would pass the defects (fresh images of the same condition: none caught), so the parent
    stays."""
    images, _ = blurred_batch(96, 24)
    adapted, report = adapt(fitted, images, AdaptConfig(method="target-memory"), judge=True)
    assert (
        report.threshold.supported
        and report.threshold.suspects >= 5
        and report.threshold.expected_recall < 0.05
    )
    assert not report.gate.better and "most defects would pass" in report.gate.reason
    assert (
        report.gate.agreement_after > report.gate.agreement_before
    )  # the ranking alone would have let it live
    assert report.details["threshold_estimate"]["recall_collapses"] is True
    fresh, labels = blurred_batch(48, 48, seed=5)
    assert (
        adapted.score(fresh).scores.numpy()[labels == 1] > adapted.threshold
    ).mean() < 0.05  # the refusal was right


def test_gate_keeps_the_parent_when_the_batch_cannot_support_the_new_threshold(fitted):
    """12 images rank better after adaptation, but cannot tell where 1% of normal parts lie: not
    activated, and why."""
    images, _ = blurred_batch(10, 2)
    adapted, report = adapt(fitted, images, AdaptConfig(method="target-memory"), judge=True)
    assert (
        report.gate.agreement_after > report.gate.agreement_before
    )  # the ranking alone would have let it live
    assert not report.threshold.supported and report.threshold.false_alarm_interval[1] > 0.04
    assert (
        not report.gate.better
        and "not trustworthy" in report.gate.reason
        and "cannot support" in report.gate.reason
    )
    estimate = report.details["threshold_estimate"]  # what the job result and the manifest carry
    assert (
        estimate["supported"] is False
        and estimate["expected_false_alarm_rate"] == report.threshold.expected_false_alarm_rate
    )


def test_gate_blocks_a_version_that_changes_nothing(fitted, blurred):
    images, _ = blurred
    _, report = adapt(fitted, images, AdaptConfig(method="none"), judge=True)
    assert not report.gate.better and "stays active" in report.gate.reason


def test_fit_with_contamination_auto_keeps_planted_defects_out_of_the_bank(tiny_config):
    from patchshift.core.engine.patchcore import fit

    rng = np.random.default_rng(8)
    normal = [normal_image(rng) for _ in range(20)]
    dirty = [plant_defect(normal_image(rng), rng)[0] for _ in range(4)]  # 17% of the training set
    held_out = to_tensor([plant_defect(normal_image(rng), rng)[0] for _ in range(4)])
    good = to_tensor([normal_image(rng) for _ in range(4)])
    sources = [png(image) for image in normal + dirty]
    plain = fit(sources, tiny_config.replace(calibration="kfold"), device="cpu")
    filtered = fit(
        sources, tiny_config.replace(calibration="kfold", contamination="auto"), device="cpu"
    )
    assert filtered.provenance.details["images_left_out_of_calibration"] >= 4
    assert filtered.score(held_out).scores.min() > 1.5 * plain.score(held_out).scores.max()
    assert (filtered.score(held_out).scores > filtered.threshold).all()  # the defects are flagged
    assert (filtered.score(good).scores <= filtered.threshold).all()


def test_fit_contamination_cut_sets_how_many_patches_the_bank_may_draw_from(tiny_config):
    from patchshift.core.engine.patchcore import fit

    rng = np.random.default_rng(9)
    sources = [png(normal_image(rng)) for _ in range(8)]
    strict = fit(
        sources, tiny_config.replace(contamination="auto", contamination_cut_z=0.0), device="cpu"
    )
    lenient = fit(
        sources, tiny_config.replace(contamination="auto", contamination_cut_z=100.0), device="cpu"
    )
    assert strict.provenance.details["kept_patch_share"] <= 0.5 + 1e-6  # z = 0 cuts at the median
    assert lenient.provenance.details["kept_patch_share"] == 1.0


def png(image: np.ndarray) -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def test_gate_with_too_few_images_keeps_the_parent_and_says_why(fitted, blurred):
    images, _ = blurred
    _, report = adapt(fitted, images[: MIN_IMAGES - 1], AdaptConfig(method="bn-stats"), judge=True)
    assert (
        not report.gate.better
        and "too few" in report.gate.reason
        and report.gate.agreement_after is None
    )


def test_an_unimportable_adapter_plugin_is_named():
    from patchshift.core.adapt.methods import load_plugins

    with pytest.raises(ConfigError, match="no_such_plugin"):
        load_plugins("no_such_plugin")


def test_spearman_averages_ties_and_the_gate_refuses_unusable_scores():
    assert spearman(np.array([1.0, 1.0, 2.0]), np.array([1.0, 2.0, 3.0])) == pytest.approx(
        np.sqrt(3) / 2
    )
    reference = np.array([0.0, 1.0, 2.0, 3.0])
    before = np.array([3.0, 2.0, 1.0, 0.0])  # agreement -1: anything would look better
    for after in (None, np.full(4, 7.0), np.array([0.0, 1.0, np.nan, 3.0]), np.array([0.0, 1.0])):
        verdict = judge(reference, before, after)
        assert not verdict.better and "no usable scores" in verdict.reason


def test_suspect_images_leave_the_calibration_only_when_most_remain():
    from patchshift.core.engine.patchcore import suspect_free_images

    mutual = torch.zeros(10, 4)
    mutual[:, 0] = torch.tensor(
        [1.0, 1.1, 0.9, 1.0, 1.2, 0.8, 1.0, 1.1, 9.0, 1.0]
    )  # image 8 has an odd patch
    assert suspect_free_images(mutual).tolist() == [True] * 8 + [False, True]
    mutual[:6, 0] = 50.0  # most images odd: keep them all rather than calibrate on a few
    assert suspect_free_images(mutual).all()


def test_the_threshold_is_moved_from_a_subset_scored_exactly_as_in_the_full_run(fitted, blurred):
    images, _ = blurred  # 30 images
    full, full_report = adapt(
        fitted, images, AdaptConfig(method="target-memory", threshold_images=0), judge=True
    )
    part, part_report = adapt(
        fitted, images, AdaptConfig(method="target-memory", threshold_images=12), judge=True
    )
    index = part_report.target_index
    assert (
        full_report.target_index.tolist() == list(range(30))
        and len(index) == 12
        and len(set(index.tolist())) == 12
    )
    np.testing.assert_allclose(
        part_report.target_scores, full_report.target_scores[index], rtol=1e-5
    )
    assert torch.equal(
        part.bank, full.bank
    )  # the memory does not depend on how many images set the threshold
    assert part_report.gate.agreement_after is not None and np.isfinite(part.threshold)


def test_judge_keeps_the_parent_when_the_target_scores_like_its_normal_images_by_hand():
    reference = np.arange(8.0)
    after = np.arange(8.0)  # agrees perfectly: alone it would go live
    calibration = np.arange(20.0)  # 5th percentile 0.95, 95th 18.05
    unshifted = np.array([4.0, 5.0, 5.0, 6.0, 7.0, 8.0, 30.0, 40.0])  # lower quartile 5.0
    verdict = judge(reference, unshifted, after, calibration=calibration)
    assert (
        not verdict.better
        and "no shift to adapt to" in verdict.reason
        and "25th percentile" in verdict.reason
    )
    assert (
        verdict.shift_percentile == 25.0
    )  # 5 of the 20 calibration scores are below the lower quartile, 5.0
    assert verdict.agreement_after == pytest.approx(1.0)  # still reported
    mild = np.array(
        [17.0, 17.5, 18.0, 18.0, 18.0, 30.0, 40.0, 50.0]
    )  # lower quartile 17.875: 18 of 20 below
    assert judge(reference, mild, after, calibration=calibration).shift_percentile == 90.0
    assert not judge(
        reference, mild, after, calibration=calibration
    ).better  # test parts a little above training's
    shifted = unshifted + 20.0  # lower quartile 25.0: above the bulk
    assert judge(reference, shifted, after, calibration=calibration).better
    assert judge(
        reference, unshifted, after
    ).better  # no calibration scores: no opinion on the shift
    assert judge(
        reference, unshifted - 10.0, after, calibration=calibration
    ).better  # below the bulk: shifted too


def test_percentiles_read_as_ordinals():
    from patchshift.core.adapt.gate import ordinal

    assert [ordinal(p) for p in (1, 2, 3, 11, 12, 13, 21, 22, 83, 95, 99.8, 99.96, 100)] == [
        "1st",
        "2nd",
        "3rd",
        "11th",
        "12th",
        "13th",
        "21st",
        "22nd",
        "83rd",
        "95th",
        "99.8th",
        "99.9th",
        "100th",
    ]


def test_batch_ranking_by_hand():
    mutual = torch.ones(4, 1000)
    mutual[1, 0], mutual[2, :3] = 50.0, 40.0  # 4 of 4000 scores far out: a 0.1% tail
    ranking = BatchRanking.of(mutual)
    assert ranking.scores.tolist() == [1.0, 50.0, 40.0, 1.0] and ranking.tail == pytest.approx(
        0.001
    )
    assert not ranking.informative  # below a normal distribution's 0.135%
    mutual[3, :10] = 30.0  # 14 of 4000: 0.35%
    assert (
        BatchRanking.of(mutual).informative and BatchRanking(np.zeros(3)).informative
    )  # unknown tail: judged as before
    assert BatchRanking.of(mutual).subset(np.array([3, 1])).scores.tolist() == [30.0, 50.0]


def test_judge_without_an_outlier_tail_by_hand():
    scores = np.arange(8.0)
    before, after = (
        scores,
        scores[::-1].copy(),
    )  # the parent agrees with the batch's ranking, the new version does not
    calibration = np.arange(20.0)
    shifted = before + 30.0  # lower quartile above every calibration score: 100th percentile
    ranked = BatchRanking(scores, tail=0.01)
    assert not judge(
        ranked, shifted, after, calibration=calibration, trust_unranked=True
    ).better  # the ranking judges
    unranked = BatchRanking(scores, tail=0.0005)
    trusted = judge(unranked, shifted, after, calibration=calibration, trust_unranked=True)
    assert (
        trusted.better and "cannot tell" in trusted.reason and "100th percentile" in trusted.reason
    )
    assert trusted.agreement_after == pytest.approx(-1.0)  # still reported
    untrusted = judge(unranked, shifted, after, calibration=calibration)
    assert (
        not untrusted.better
        and "cannot tell" in untrusted.reason
        and "stays active" in untrusted.reason
    )
    assert not judge(
        unranked, shifted, after, trust_unranked=True
    ).better  # no calibration scores: the shift is not known
    unshifted = np.array(
        [4.0, 5.0, 5.0, 6.0, 7.0, 8.0, 30.0, 40.0]
    )  # 25th percentile: no shift comes first
    assert (
        "no shift"
        in judge(unranked, unshifted, after, calibration=calibration, trust_unranked=True).reason
    )
    below = judge(
        unranked, before - 30.0, after, calibration=calibration, trust_unranked=True
    )  # scores below its normal ones
    assert below.shift_percentile == 0.0 and not below.better and "stays active" in below.reason


def test_the_gate_takes_the_adapters_trust_in_a_batch_without_a_tail(fitted, blurred, monkeypatch):
    import patchshift.core.adapt as adapt_module

    images, _ = blurred
    seen = {}

    def spy(*args, **kwargs):
        seen["trust"] = kwargs["trust_unranked"]
        return judge(*args, **kwargs)

    monkeypatch.setattr(adapt_module, "judge_versions", spy)
    adapt(fitted, images, AdaptConfig(method="target-memory"), judge=True)
    assert seen["trust"] is True
    adapt(fitted, images, AdaptConfig(method="bn-stats"), judge=True)
    assert seen["trust"] is False
    assert (
        get_adapter("target-memory").trusted_when_unranked
        and not get_adapter("roda").trusted_when_unranked
    )


def test_the_gate_ranks_the_batch_with_the_users_filter_settings(fitted, blurred, monkeypatch):
    """With a BatchNorm step first the gate ranks the batch itself: with the settings the user
    chose."""
    import patchshift.core.adapt as adapt_module

    images, _ = blurred
    seen, original = [], adapt_module.reference_ranking

    def spy(feats, settings):
        seen.append(settings)
        return original(feats, settings)

    monkeypatch.setattr(adapt_module, "reference_ranking", spy)
    cfg = AdaptConfig(
        method="target-memory", memory_bn="stats", filter_references=4, filter_closest_share=0.25
    )
    adapt(fitted, images, cfg, judge=True)
    assert [(s.references, s.closest_share) for s in seen] == [(4, 0.25)]


def test_the_gate_takes_a_plain_ranking_from_a_plugin(fitted, blurred):
    from patchshift.core.adapt import gate
    from patchshift.core.engine.contamination import FilterSettings

    images, _ = blurred
    index = np.arange(0, len(images), 2)
    plain = np.arange(float(len(images)))  # a plugin's (N,) ranking without a tail
    verdict = gate(fitted, images, plain[index], FilterSettings(), reference=plain, index=index)
    assert verdict.ranking_tail is None and verdict.agreement_after == pytest.approx(1.0)


def test_gate_keeps_the_parent_on_images_of_its_own_condition(fitted):
    rng = np.random.default_rng(21)
    images = to_tensor(
        [normal_image(rng) for _ in range(12)]
        + [plant_defect(normal_image(rng), rng)[0] for _ in range(4)]
    )
    _, report = adapt(fitted, images, AdaptConfig(method="target-memory"), judge=True)
    assert not report.gate.better and "no shift to adapt to" in report.gate.reason
