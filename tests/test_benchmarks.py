"""The benchmark scripts run end to end on generated data (their numbers come from shared/data)."""

import json

import numpy as np
import pytest
import torch

from benchmarks import shift
from patchshift.core.evaluation.data import train_images


def test_stratified_split_keeps_both_classes():
    labels = np.array([0] * 50 + [1] * 30)
    adapt, evaluate = shift.stratified_split(labels, 0.2, seed=0)
    assert len(adapt) == 16 and labels[adapt].sum() == 6
    assert not set(adapt) & set(evaluate) and len(adapt) + len(evaluate) == 80


def test_shift_benchmark_smoke(dataset, tmp_path, capsys, monkeypatch):
    written = []
    write = shift.atomic_write_bytes
    monkeypatch.setattr(
        shift,
        "atomic_write_bytes",
        lambda path, data: (written.append(json.loads(data)), write(path, data)),
    )
    shift.main(
        [
            "--data-root",
            str(dataset.parent),
            "--datasets",
            dataset.name,
            "--image-size",
            "64",
            "--corruptions",
            "contrast",
            "--severities",
            "5",
            "--methods",
            "none",
            "roda",
            "uda-global",
            "refit-target",
            "paired-oracle",
            "--epochs",
            "1",
            "--uda-epochs",
            "1",
            "--sweep-condition",
            "brightness",
            "3",
            "--sweep-method",
            "roda",
            "--size-sweep",
            "1",
            "--model-cache",
            str(tmp_path / "models"),
            "--out-dir",
            str(tmp_path),
        ]
    )
    result = json.loads((tmp_path / f"shift-{dataset.name}.json").read_text())
    assert {r["method"] for r in result["rows"]} == {
        "none",
        "roda",
        "uda-global",
        "refit-target",
        "paired-oracle",
    }
    uda = next(r for r in result["rows"] if r["method"] == "uda-global")
    assert (
        uda["pixel_auroc"] is None and "at least 16 target images" in uda["refused"]
    )  # 2 adaptation images: too few to cluster
    assert 0 <= result["assignment_share"]["rot90"] <= 1
    assert [r["defective_share"] for r in result["defect_sweep"]] == [0.0, 0.1, 0.3, 0.5]
    assert {r["condition"] for r in result["defect_sweep"]} == {"brightness 3"}
    assert [r["n_images"] for r in result["size_sweep"]] == [1, result["n_adapt"]]
    assert (
        all(0 <= r["aupro"] <= 1 for r in result["rows"] if r["method"] != "uda-global")
        and 0 <= result["upper_bound"]["aupro"] <= 1
    )
    out = capsys.readouterr().out
    assert "gap closed" in out and "AUPRO (%" in out
    # The tables again from the stored file, merged with a second part (a row already there is kept
    # once)
    part = dict(
        result, rows=[dict(r, method="later") for r in result["rows"] if r["method"] == "none"]
    )
    (tmp_path / "part.json").write_text(json.dumps(part))
    shift.main(
        [
            "--report",
            str(tmp_path / f"shift-{dataset.name}.json"),
            str(tmp_path / "part.json"),
            str(tmp_path / "part.json"),
        ]
    )
    out = capsys.readouterr().out
    assert (
        out.count("| later |") == 5 and "AUPRO (%" in out
    )  # image, pixel, AUPRO, verdict and gate tables
    assert "| later | 1 |" in out  # the verdicts count its one condition once, not once per file
    # A long run keeps what it finished: the file is rewritten after every row, marked incomplete
    # until the end.
    assert [len(w["rows"]) for w in written[:5]] == [1, 2, 3, 4, 5] and not written[0]["complete"]
    assert written[-1]["complete"] and written[-1] == result


def test_ot_size_benchmark_smoke(dataset, tmp_path, capsys):
    from benchmarks import ot_size

    ot_size.main(
        [
            "--data-root",
            str(dataset.parent),
            "--dataset",
            dataset.name,
            "--image-size",
            "64",
            "--bank-size",
            "64",
            "--corruptions",
            "contrast",
            "--model-cache",
            str(tmp_path / "models"),
            "--out-dir",
            str(tmp_path),
        ]
    )
    result = json.loads((tmp_path / f"ot-size-{dataset.name}.json").read_text())
    assert [r["ot problem"] for r in result["rows"]] == [
        "no adaptation",
        "2048 x 4096 (default)",
        "2048 x 4096, other seed",
        "full",
    ]
    assert (
        result["bank_rows"] <= 64 and result["patches_per_step"] == 8 * 4 * 64
    )  # 8 images x 4 views x (64/8)^2 patches
    assert "OT problem" in capsys.readouterr().out


def test_paired_oracle_pulls_shifted_features_onto_the_clean_ones(fitted, dataset):
    """The reference trains BatchNorm towards the clean images' features: their distance falls."""
    import torch

    from benchmarks.references import paired_oracle

    clean = shift.load_images(train_images(dataset)[:16], fitted.config.image_size)
    shifted = shift.corrupt_uint8(clean, "defocus_blur", 5, seed=0)

    def distance(model) -> float:
        return float(
            (model.features(shift.as_float(shifted)) - fitted.features(shift.as_float(clean)))
            .norm(dim=-1)
            .mean()
        )

    oracle = paired_oracle(fitted, shifted, clean, epochs=3)
    assert distance(oracle) < 0.8 * distance(fitted)
    assert torch.equal(oracle.bank, fitted.bank) and oracle.provenance.method == "paired-oracle"


