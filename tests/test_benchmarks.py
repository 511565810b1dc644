"""The benchmark scripts run end to end on generated data (their numbers come from shared/data)."""

import json

import numpy as np

from patchshift.benchmarks import shift


def test_stratified_split_keeps_both_classes():
    labels = np.array([0] * 50 + [1] * 30)
    adapt, evaluate = shift.stratified_split(labels, 0.2, seed=0)
    assert len(adapt) == 16 and labels[adapt].sum() == 6
    assert not set(adapt) & set(evaluate) and len(adapt) + len(evaluate) == 80


def test_shift_benchmark_smoke(dataset, tmp_path, capsys):
    shift.main([
        "--data-root", str(dataset.parent), "--datasets", dataset.name, "--image-size", "64",
        "--corruptions", "contrast", "--severities", "5", "--methods", "none", "roda", "uda", "--epochs", "1", "--uda-epochs", "1",
        "--model-cache", str(tmp_path / "models"), "--out-dir", str(tmp_path),
    ])
    result = json.loads((tmp_path / f"shift-{dataset.name}.json").read_text())
    assert {r["method"] for r in result["rows"]} == {"none", "roda", "uda"}
    uda = next(r for r in result["rows"] if r["method"] == "uda")
    assert uda["pixel_auroc"] is None and "at least 16 target images" in uda["refused"]  # 2 adaptation images: too few to cluster
    assert 0 <= result["assignment_share"]["rot90"] <= 1
    assert [r["defective_share"] for r in result["defect_sweep"]] == [0.0, 0.1, 0.3, 0.5]
    assert "gap closed" in capsys.readouterr().out


def test_ot_size_benchmark_smoke(dataset, tmp_path, capsys):
    from patchshift.benchmarks import ot_size

    ot_size.main([
        "--data-root", str(dataset.parent), "--dataset", dataset.name, "--image-size", "64", "--bank-size", "64",
        "--corruptions", "contrast", "--model-cache", str(tmp_path / "models"), "--out-dir", str(tmp_path),
    ])
    result = json.loads((tmp_path / f"ot-size-{dataset.name}.json").read_text())
    assert [r["ot problem"] for r in result["rows"]] == ["no adaptation", "2048 x 4096 (default)", "2048 x 4096, other seed", "full"]
    assert result["bank_rows"] <= 64 and result["patches_per_step"] == 8 * 4 * 64  # 8 images x 4 views x (64/8)^2 patches
    assert "OT problem" in capsys.readouterr().out
