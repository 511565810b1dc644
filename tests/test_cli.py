import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from patchshift.service.cli import main


def run(capsys, *argv):
    try:
        code = main(["--no-progress", *argv])
    except SystemExit as exc:  # argparse: usage errors
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def test_score_and_eval_on_a_fitted_model(saved_model, dataset, tmp_path, capsys):
    heat = tmp_path / "heat"
    report = tmp_path / "scores.json"
    code, out, err = run(
        capsys,
        "score",
        "--model",
        str(saved_model),
        "--heatmaps",
        str(heat),
        "--json",
        str(report),
        str(dataset / "test"),
    )
    assert code == 0, err
    document = json.loads(report.read_text())
    assert len(document["results"]) == 12
    flagged = {r["file"].split(os.sep)[-2] for r in document["results"] if r["anomalous"]}
    assert "blob" in flagged
    first = document["results"][0]
    assert set(first) >= {"file", "score", "threshold", "anomalous", "heatmap"}
    with Image.open(first["heatmap"]) as png:
        assert png.size == (96, 96) and png.mode == "RGB"
    assert len(out.strip().splitlines()) == 12

    metrics = tmp_path / "eval.json"
    code, out, err = run(
        capsys, "eval", "--model", str(saved_model), "--data", str(dataset), "--json", str(metrics)
    )
    assert code == 0, err
    values = json.loads(metrics.read_text())
    assert values["n_images"] == 12
    for key in ("image_auroc", "pixel_auroc", "aupro"):
        assert 0.0 <= values[key] <= 1.0
    assert values["image_auroc"] > 0.9
    # the oracle: the threshold flagging at most 1% of test/good (here: none of 6), and what it
    # catches
    good = [r["score"] for r in document["results"] if r["file"].split(os.sep)[-2] == "good"]
    bad = [r["score"] for r in document["results"] if r["file"].split(os.sep)[-2] != "good"]
    assert values["oracle_threshold"] == pytest.approx(max(good), rel=1e-5)
    assert values["oracle_recall"] == pytest.approx(np.mean(np.array(bad) > max(good)))
    assert "oracle threshold" in out

    code, out, err = run(
        capsys,
        "eval",
        "--model",
        str(saved_model),
        "--data",
        str(dataset),
        "--corruption",
        "contrast",
        "--severity",
        "5",
    )
    assert code == 0 and "contrast" in out