def test_refit_reference_fits_a_bank_on_corrupted_normal_images(fitted, dataset):
    from benchmarks.references import refit_on_condition

    refit = refit_on_condition(fitted, dataset, "gaussian_noise", 5, seed=0)
    clean = shift.load_images(train_images(dataset), fitted.config.image_size)
    noisy = shift.as_float(shift.corrupt_uint8(clean, "gaussian_noise", 5, seed=0))
    # noisy normal images are close to the refitted bank and far from the clean one
    assert refit.score(noisy).scores.mean() < 0.7 * fitted.score(noisy).scores.mean()


def test_alignment_benchmark_smoke(dataset, tmp_path, capsys):
    from benchmarks import alignment

    alignment.main(
        [
            "--data-root",
            str(dataset.parent),
            "--dataset",
            dataset.name,
            "--image-size",
            "64",
            "--corruptions",
            "contrast",
            "--severities",
            "5",
            "--methods",
            "none",
            "--model-cache",
            str(tmp_path / "models"),
            "--out-dir",
            str(tmp_path),
        ]
    )
    result = json.loads((tmp_path / f"alignment-{dataset.name}.json").read_text())
    (row,) = result["rows"]
    # contrast 5 shrinks the features: without adaptation they are smaller and farther from the bank
    # than clean
    assert row["scale"] < 1 and row["distance"] > 1 and 0 <= row["twin_agreement"] <= 1
    assert "clean twin" in capsys.readouterr().out


