"""anomalib's PatchCore beside patchshift's: same backbone, weights, images, input size and bank
size.

    pip install -e '.[peer]'          # anomalib 2.7 resolves beside torch 2.14.1
    python -m benchmarks.peer [--datasets bsd deeppcb] [--cap-s 900]

patchshift fits with its defaults (k-fold calibration included, which anomalib does not do).
anomalib's torch model (`PatchcoreModel`: the paper's recipe, 3x3 average pooling, exact search,
9-neighbour re-weighting, Gaussian-blurred maps) gets the same timm architecture with the same
packaged ImageNet weights loaded into its feature extractor, the same two stages (blocks.2 and
blocks.4 of Lite0: strides 8 and 16), the same decoded and normalised images, and a sampling
ratio that gives it exactly patchshift's bank size. Its greedy coreset visits every patch once
per chosen row, so it runs in a child process under a wall-clock cap: a capped run is reported
as "> cap" with how many rows it had chosen. Scoring is timed at batch 32, heatmaps included,
after one warm-up batch, on the test images. Writes benchmarks/results/peer.json.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from .helpers import DATASETS, DEFAULT_DATA_ROOT, RESULTS, StageClock, machine, markdown

BATCH = 32
STAGES = [
    "blocks.2",
    "blocks.4",
]  # tf_efficientnet_lite0 at strides 8 and 16: patchshift's two stages


def test_set(root: Path, size: tuple[int, int]):
    from patchshift.core.evaluation.data import labelled_samples, load_mask

    samples = labelled_samples(root)
    labels = np.array([s.label for s in samples])
    masks = np.stack([load_mask(s, size) for s in samples])
    return [s.path for s in samples], labels, masks


def accuracy(labels: np.ndarray, masks: np.ndarray, scores: np.ndarray, maps: np.ndarray) -> dict:
    from patchshift.core.evaluation.metrics import image_auroc, pixel_auroc

    return {"image_auroc": image_auroc(labels, scores), "pixel_auroc": pixel_auroc(masks, maps)}


def timed_scoring(
    score_batch, paths: list, size: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray, float]:
    """(scores, maps, images per second) over every image; decoding is not timed."""
    from patchshift.core.common.images import iter_batches

    batches = [batch for batch, _, _ in iter_batches(paths, size, BATCH)]
    score_batch(batches[0])  # warm-up
    scores, maps, seconds = [], [], 0.0
    for batch in batches:
        started = time.perf_counter()
        s, m = score_batch(batch)
        seconds += time.perf_counter() - started
        scores.append(s)
        maps.append(m)
    return np.concatenate(scores), np.concatenate(maps), len(paths) / seconds


def run_patchshift(root: Path, size_text: str, limit: int | None = None) -> dict:
    from patchshift.core.engine.model_config import ModelConfig, parse_image_size
    from patchshift.core.engine.patchcore import fit
    from patchshift.core.evaluation.data import train_images

    config = ModelConfig(image_size=parse_image_size(size_text))
    train = train_images(root)[:limit]
    clock = StageClock()
    model = fit(train, config, device="cpu", progress=clock)
    fit_s = time.perf_counter() - clock.started
    stages = clock.seconds()
    h, w = model.extractor(torch.zeros(1, 3, *config.input_hw)).shape[1:3]
    paths, labels, masks = test_set(root, config.image_size)

    @torch.inference_mode()
    def score_batch(batch):
        result = model.score(batch)
        return result.scores.numpy(), result.anomaly_maps.numpy()

    scores, maps, per_s = timed_scoring(score_batch, paths, config.image_size)
    return {
        "implementation": "patchshift",
        "fit_s": fit_s,
        "features_s": stages["features"],
        "coreset_s": stages.get("coreset", 0.0),
        "calibration_s": stages.get("threshold", 0.0),
        "score_images_per_s": per_s,
        "bank_rows": len(model.bank),
        "patches": len(train) * h * w,
        "n_train": len(train),
        **accuracy(labels, masks, scores, maps),
    }


def anomalib_child(root: Path, size_text: str, bank_rows: int, limit: int | None) -> None:
    """Runs in its own process (see run_anomalib): prints one JSON line per finished phase."""
    from anomalib.models.image.patchcore.torch_model import PatchcoreModel

    from patchshift.core.common.images import iter_batches
    from patchshift.core.engine.backbone import build_backbone, load_classifier
    from patchshift.core.engine.model_config import ModelConfig, parse_image_size
    from patchshift.core.evaluation.data import train_images

    config = ModelConfig(image_size=parse_image_size(size_text))
    torch.manual_seed(config.seed)
    model = PatchcoreModel(layers=STAGES, backbone=config.backbone, pre_trained=False)
    classifier, _ = load_classifier(config.backbone, config.weights)
    loaded = model.feature_extractor.feature_extractor.load_state_dict(
        classifier.state_dict(), strict=False
    )
    if loaded.missing_keys:
        raise SystemExit(
            f"anomalib's feature extractor did not get every weight: {loaded.missing_keys[:5]}"
        )
    reference = build_backbone(config.backbone, config.weights, config.feature_strides)
    mean = torch.tensor(reference.mean).view(1, 3, 1, 1)
    std = torch.tensor(reference.std).view(1, 3, 1, 1)
    train = train_images(root)[:limit]
    report = lambda **fields: print(json.dumps(fields), flush=True)  # noqa: E731

    started = time.perf_counter()
    model.train()
    with torch.inference_mode():
        for batch, _, _ in iter_batches(train, config.image_size, BATCH):
            model((batch - mean) / std)
    features_s = time.perf_counter() - started
    n_patches = sum(len(e) for e in model.embedding_store)
    report(phase="features", seconds=features_s, patches=n_patches, n_train=len(train))
    coreset_started = time.perf_counter()
    model.subsample_embedding((bank_rows + 0.5) / n_patches)  # int(n * ratio) == bank_rows
    coreset_s = time.perf_counter() - coreset_started
    report(
        phase="coreset",
        seconds=coreset_s,
        fit_s=time.perf_counter() - started,
        bank_rows=len(model.memory_bank),
    )
    model.eval()
    paths, labels, masks = test_set(root, config.image_size)

    @torch.inference_mode()
    def score_batch(batch):
        out = model((batch - mean) / std)
        return out.pred_score.numpy().ravel(), out.anomaly_map.squeeze(1).numpy()

    scores, maps, per_s = timed_scoring(score_batch, paths, config.image_size)
    report(phase="score", score_images_per_s=per_s, **accuracy(labels, masks, scores, maps))


def coreset_progress(stderr: str) -> tuple[int, int] | None:
    """(rows chosen, rows to choose) from the last progress line anomalib's coreset printed (its
    loop counts the rows after the first, random one)."""
    done = re.findall(r"Selecting Coreset Indices\.:\s+\d+%\|[^|]*\|\s*(\d+)/(\d+)", stderr)
    return (int(done[-1][0]) + 1, int(done[-1][1]) + 1) if done else None


def run_anomalib(
    name: str, root: Path, size_text: str, bank_rows: int, cap_s: float, limit: int | None = None
) -> dict:
    row = {"implementation": "anomalib 2.x PatchcoreModel", "bank_rows": bank_rows}
    try:
        import anomalib

        row["implementation"] = f"anomalib {anomalib.__version__} PatchcoreModel"
    except ImportError:
        return {**row, "note": "anomalib is not installed (pip install -e '.[peer]')"}
    command = [
        sys.executable,
        "-m",
        "benchmarks.peer",
        "--child",
        name,
        str(root),
        size_text,
        str(bank_rows),
        str(limit or 0),
    ]
    started = time.perf_counter()
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = child.communicate(timeout=cap_s)
    except subprocess.TimeoutExpired:
        child.kill()
        out, err = child.communicate()
        row["capped_after_s"] = cap_s
    for line in out.splitlines():
        if line.startswith("{"):
            fields = json.loads(line)
            phase = fields.pop("phase")
            row.update({f"{phase}_s" if k == "seconds" else k: v for k, v in fields.items()})
    done = coreset_progress(err)
    if "capped_after_s" in row and done:
        chosen, total = done
        row["coreset_rows_chosen"] = f"{chosen} of {total}"
        spent = cap_s - row.get("features_s", 0.0)
        row["coreset_s_estimate"] = (
            spent * total / max(chosen, 1)
        )  # at the pace it had when stopped
    elif child.returncode not in (0, None) and "capped_after_s" not in row:
        row["note"] = (err.strip().splitlines() or ["failed"])[-1]
    row["wall_s"] = time.perf_counter() - started
    return row


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        _, name, root, size_text, bank_rows, limit = argv
        anomalib_child(Path(root), size_text, int(bank_rows), int(limit) or None)
        return
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.peer",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--data-root", default=str(DEFAULT_DATA_ROOT))
    parser.add_argument("--datasets", nargs="*", default=list(DATASETS))
    parser.add_argument(
        "--cap-s", type=float, default=900.0, help="wall-clock cap of anomalib's run per dataset"
    )
    parser.add_argument(
        "--train-limit",
        type=int,
        default=None,
        help="fit both on the first N training images (where anomalib's coreset finishes)",
    )
    parser.add_argument("--out", default=str(RESULTS / "peer.json"))
    args = parser.parse_args(argv)
    rows = []
    for name in args.datasets:
        root = Path(args.data_root) / name
        size_text = DATASETS[name]["image_size"]
        ours = {
            "dataset": name,
            "input": size_text,
            **run_patchshift(root, size_text, args.train_limit),
        }
        rows.append(ours)
        print(ours, flush=True)
        peer = {
            "dataset": name,
            "input": size_text,
            **run_anomalib(name, root, size_text, ours["bank_rows"], args.cap_s, args.train_limit),
        }
        rows.append(peer)
        print(peer, flush=True)
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"machine": machine(), "rows": rows}, indent=2))
    print(f"\nMachine: {machine()}; torch {torch.__version__}; batch {BATCH}\n")
    print(markdown([display(r) for r in rows], [(k, k, "") for k in display(rows[0])]))


def display(row: dict) -> dict:
    """A result row as the table's cells; a capped anomalib run shows "> cap"."""

    def num(key: str, digits: int) -> str:
        value = row.get(key)
        return "" if value is None else f"{value:.{digits}f}"

    cells = {
        "dataset": row["dataset"],
        "input": row["input"],
        "implementation": row["implementation"],
        "train imgs": str(row.get("n_train", "")),
        "bank rows": str(row["bank_rows"]),
        "fit s": num("fit_s", 0),
        "features s": num("features_s", 0),
        "coreset s": num("coreset_s", 1),
        "calibration s": num("calibration_s", 0),
        "score img/s": num("score_images_per_s", 1),
        "image AUROC": num("image_auroc", 3),
        "pixel AUROC": num("pixel_auroc", 3),
    }
    if "capped_after_s" in row:
        cap = row["capped_after_s"]
        cells["fit s"] = f"> {cap:.0f}"
        estimate = row.get("coreset_s_estimate")
        cells["coreset s"] = (
            f"> {cap - row.get('features_s', 0):.0f} ({row.get('coreset_rows_chosen', '?')} rows"
            + (f"; ~{estimate:.0f} at that pace)" if estimate else ")")
        )
    if row.get("note"):
        cells["implementation"] += f" ({row['note']})"
    return cells


if __name__ == "__main__":
    main()