def test_fit_command(dataset, tmp_path, capsys):
    out_dir = tmp_path / "m"
    code, out, err = run(
        capsys,
        "fit",
        "--data",
        str(dataset),
        "--out",
        str(out_dir),
        "--image-size",
        "64x48",
        "--coreset-max-size",
        "100",
        "--feature-dim",
        "32",
    )
    assert code == 0, err
    assert "bank 100 x 32" in out
    manifest = json.loads((out_dir / "manifest.json").read_text())
    assert manifest["image_size"] == [64, 48]
    code, out, err = run(capsys, "fit", "--data", str(dataset), "--out", str(out_dir))
    assert code == 1 and "already exists" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(
    "argv,message",
    [
        (["score", "--model", "{tmp}/none", "{data}/test"], "not a model directory"),
        (["score", "--model", "{model}", "{tmp}/notes.txt"], "not an image"),
        (["score", "--model", "{model}", "{tmp}/missing.png"], "no such file"),
        (["eval", "--model", "{model}", "--data", "{tmp}"], "MVTec AD layout"),
        (
            ["eval", "--model", "{model}", "--data", "{data}", "--corruption", "fog"],
            "unknown corruption",
        ),
        (["fit", "--data", "{tmp}/empty", "--out", "{tmp}/x"], "no such folder"),
        (["fit", "--data", "{data}", "--out", "{tmp}/x", "--backbone", "resnet18"], "--weights"),
        (["serve", "--port", "99999"], "port"),
        (["serve", "--api-key", "short"], "at least 8 characters"),
    ],
)
def test_cli_errors_are_one_line(argv, message, saved_model, dataset, tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("not an image")
    argv = [a.format(tmp=tmp_path, data=dataset, model=saved_model) for a in argv]
    code, out, err = run(capsys, *argv)
    assert code == 1
    assert message in err
    assert len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(
    "argv,message",
    [
        (
            ["fit", "--data", "{data}", "--out", "{tmp}/x", "--image-size", "huge"],
            "image_size must be N or WIDTHxHEIGHT",
        ),
        (
            ["fit", "--data", "{data}", "--out", "{tmp}/x", "--image-size", "9000"],
            "image_size sides must be between 32 and 2048",
        ),
        (
            ["fit", "--data", "{data}", "--out", "{tmp}/x", "--feature-dim", "100000"],
            "feature_dim must be in [2, 4096]",
        ),
        (
            ["fit", "--data", "{data}", "--out", "{tmp}/x", "--feature-dim", "1000"],
            "feature_dim must be at most 224 for tf_efficientnet_lite1",
        ),
        (
            [
                "fit",
                "--data",
                "{data}",
                "--out",
                "{tmp}/x",
                "--feature-reduction",
                "pca",
                "--feature-dim",
                "200",
            ],
            "feature_dim must be at most 152 with pca",
        ),
        (
            ["fit", "--data", "{data}", "--out", "{tmp}/x", "--coreset-ratio", "nan"],
            "coreset_ratio must be a finite number",
        ),
        (
            ["fit", "--data", "{data}", "--out", "{tmp}/x", "--threshold", "1e309"],
            "threshold must be a finite number",
        ),
        (
            ["fit", "--data", "{data}", "--out", "{tmp}/x", "--threshold", "5e-324"],
            "threshold must be in [1e-06, 1000000]",
        ),
        (
            [
                "adapt",
                "--model",
                "{model}",
                "--images",
                "{data}",
                "--out",
                "{tmp}/a",
                "--lr",
                "1e308",
            ],
            "lr must be in (0, 1]",
        ),
        (
            [
                "adapt",
                "--model",
                "{model}",
                "--images",
                "{data}",
                "--out",
                "{tmp}/a",
                "--lr",
                "nan",
            ],
            "lr must be a finite number",
        ),
        (
            [
                "adapt",
                "--model",
                "{model}",
                "--images",
                "{data}",
                "--out",
                "{tmp}/a",
                "--epochs",
                "99999999999999999999999",
            ],
            "epochs must be in [1, 100]",
        ),
        (
            [
                "adapt",
                "--model",
                "{model}",
                "--images",
                "{data}",
                "--out",
                "{tmp}/a",
                "--epochs",
                "0",
            ],
            "epochs must be in [1, 100]",
        ),
        (
            ["--batch-size", "0", "score", "--model", "{model}", "{data}"],
            "batch_size must be in [1, 256]",
        ),
    ],
)
def test_out_of_range_settings_are_usage_errors(
    argv, message, saved_model, dataset, tmp_path, capsys
):
    """Every numeric option is finite and inside its documented range: exit 2 and one line, before
    any work."""
    argv = [a.format(tmp=tmp_path, data=dataset, model=saved_model) for a in argv]
    code, out, err = run(capsys, *argv)
    assert code == 2
    assert message in err, err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x").exists() and not (tmp_path / "a").exists()


def test_installed_command_exit_status(tmp_path):
    """The real console script: an error is one line on stderr and a non-zero exit."""
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "patchshift.service.cli",
            "score",
            "--model",
            str(tmp_path / "none"),
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 1
    assert result.stderr.strip().startswith("patchshift score: error:")
    assert len(result.stderr.strip().splitlines()) == 1


def test_adapt_command_makes_a_complete_child_version(saved_model, dataset, tmp_path, capsys):
    out_dir = tmp_path / "adapted"
    code, out, err = run(
        capsys,
        "adapt",
        "--model",
        str(saved_model),
        "--images",
        str(dataset / "test" / "good"),
        "--out",
        str(out_dir),
        "--method",
        "bn-stats",
    )
    assert code == 0, err
    manifest = json.loads((out_dir / "manifest.json").read_text())
    assert manifest["method"] == "bn-stats" and manifest["parent"] == saved_model.name
    assert (
        manifest["details"]["threshold_estimate"]["expected_false_alarm_rate"] is not None
    )  # the manifest says what it expects
    # the bank is shared with the source version (hard link), the version is complete
    assert (out_dir / "bank.safetensors").stat().st_ino == (
        saved_model / "bank.safetensors"
    ).stat().st_ino
    code, out, err = run(capsys, "score", "--model", str(out_dir), str(dataset / "test" / "good"))
    assert code == 0, err
    # the target memory says what its filter did; the tail rule is a flag (0: always cut)
    code, out, err = run(
        capsys,
        "adapt",
        "--model",
        str(saved_model),
        "--images",
        str(dataset / "test" / "good"),
        "--out",
        str(tmp_path / "tm"),
    )
    assert code == 0, err
    assert "filter: " in out and "robust deviations" in out
    # 6 good images: the new threshold's expected false alarms, its interval, and that 6 cannot
    # support 1%
    assert (
        "threshold: expected to flag" in out and "90% interval" in out and "cannot support" in out
    )
    manifest = json.loads((tmp_path / "tm" / "manifest.json").read_text())
    assert manifest["details"]["threshold_estimate"]["supported"] is False
    code, out, err = run(
        capsys,
        "adapt",
        "--model",
        str(saved_model),
        "--images",
        str(dataset / "test" / "good"),
        "--out",
        str(tmp_path / "tm0"),
        "--filter-tail-share",
        "0",
    )
    assert code == 0, err
    assert "filter: kept" in out and "cut at z 0.5" in out
    code, out, err = run(
        capsys,
        "adapt",
        "--model",
        str(saved_model),
        "--images",
        str(tmp_path / "none"),
        "--out",
        str(tmp_path / "x"),
    )
    assert code == 1 and "no such file" in err
    code, out, err = run(
        capsys,
        "adapt",
        "--model",
        str(saved_model),
        "--images",
        str(dataset),
        "--out",
        str(tmp_path / "y"),
        "--method",
        "magic",
    )
    assert (
        code == 2
        and "magic" in err
        and "target-memory" in err
        and len(err.strip().splitlines()) == 1
    )


def test_adapt_uda_global_writes_a_global_detector_the_cli_scores_and_evaluates(
    saved_model, dataset, tmp_path, capsys
):
    out_dir = tmp_path / "uda"
    base = [
        "adapt",
        "--model",
        str(saved_model),
        "--images",
        str(dataset / "test"),
        "--out",
        str(out_dir),
        "--method",
        "uda-global",
    ]
    code, out, err = run(capsys, *base)
    assert code == 1 and "--source-images" in err
    options = [
        "--source-images",
        str(dataset / "train" / "good"),
        "--epochs",
        "1",
        "--image-size",
        "64",
        "--clusters",
        "2",
    ]
    code, out, err = run(
        capsys, *base, *options
    )  # test/ is half defective: the scarcity assumption fails
    assert code == 1 and "no cluster dominates" in err and not out_dir.exists()
    target = [str(p) for p in sorted((dataset / "test" / "good").glob("*.png"))] + [
        str(dataset / "test" / "blob" / "000.png")
    ]
    base[base.index("--images") + 1 : base.index("--images") + 2] = target
    code, out, err = run(capsys, *base, *options)
    assert code == 0, err
    assert "dominant cluster" in out
    manifest = json.loads((out_dir / "manifest.json").read_text())
    assert (
        manifest["kind"] == "uda"
        and manifest["method"] == "uda-global"
        and manifest["parent"] == saved_model.name
    )
    code, out, err = run(capsys, "score", "--model", str(out_dir), str(dataset / "test" / "blob"))
    assert code == 0 and len(out.strip().splitlines()) == 6, err
    code, out, err = run(
        capsys,
        "score",
        "--model",
        str(out_dir),
        "--heatmaps",
        str(tmp_path / "h"),
        str(dataset / "test" / "blob"),
    )
    assert code == 1 and "no heatmaps" in err
    report = tmp_path / "eval.json"
    code, out, err = run(
        capsys, "eval", "--model", str(out_dir), "--data", str(dataset), "--json", str(report)
    )
    assert code == 0, err
    result = json.loads(report.read_text())
    assert 0 <= result["image_auroc"] <= 1 and result["pixel_auroc"] is None


def test_eval_without_masks_reports_image_metrics_and_says_why_pixel_ones_are_missing(
    saved_model, dataset, tmp_path, capsys
):
    import shutil

    root = tmp_path / "nomasks"
    shutil.copytree(dataset, root)
    shutil.rmtree(root / "ground_truth")
    report = tmp_path / "eval.json"
    code, out, err = run(
        capsys, "eval", "--model", str(saved_model), "--data", str(root), "--json", str(report)
    )
    assert code == 0, err
    assert (
        "pixel metrics need a ground-truth mask for every defective image (6 of 6 have none)" in out
    )
    result = json.loads(report.read_text())
    assert result["pixel_auroc"] is None and result["aupro"] is None and result["n_masks"] == 0
    assert 0.5 < result["image_auroc"] <= 1.0
    # the verdict rates, by hand from the scores at the stored threshold
    code, out, _ = run(
        capsys,
        "score",
        "--model",
        str(saved_model),
        "--json",
        str(tmp_path / "s.json"),
        str(root / "test"),
    )
    scored = json.loads((tmp_path / "s.json").read_text())["results"]
    good = [r["anomalous"] for r in scored if "/good/" in r["file"]]
    bad = [r["anomalous"] for r in scored if "/blob/" in r["file"]]
    assert result["false_alarm_rate"] == sum(good) / len(good) and result["recall"] == sum(
        bad
    ) / len(bad)