def test_twin_agreement_is_one_without_a_shift_and_falls_with_one(fitted, dataset):
    """Clean images agree with themselves (the column's reference); a strong shift sends patches
    elsewhere."""
    from benchmarks.alignment import patch_search, twin_agreement

    # the measure itself, by hand: patch 0's nearest row (2) is among its twin's rows, patch 1's (7)
    # is not
    assert twin_agreement(torch.tensor([[1, 2, 3], [4, 5, 6]]), torch.tensor([[2], [7]])) == 0.5
    clean = shift.load_images(train_images(dataset)[:4], fitted.config.image_size)
    _, _, twins = patch_search(fitted, clean, 10)
    _, _, nearest = patch_search(fitted, clean, 1)
    assert twin_agreement(twins, nearest) == 1.0
    # it is not 1 by construction: patches paired with other images' twins mostly disagree
    assert twin_agreement(twins.roll(len(twins) // 4, dims=0), nearest) < 0.9
    _, _, shifted = patch_search(fitted, shift.corrupt_uint8(clean, "contrast", 5, seed=0), 1)
    assert twin_agreement(twins, shifted) < 0.9


def test_design_runs_parse_variants_and_run(tmp_path, capsys):
    from conftest import write_dataset

    from benchmarks import design_runs

    dataset = write_dataset(tmp_path / "data" / "widget", n_train=12, n_good=20, n_defect=20)

    assert design_runs.parse_variant("long:epochs=3,lr=0.001,augment=none") == (
        "long",
        {"epochs": 3, "lr": 0.001, "augment": "none"},
    )
    assert design_runs.parse_variant("roda") == ("roda", {})
    with pytest.raises(SystemExit):  # argparse's one-line usage error, not a traceback
        design_runs.main(["--variants", "typo:epoch=3"])
    assert "unknown AdaptConfig field(s) epoch" in capsys.readouterr().err
    design_runs.main(
        [
            "--data-root",
            str(dataset.parent),
            "--dataset",
            dataset.name,
            "--image-size",
            "64",
            "--corruptions",
            "brightness",
            "--variants",
            "none:method=none",
            "roda:epochs=1",
            "paired-oracle",
            "--model-cache",
            str(tmp_path / "models"),
            "--out-dir",
            str(tmp_path),
        ]
    )
    result = json.loads((tmp_path / f"design-{dataset.name}.json").read_text())
    assert [r["variant"] for r in result["rows"]] == ["none", "none", "roda", "paired-oracle"]
    assert result["rows"][0]["condition"] == "clean"
    assert "| mean | roda |" in capsys.readouterr().out


def test_sweep_condition_is_checked_before_any_work(capsys):
    with pytest.raises(SystemExit):
        shift.main(["--sweep-condition", "fog", "3"])
    assert "--sweep-condition takes one of" in capsys.readouterr().err


def test_reduction_study_measures_what_fit_builds(fitted, dataset):
    """The study's 'average' variant applied to raw features equals the model's own features, and
    every variant runs end to end on generated images."""
    from benchmarks import feature_reductions as reduction
    from patchshift.core.common.images import load_batch
    from patchshift.core.evaluation.data import train_images

    config = fitted.config.replace(feature_dim=128)
    backbone, raw = reduction.raw_extractor(config, torch.device("cpu"))
    from patchshift.core.engine.patchcore import build_extractor

    _, reduced = build_extractor(config, torch.device("cpu"))
    batch, _ = load_batch(train_images(dataset)[:2], config.image_size)
    with torch.inference_mode():
        raw_feats = raw(batch)
        expected = reduced(batch)
    assert raw_feats.shape[-1] == sum(backbone.stage_channels) == 152
    matrix = reduction.projection(
        "average-128", raw_feats.reshape(-1, 152), backbone.stage_channels, 0
    )
    torch.testing.assert_close(raw_feats @ matrix, expected, rtol=1e-4, atol=1e-4)
    rows = reduction.run_dataset(
        "widget",
        dataset,
        ["average-128", "none", "balanced", "pca-16"],
        "cpu",
        {"image_size": config.image_size, "coreset_ratio": 0.25},
    )
    assert [r["dim"] for r in rows] == [128, 152, 152, 16]
    assert all(0.0 <= r["image_auroc"] <= 1.0 and r["bank_mib"] > 0 for r in rows)


def test_contamination_benchmark_smoke(dataset, tmp_path, capsys, monkeypatch):
    from benchmarks import training_contamination as contamination
    from patchshift.core.common import fileio

    written = []
    write = fileio.atomic_write_bytes
    monkeypatch.setattr(
        fileio,
        "atomic_write_bytes",
        lambda path, data: (written.append(json.loads(data)), write(path, data)),
    )
    contamination.main(
        [
            "--data-root",
            str(dataset.parent),
            "--datasets",
            dataset.name,
            "--image-size",
            "64",
            "--shares",
            "0.125",
            "--device",
            "cpu",
            "--set",
            'neighbourhood_border="inside"',  # tiny images: conftest.tiny_config
            "--out",
            str(tmp_path / "c.json"),
        ]
    )
    rows = json.loads((tmp_path / "c.json").read_text())["rows"]
    assert [(r["contamination"], r["n_defective"]) for r in rows] == [("off", 3), ("auto", 3)]
    assert rows[1]["details"]["images_left_out_of_calibration"] >= 1
    assert "filter" in capsys.readouterr().out
    assert [(len(w["rows"]), w["complete"]) for w in written] == [(1, False), (2, False), (2, True)]


def test_contaminated_split_moves_defects_out_of_evaluation(dataset):
    from benchmarks.training_contamination import contaminated_split
    from patchshift.core.evaluation.data import labelled_samples, train_images

    train, samples = train_images(dataset), labelled_samples(dataset)
    sources, evaluation = contaminated_split(train, samples, 0.25, seed=0)
    moved = set(sources) - set(train)
    assert len(sources) == len(train) and len(moved) == 6
    assert all(s.label == 1 for s in samples if s.path in moved)
    assert not moved & {s.path for s in evaluation} and len(evaluation) == len(samples) - 6


def test_gate_table_counts_by_hand():
    rows = [
        {
            "corruption": "c",
            "severity": 5,
            "method": "none",
            "image_auroc": 0.60,
            "gate_better": False,
        },
        {
            "corruption": "c",
            "severity": 5,
            "method": "a",
            "image_auroc": 0.50,
            "gate_better": True,
        },  # worse, let through
        {
            "corruption": "b",
            "severity": 5,
            "method": "none",
            "image_auroc": 0.60,
            "gate_better": False,
        },
        {
            "corruption": "b",
            "severity": 5,
            "method": "a",
            "image_auroc": 0.70,
            "gate_better": False,
        },  # better, blocked
        {
            "corruption": "d",
            "severity": 5,
            "method": "none",
            "image_auroc": 0.60,
            "gate_better": False,
        },
        {
            "corruption": "d",
            "severity": 5,
            "method": "a",
            "image_auroc": 0.605,
            "gate_better": True,
        },  # a tie
    ]
    table = shift.gate_table({"rows": rows})
    assert "| a | 3 | 2 | 1 | 1 |" in table


def test_summary_table_leaves_out_a_method_run_on_some_conditions_only():
    rows = [
        {
            "corruption": c,
            "severity": 5,
            "method": m,
            "image_auroc": v,
            "adapt_s": 1.0,
            "adapt_peak_gib": 0.1,
        }
        for c, m, v in (
            ("a", "none", 0.5),
            ("b", "none", 0.6),
            ("a", "tm", 0.8),
            ("b", "tm", 0.9),
            ("a", "ref", 0.95),
        )
    ]
    table = shift.summary_table({"rows": rows, "upper_bound": {"image_auroc": 1.0}}, "image_auroc")
    assert (
        "| tm | 80.0 | 90.0 | 85.0 | 67 |" in table
        # (85 - 55) / (100 - 55) and "| ref |" not in table and "not on every condition: ref" in
        # table
    )


def test_verdict_table_by_hand():
    rows = [
        {"corruption": "c", "severity": 5, "method": "a", "false_alarm_rate": 0.02, "recall": 0.5},
        {"corruption": "b", "severity": 5, "method": "a", "false_alarm_rate": 0.10, "recall": 0.7},
        {
            "corruption": "b",
            "severity": 5,
            "method": "uda",
            "false_alarm_rate": None,
            "recall": None,
        },
    ]
    table = shift.verdict_table({"rows": rows})
    assert "| a | 2 | 6.0 | 10.0 | 60.0 |" in table and "uda" not in table


def test_threshold_rules_by_hand():
    from benchmarks import threshold_rules

    result = {
        "source_calibration_scores": [10, 11, 12, 13, 14],
        "eval_labels": [0, 0, 1, 1],
        "rows": [
            {
                "corruption": "c",
                "severity": 5,
                "method": "m",
                "target_scores": [20, 21, 22, 30, 40],
                "scores": [24, 26, 30, 27],
            }
        ],
    }
    rows = {r["rule"]: r for r in threshold_rules.rule_rows(result, 15.0)}
    # Gumbel: 10th percentile 20.4, median 22, scale 1.6 / 1.200545, location 20.4 + 0.834032 *
    # scale, + 4.600149 * scale
    assert rows["Gumbel law"]["threshold"] == pytest.approx(27.642, abs=1e-3) and (
        rows["Gumbel law"]["fa"],
        rows["Gumbel law"]["recall"],
    ) == (0, 50)
    assert rows["quartile shift"]["threshold"] == pytest.approx(25.0) and (
        rows["quartile shift"]["fa"],
        rows["quartile shift"]["recall"],
    ) == (50, 100)
    assert rows["robust z-score"]["threshold"] == pytest.approx(28.0) and (
        rows["robust z-score"]["fa"],
        rows["robust z-score"]["recall"],
    ) == (0, 50)
    assert rows["source kept"]["threshold"] == 15.0 and rows["source kept"]["fa"] == 100
    # source shape: the source's 10th percentile 10.4 and median 12 land on 20.8 and 24, a stretch
    # of 3.2 / 1.6: 24 + (15 - 12) * 2
    result["rows"][0].update(target_scores=[20, 22, 24, 30, 40], scores=[24, 31, 29, 35])
    shape = next(r for r in threshold_rules.rule_rows(result, 15.0) if r["rule"] == "source shape")
    assert shape["threshold"] == pytest.approx(30.0) and (shape["fa"], shape["recall"]) == (50, 50)


def test_threshold_rules_pool_the_files_of_one_product(tmp_path, capsys):
    from benchmarks import threshold_rules

    result = {
        "source_calibration_scores": [10, 11, 12, 13, 14],
        "source_threshold": 15.0,
        "eval_labels": [0, 0, 1, 1],
        "rows": [
            {
                "corruption": "c",
                "severity": 5,
                "method": "m",
                "target_scores": [20, 21, 22, 30, 40],
                "scores": [24, 26, 30, 27],
            }
        ],
    }
    paths = [tmp_path / "a.json", tmp_path / "b.json"]
    for path in paths:
        path.write_text(json.dumps(result))
    threshold_rules.main(
        [str(p) for p in paths] + ["--pool", "--gumbel-pairs", "0.1,0.5", "0.05,0.25"]
    )
    out = capsys.readouterr().out
    assert "2 files pooled" in out and "| m | Gumbel law | 2 | 0.0 | 0.0 | 50.0 |" in out
    assert (
        "| m | Gumbel 0.1-0.5 | 2 | 0.0 | 0.0 | 50.0 |" in out and "| m | Gumbel 0.05-0.25 |" in out
    )  # the default pair, and another
    with pytest.raises(SystemExit):
        threshold_rules.main([str(paths[0]), "--gumbel-pairs", "0.5,0.1"])


def test_peer_reads_how_far_a_capped_coreset_got_and_shows_it():
    from benchmarks import peer

    stderr = (
        "Selecting Coreset Indices.:   0%|          | 0/10000 [00:00<?, ?it/s]\r"
        "Selecting Coreset Indices.:  12%|#2        | 1234/10000 [01:00<07:06, 20.5it/s]\r"
    )
    assert peer.coreset_progress(stderr) == (1235, 10001)  # the first row is chosen before the loop
    assert peer.coreset_progress("no progress printed") is None
    row = {
        "dataset": "d",
        "input": "512",
        "implementation": "anomalib",
        "bank_rows": 10000,
        "features_s": 100.0,
        "capped_after_s": 600.0,
        "coreset_rows_chosen": "1234 of 10000",
        "coreset_s_estimate": 4052.0,
    }
    cells = peer.display(row)
    assert (
        cells["fit s"] == "> 600"
        and cells["coreset s"] == "> 500 (1234 of 10000 rows; ~4052 at that pace)"
    )
    assert cells["image AUROC"] == ""  # never reached: no number is made up


def test_generated_tiles_are_an_mvtec_layout_with_small_masked_defects(tmp_path):
    from benchmarks import generated
    from patchshift.core.evaluation.data import labelled_samples, load_mask, train_images

    root = generated.write(tmp_path / "tiles", seed=1, n_train=3, n_good=2, n_per_defect=2)
    assert len(train_images(root)) == 3
    samples = labelled_samples(root)
    assert sorted({s.defect for s in samples}) == ["good", "pit", "scratch", "stain"]
    for sample in samples:
        mask = load_mask(sample, (256, 256))
        share = mask.mean()
        assert (share == 0) if sample.label == 0 else (0 < share < 0.01), (
            sample.path,
            share,
        )  # small defects, each masked


def test_bank_sweep_scores_every_size_index_and_probe_count(dataset, tiny_config):
    from benchmarks.engine_accuracy import bank_sweep

    overrides = {"image_size": tiny_config.image_size, "neighbourhood_border": "inside"}
    rows = bank_sweep("widget", dataset, overrides, "cpu", [40, 80], ("flat", "ivf"), (1, 4))
    assert [(r["bank_size"], r["index"]) for r in rows] == [
        (40, "flat"),
        (40, "ivf, 1 probes"),
        (40, "ivf, 4 probes"),
        (80, "flat"),
        (80, "ivf, 1 probes"),
        (80, "ivf, 4 probes"),
    ]
    # that IVF's image scores equal exact search's is proven where IVF is approximate, in
    # test_index_and_maps.py: on 40-80 rows the two may agree whatever the code does
    assert all(0.0 <= r["image_auroc"] <= 1.0 and r["search_ms_per_image"] > 0 for r in rows)


def test_filter_masks_counts_patches_by_hand():
    from benchmarks import filter_masks

    masks = np.zeros((2, 4, 4), bool)
    masks[1, 0, 0] = True  # one defect pixel: the top-left cell of a 2 x 2 grid
    defect = filter_masks.cell_masks(masks, (2, 2))
    assert defect.tolist() == [[False] * 4, [True, False, False, False]]
    normal = np.array([[True] * 4, [False] * 4])
    scores = np.array([[1.0, 2.0, 3.0, 4.0], [2.5, 1.0, 1.0, 1.0]])
    shares = filter_masks.kept_shares(scores, defect, normal, cut=2.5)
    assert shares == {
        "kept": 6 / 8,
        "defect_kept": 1.0,
        "normal_kept": 0.5,
        "far_normal_kept": None,
        "images_with_defect_kept": 1.0,
    }
    assert filter_masks.kept_shares(scores, defect, normal, cut=2.0)["defect_kept"] == 0.0
    # On a 1 x 5 grid with a defect in cell 0, the cells more than 1 away are 2, 3 and 4; a good
    # image has none.
    line = np.array([[False] * 5, [True, False, False, False, False]])
    far = filter_masks.far_from_defects(line, (1, 5), cells=1)
    assert far.tolist() == [[False] * 5, [False, False, True, True, True]]
    far_scores = np.array([[0.0] * 5, [9.0, 9.0, 1.0, 1.0, 9.0]])
    good_rows = np.array([[True] * 5, [False] * 5])
    assert (
        filter_masks.kept_shares(far_scores, line, good_rows, cut=2.0, far=far)["far_normal_kept"]
        == 2 / 3
    )


def test_filter_masks_smoke(dataset, tmp_path, capsys):
    from benchmarks import filter_masks

    out = tmp_path / "fm.json"
    filter_masks.main(
        [
            "--data-root",
            str(dataset.parent),
            "--datasets",
            dataset.name,
            "--image-size",
            "64",
            "--normal",
            "4",
            "--defective",
            "2",
            "--cuts",
            "0",
            "100",
            "--window",
            "1",
            "--model-cache",
            str(tmp_path / "models"),
            "--out",
            str(out),
        ]
    )
    rows = json.loads(out.read_text())["rows"]
    assert (
        [r["cut_z"] for r in rows] == [0, 100]
        and rows[0]["n_defective"] == 2
        and rows[0]["defect_patches"] > 0
    )
    assert (
        rows[1]["kept"] == 1.0 and rows[0]["kept"] <= 0.5 + 1e-9
    )  # cut 0 keeps at most the lower half
    images = json.loads(out.read_text())["images"][0]
    assert (
        0 <= images["worst_patch_auroc"] <= 1
        and 0 <= images["defective_left_out"] <= 1
        and images["window"] == 1
    )
    assert 0 <= images["patch_auroc"] <= 1
    assert "defect patches kept" in capsys.readouterr().out


def test_filter_tail_smoke(tmp_path, capsys):
    from conftest import write_dataset

    from benchmarks import filter_tail
    from patchshift.core.engine.contamination import NORMAL_TAIL_SHARE, cut_applies

    root = write_dataset(
        tmp_path / "data" / "wide", n_train=8, n_good=15, n_defect=15
    )  # 6 adaptation images, 3 defective
    filter_tail.main(
        [
            "--data-root",
            str(root.parent),
            "--dataset",
            "wide",
            "--image-size",
            "64",
            "--corruptions",
            "clean",
            "brightness",
            "--severities",
            "5",
            "--model-cache",
            str(tmp_path / "models"),
            "--out-dir",
            str(tmp_path),
        ]
    )
    rows = json.loads((tmp_path / "filter-tail-wide.json").read_text())["rows"]
    assert [r["condition"] for r in rows] == ["clean", "brightness 5"] and all(
        r["images"] == 6 for r in rows
    )
    for row in rows:
        assert 0 <= row["tail"] <= 1 and 0 <= row["reference_auroc"] <= 1
        assert (row["cut"] == "yes") == cut_applies(row["tail"], NORMAL_TAIL_SHARE)
    assert rows[0]["reference_auroc"] > 0.9  # the planted blobs are the clean batch's odd images
    assert "gate's reference ranking, image AUROC" in capsys.readouterr().out


def test_gate_probes_paste_one_piece_of_each_image_into_itself():
    from benchmarks.gate_probes import planted

    images = torch.rand(6, 3, 40, 60)
    probed = planted(images, seed=3)
    assert torch.equal(planted(images, seed=3), probed)  # seeded
    for original, copy in zip(images, probed, strict=False):
        changed = (copy != original).any(0)
        rows, cols = changed.any(1).nonzero().flatten(), changed.any(0).nonzero().flatten()
        assert (
            changed.any() and changed.float().mean() < 0.3
        )  # one small piece moved, the rest untouched
        box = copy[:, rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
        assert changed.sum() <= box.shape[1] * box.shape[2]
        assert set(box.flatten().tolist()) <= set(
            original.flatten().tolist()
        )  # its own pixels, nothing new


def test_gate_probes_smoke(tmp_path, capsys):
    from conftest import write_dataset

    from benchmarks import gate_probes

    root = write_dataset(
        tmp_path / "data" / "wide", n_train=8, n_good=15, n_defect=15
    )  # 6 adaptation images, 3 defective
    gate_probes.main(
        [
            "--data-root",
            str(root.parent),
            "--dataset",
            "wide",
            "--image-size",
            "64",
            "--corruptions",
            "brightness",
            "--severities",
            "5",
            "--model-cache",
            str(tmp_path / "models"),
            "--out-dir",
            str(tmp_path),
        ]
    )
    rows = json.loads((tmp_path / "gate-probes-wide.json").read_text())["rows"]
    assert [r["version"] for r in rows] == ["parent", "target-memory"]
    assert all(0 <= r[key] <= 1 for r in rows for key in ("defects", "probes", "paired"))
    assert "probed against originals" in capsys.readouterr().out


def test_elpv_export_writes_one_product_per_cell_type_in_the_mvtec_layout(tmp_path, monkeypatch):
    from benchmarks import elpv
    from patchshift.core.evaluation.data import labelled_samples

    rng = np.random.default_rng(0)
    types = np.array(["mono"] * 13 + ["poly"] * 7)
    labels = np.array([0] * 10 + [1] * 3 + [0] * 5 + [1] * 2)
    cells = rng.integers(0, 256, (20, 300, 300), dtype=np.uint8)
    monkeypatch.setattr(elpv, "elpv_cells", lambda: (cells, labels, types))
    counts = elpv.export(tmp_path)
    assert counts == {
        "elpv-mono": {"train/good": 6, "test/good": 4, "test/crack": 3},
        "elpv-poly": {"train/good": 3, "test/good": 2, "test/crack": 2},
    }
    samples = labelled_samples(tmp_path / "elpv-mono")
    assert sorted(s.label for s in samples) == [0] * 4 + [1] * 3 and all(
        s.mask_path is None for s in samples
    )
    assert len(train_images(tmp_path / "elpv-mono")) == 6


def test_a_product_without_defect_masks_is_ranked_by_image_only(fitted):
    from benchmarks.protocol import evaluate_on

    images = (torch.rand(4, 3, 64, 64) * 255).to(torch.uint8)
    masks = np.zeros((4, *fitted.input_hw), dtype=bool)
    result = evaluate_on(fitted, images, np.array([0, 0, 1, 1]), masks)
    assert (
        result["pixel_auroc"] is None
        and result["aupro"] is None
        and 0 <= result["image_auroc"] <= 1
    )


def fake_product(name: str, gaps: dict[str, float]) -> dict:
    """A shift result with two conditions: none at 0.5, clean 0.9, each method closing its given
    share of the gap."""
    rows = []
    for corruption in ("blur", "noise"):
        rows.append(
            {
                "corruption": corruption,
                "severity": 5,
                "method": "none",
                "image_auroc": 0.5,
                "pixel_auroc": None,
                "aupro": None,
                "false_alarm_rate": 0.0,
                "recall": 0.0,
                "oracle_recall": 0.1,
            }
        )
        for method, gap in gaps.items():
            rows.append(
                {
                    "corruption": corruption,
                    "severity": 5,
                    "method": method,
                    "image_auroc": 0.5 + 0.4 * gap,
                    "pixel_auroc": None,
                    "aupro": None,
                    "false_alarm_rate": 0.01,
                    "recall": 0.2,
                    "oracle_recall": 0.3,
                }
            )
    return {
        "dataset": name,
        "upper_bound": {"image_auroc": 0.9},
        "rows": rows,
        "eval_labels": [0, 1],
    }


def test_leave_one_product_out_chooses_each_products_setting_on_the_others():
    from benchmarks.leave_one_out import choose, table

    products = [
        fake_product("p1", {"a": 0.9, "b": 0.5}),
        fake_product("p2", {"a": 0.8, "b": 0.6}),
        fake_product("p3", {"a": 0.1, "b": 0.7}),
    ]
    assert choose(products[:2], ["a", "b"]) == "a"  # p3 left out: a is better on p1 and p2 ...
    assert (
        choose([products[0], products[2]], ["a", "b"]) == "b"
    )  # ... p2 left out: b's worst (0.5) beats a's (0.1)
    summary, *per_product = table(products).split("\n\n")
    lines = summary.splitlines()
    # worst product first: p3 is reported under a (chosen on p1 and p2), closing 10% of its gap
    assert lines[2].startswith("| p3 | a | 2 | 50.0 | 54.0 | 90.0 | 10 |"), lines[2]
    assert {line.split(" | ")[1] for line in lines[3:]} == {"b"}
    # then each product's conditions under its setting, in the same order: p3 under a
    assert [block.splitlines()[0].split(" | ")[0] for block in per_product] == [
        "| p3, a",
        "| p1, b",
        "| p2, b",
    ]
    assert (
        per_product[0].splitlines()[2]
        == "| blur 5 | 50.0 -> 54.0 | – | – | 1.0 | 20.0 | 10.0 -> 30.0 |"
    )


def test_verdict_study_chooses_settings_on_the_other_products():
    from benchmarks.verdicts import batches, choose, judged

    rng = np.random.default_rng(0)

    def result(name: str, shift: float) -> dict:
        good, bad = (
            rng.gumbel(10, 1, 200),
            rng.gumbel(16, 1, 200),
        )  # held-out scores: the oracle catches most defects
        target = np.r_[
            rng.gumbel(10 + shift, 1, 100), rng.gumbel(16, 1, 100)
        ]  # half of the batch defective
        vouched = np.r_[
            target[:100], rng.gumbel(10 + shift, 1, 100)
        ]  # the defective images' normal parts
        return {
            "dataset": name,
            "eval_labels": [0] * 200 + [1] * 200,
            "adapt_labels": [0] * 100 + [1] * 100,
            "rows": [
                {
                    "method": "target-memory",
                    "corruption": "c",
                    "severity": 5,
                    "target_index": list(range(200)),
                    "scores": list(np.r_[good, bad]),
                    "vouched_scores": {"3": list(vouched), "100": list(target)},
                }
            ],
        }

    every = batches(result("p1", 0.0)) + batches(result("p2", 0.0))
    assert [b["share"] for b in every[:3]] == [
        0.0,
        pytest.approx(33 / 133),
        0.5,
    ]  # 100 good and 33 defective
    z, pair, factor, rule = choose(every)
    assert factor == 4.0  # not chosen: the precision the gate asks for
    assert (
        z == "3"
    )  # the law through the vouched scores keeps the rate where the raw scores' does not
    row = judged(every[2], "100", (0.1, 0.5), float("inf"))
    assert (
        row["fa"] == 0.0 and row["recall"] < 0.7 * row["oracle_recall"]
    )  # half defective: the raw law passes them
    assert judged(every[2], z, pair, factor)["meets"]


def test_uda_elpv_split_and_report_by_hand(tmp_path):
    """The adaptation set has the asked defective share, the evaluation set is the same whatever
    the share, and no cell is in both; the report puts each method's cells on one row."""
    from benchmarks import uda_elpv

    types = np.array(["mono"] * 40 + ["poly"] * 60)
    labels = np.array([0] * 30 + [1] * 10 + [0] * 40 + [1] * 20)
    splits = {r: uda_elpv.split(labels, types, "mono", "poly", r, 0) for r in (0.1, 0.3)}
    for ratio, parts in splits.items():
        assert len(parts["source"]) == 30 and (types[parts["source"]] == "mono").all()
        adapt = labels[parts["adapt"]]
        # every normal cell of the first half (20), defective ones to the share
        assert (adapt == 0).sum() == 20 and adapt.mean() == pytest.approx(ratio, abs=0.02)
        assert not set(parts["adapt"]) & set(parts["eval"])
    assert sorted(splits[0.1]["eval"]) == sorted(splits[0.3]["eval"])  # 20 normal + 10 defective
    rows = [
        {"direction": "mono-poly", "ratio": 0.1, "method": "uda", "image_auroc": 0.9,
         "recall_oracle_1pct": 0.5, "seconds": 12.0, "peak_gib": 1.5},
        {"direction": "poly-mono", "ratio": 0.1, "method": "uda", "image_auroc": 0.7,
         "recall_oracle_1pct": 0.25, "seconds": 9.0, "peak_gib": 1.0},
    ]  # fmt: skip
    (tmp_path / "r.json").write_text(json.dumps({"rows": rows}))
    table = uda_elpv.report_table([str(tmp_path / "r.json")])
    assert "| uda | 0.900 / 0.50 | 0.700 / 0.25 | 12 | 1.50 |" in table, table


def test_the_law_is_fitted_to_the_images_each_rule_names():
    from benchmarks.verdicts import law_input

    raw = np.arange(20, dtype=float)
    vouched = raw.copy()
    vouched[15:] -= 1  # 5 of 20 images lost a patch to the vouching: suspects
    batch = {"target": {"4": vouched, "100": raw}}
    every, pair = law_input(batch, "4", (0.2, 0.5), "all")
    assert np.array_equal(every, vouched) and pair == (0.2, 0.5)
    free, pair = law_input(batch, "4", (0.2, 0.5), "suspect-free")
    assert free.tolist() == list(range(15)) and pair == (0.2, 0.5)
    same, scaled = law_input(batch, "4", (0.2, 0.5), "scaled")
    assert np.array_equal(same, vouched) and scaled == pytest.approx((0.15, 0.375))  # 75% clean
    few = {"target": {"4": vouched[10:], "100": raw[10:]}}  # 5 left: too few, every image stays
    assert len(law_input(few, "4", (0.2, 0.5), "suspect-free")[0]) == 10
    with pytest.raises(SystemExit, match="raw score"):
        law_input({"target": {"4": vouched}}, "4", (0.2, 0.5), "scaled")


def test_engine_defaults_report_each_product_under_the_setting_chosen_on_the_others():
    from benchmarks.engine_defaults import ranking_key, ranking_table, report_rows

    def run(product, variant, image_auroc):
        return {
            "variant": variant,
            "dataset": product,
            "image_auroc": image_auroc,
            "pixel_auroc": None,
            "aupro": None,
            "false_alarm_rate": 0.01,
            "recall": 0.5,
            "oracle_recall": 0.5,
            "fit_s": 1.0,
        }

    aurocs = {  # product -> variant -> image AUROC
        "p1": {"default": 0.90, "backbone=lite2": 0.95},
        "p2": {"default": 0.80, "backbone=lite2": 0.85},
        "p3": {"default": 0.70, "backbone=lite2": 0.60},
    }
    store = {
        "machine": "by hand",
        "runs": {
            f"{p}|{v}": run(p, v, auroc) for p, by in aurocs.items() for v, auroc in by.items()
        },
    }
    from benchmarks.engine_defaults import RANKING_VARIANTS

    rows = {r["product"]: r for r in report_rows(store, RANKING_VARIANTS, ranking_key)}
    # p3 left out: lite2 is better on p1 and p2 (worst 0.85 against 0.80), and p3 pays for it
    assert rows["p3"]["chosen"] == "backbone=lite2"
    assert rows["p3"]["chosen image_auroc"] == 0.60
    assert rows["p3"]["best"] == "default"
    # p1 left out: p2 (0.85) and p3 (0.60) -> lite2's worst 0.60 against the default's 0.70
    assert rows["p1"]["chosen"] == "default"
    lines = ranking_table(store).splitlines()
    assert lines[2].startswith("| p3 | backbone=lite2 | 0.600 / 0.700 |"), lines[2]
    assert lines[2].endswith("| default: 0.700 | 0.100 |"), lines[2]


def test_the_gev_rule_recovers_a_tail_lighter_than_gumbels():
    from benchmarks.verdicts import gev_reduced, gev_threshold
    from patchshift.core.engine.threshold import gumbel_law, gumbel_reduced

    shape, rate = -0.3, 0.01  # a bounded tail: x = 10 + 2 * gev_reduced(U, -0.3)
    draws = 10 + 2 * gev_reduced(np.random.default_rng(0).uniform(size=200_000), shape)
    truth = 10 + 2 * gev_reduced(np.array([1 - rate]), shape)[0]  # 17.67
    assert gev_threshold(draws, (0.2, 0.5), rate) == pytest.approx(truth, abs=0.05)
    location, scale = gumbel_law(draws, (0.2, 0.5))
    assert location + scale * gumbel_reduced(1 - rate) > truth + 1.5  # Gumbel's 99th: 19.8
    gumbel = np.random.default_rng(1).gumbel(3.0, 0.5, 200_000)  # shape 0: the same as Gumbel's
    assert gev_threshold(gumbel, (0.2, 0.5), rate) == pytest.approx(
        3.0 + 0.5 * gumbel_reduced(1 - rate), abs=0.06
    )
    assert gev_threshold(np.ones(50), (0.2, 0.5), rate) is None  # no spread


def test_engine_defaults_choose_only_among_settings_every_product_ran():
    from benchmarks.engine_defaults import RANKING_VARIANTS, ranking_key, report_rows

    runs = {
        f"{p}|{v}": {"variant": v, "dataset": p, "image_auroc": a}
        for p, v, a in [
            ("p1", "default", 0.8),
            ("p2", "default", 0.8),
            ("p1", "backbone=lite2", 0.9),  # best on p1, never run on p2
        ]
    }
    rows = report_rows({"runs": runs}, RANKING_VARIANTS, ranking_key)
    # p2 left out: lite2 wins on p1 but p2 has no lite2 run: the choice is among what both ran
    assert {r["product"]: r["chosen"] for r in rows} == {"p1": "default", "p2": "default"}
    assert {r["product"]: r["best"] for r in rows} == {"p1": "backbone=lite2", "p2": "default"}


def test_unleveled_rows_are_filled_only_where_the_default_kept_every_level():
    from benchmarks.leave_one_out import fill_unleveled

    variant = "tm-nolevels:method=target-memory,input_levels=none"
    kept = {"input_levels": {"gain": [1.0] * 3, "offset": [0.0] * 3}}
    moved = {"input_levels": {"gain": [2.0] * 3, "offset": [0.0] * 3}}
    result = {
        "rows": [
            {"corruption": "blur", "severity": 3, "method": "target-memory", "details": kept},
            {"corruption": "contrast", "severity": 3, "method": "target-memory", "details": moved},
            {"corruption": "noise", "severity": 3, "method": "target-memory", "details": kept},
            {"corruption": "noise", "severity": 3, "method": variant, "image_auroc": 0.5},
        ]
    }
    rows = {(r["corruption"], r["method"]): r for r in fill_unleveled(result)["rows"]}
    assert rows[("blur", variant)]["filled_from"] == "target-memory"
    assert ("contrast", variant) not in rows  # the correction acted: that row must be run
    assert "filled_from" not in rows[("noise", variant)]  # a row that was run stays


def test_verdicts_merge_the_files_of_one_product_with_a_rerun_condition_first(tmp_path):
    import json

    from benchmarks.shift import merged_by_product

    def result(rows):
        return {"dataset": "p", "eval_labels": [0, 1], "rows": rows}

    rerun = {"corruption": "contrast", "severity": 5, "method": "target-memory", "v": "new"}
    first = tmp_path / "rerun.json"
    first.write_text(json.dumps(result([rerun])))
    later = tmp_path / "all.json"
    later.write_text(
        json.dumps(result([{**rerun, "v": "old"}, {**rerun, "severity": 3, "v": "kept"}]))
    )
    (merged,) = merged_by_product([str(first), str(later)])
    assert sorted(r["v"] for r in merged["rows"]) == ["kept", "new"]


def test_known_good_study_judges_each_draw_on_the_images_it_did_not_see():
    from benchmarks.known_good import judged, summary

    # 60 good images scored 1..60, 10 defective at 1000: a K=20 draw's threshold at 1% is its
    # highest score (rank ceil(21 * 0.99) > 20), below 1000 (every defect caught); the oracle over
    # the 40 remaining good images flags floor(0.01 * 40) = 0 of them
    good, bad = np.arange(1.0, 61.0), np.full(10, 1000.0)
    rows = judged(good, bad, 20, draws=5)
    assert len(rows) == 5 and all(r["recall"] == 1.0 and r["oracle"] == 1.0 for r in rows)
    for row in rows:  # the false alarms are a share of the 40 images left out of the draw
        assert row["fa"] * 40 == pytest.approx(round(row["fa"] * 40))
    table = summary("toy", 20, rows, 40)
    assert table["share"] == pytest.approx(100.0) and table["k"] == 20
    assert table["fa"] == pytest.approx(100 * np.mean([r["fa"] for r in rows]))


def test_uda_ensemble_normalises_each_version_without_labels_by_hand():
    from benchmarks.uda_ensemble import cells

    # two evaluation images (normal, defective); uda ranks them wrong, the other memory right
    common = {"direction": "poly-mono", "ratio": 0.1, "eval_labels": [0, 1]}
    rows = [
        {**common, "method": "uda", "scores": [4.0, 3.0], "threshold": 2.0,
         "calibration_scores": [1.0, 2.0, 3.0]},  # median 2, MAD 1: z = 2, 1
        {**common, "method": "target-memory-alone", "scores": [1.0, 9.0], "threshold": 10.0,
         "calibration_scores": [0.0, 1.0, 4.0]},  # median 1, MAD 1: z = 0, 8
    ]  # fmt: skip
    (line,) = cells(rows)
    assert (line["uda"], line["target-memory-alone"]) == (0.0, 1.0)
    # mean z (1, 4.5), max z (2, 8), min z (0, 1): the defective image above; s / t: (2, 1.5)
    # and (0.1, 0.9): mean (1.05, 1.2) right, max (2, 1.5) wrong, min (0.1, 0.9) right
    assert (line["mean z"], line["max z"], line["min z"]) == (1.0, 1.0, 1.0)
    assert (line["mean ratio"], line["max ratio"], line["min ratio"]) == (1.0, 0.0, 1.0)
