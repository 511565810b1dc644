"""Engine benchmark: accuracy and fit cost on every dataset in shared/data (throughput:
throughput.py).

    python -m benchmarks.engine_accuracy [--data-root ../shared/data] [--sweeps]

Prints the README's tables (markdown) and writes benchmarks/results/engine.json.
Each fit runs in a fresh child process so that its peak resident memory is its own.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import tempfile
import time
from pathlib import Path
from queue import Empty

import numpy as np
import torch

from .helpers import (
    DATASETS,
    DEFAULT_DATA_ROOT,
    RESULTS,
    StageClock,
    dataset_settings,
    extract_features,
    machine,
    markdown,
)


def peak_resident_gib() -> float:
    """VmHWM: this process's peak resident memory since its exec (ru_maxrss would also count
    the parent's memory at fork time, which Linux carries across exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 2**20
    return float("nan")


def _fit_child(root: str, overrides: dict, out_dir: str, device: str, queue) -> None:
    from patchshift.core.artifact import save_model
    from patchshift.core.engine.model_config import ModelConfig
    from patchshift.core.engine.patchcore import fit
    from patchshift.core.evaluation.data import train_images

    try:
        started = time.perf_counter()
        images = train_images(root)
        clock = StageClock()
        model = fit(images, ModelConfig(**overrides), device=device, progress=clock)
        seconds = time.perf_counter() - started
        save_model(model, out_dir, overwrite=True)
        peak_gib = peak_resident_gib()
        stages = {f"fit_{stage}_s": s for stage, s in clock.seconds().items()}
        queue.put(
            {
                "fit_s": seconds,
                **stages,
                "fit_peak_gib": peak_gib,
                "n_train": len(images),
                "bank_size": int(model.bank.shape[0]),
            }
        )
    except Exception as exc:  # the parent waits on the queue: it must hear of a failure, not hang
        queue.put({"error": f"{type(exc).__name__}: {exc}"})


def fit_in_child(root: str, overrides: dict, out_dir: str, device: str) -> dict:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    child = ctx.Process(target=_fit_child, args=(root, overrides, out_dir, device, queue))
    child.start()
    while True:
        try:
            result = queue.get(timeout=5)
            break
        except Empty:
            if not child.is_alive():  # killed (out of memory) before it could say anything
                raise SystemExit(
                    f"fitting {root} failed: the fitting process died with exit code "
                    f"{child.exitcode}"
                ) from None
    child.join()
    if "error" in result:
        raise SystemExit(f"fitting {root} failed: {result['error']}")
    return result


def run_dataset(name: str, root: Path, overrides: dict, device: str, workdir: Path) -> dict:
    from patchshift.core.artifact import load_model
    from patchshift.core.evaluation.data import labelled_samples
    from patchshift.core.evaluation.evaluate import evaluate

    out_dir = workdir / f"{name}-{overrides.get('image_size')}"
    fitted = fit_in_child(str(root), overrides, str(out_dir), device)
    model = load_model(out_dir, device=device)
    samples = labelled_samples(root)
    result = evaluate(model, samples)
    return {"dataset": name, **overrides, **fitted, **result.to_dict()}


SWEEP_INDEXES = {"flat": ("flat", True), "ivf": ("ivf", True), "ivf-no-re-search": ("ivf", False)}


def bank_sweep(
    name: str,
    root: Path,
    overrides: dict,
    device: str,
    sizes: list[int],
    indexes: tuple[str, ...] = tuple(SWEEP_INDEXES),
    nprobes: tuple[int, ...] = (),
) -> list[dict]:
    """Features extracted once; coreset size and index kind varied on the same features."""
    from patchshift.core.common.device import resolve_device
    from patchshift.core.engine.anomaly_map import anomaly_maps
    from patchshift.core.engine.coreset import kcenter_coreset
    from patchshift.core.engine.index import BankIndex
    from patchshift.core.engine.model_config import ModelConfig
    from patchshift.core.engine.patchcore import build_extractor, split_holdout
    from patchshift.core.evaluation.data import labelled_samples, load_mask, train_images
    from patchshift.core.evaluation.metrics import aupro, image_auroc, pixel_auroc

    config = ModelConfig(**overrides)
    dev = resolve_device(device)
    _, extractor = build_extractor(config, dev)
    train = train_images(root)
    bank_idx, _ = split_holdout(len(train), config.holdout_fraction, config.seed)
    samples = labelled_samples(root)

    def features(paths):
        return extract_features(extractor, paths, config.image_size, dev)

    patches = features([train[i] for i in bank_idx]).reshape(-1, config.feature_dim)
    test = features([s.path for s in samples])
    n, h, w, d = test.shape
    labels = np.array([s.label for s in samples])
    masks = np.stack([load_mask(s, config.image_size) for s in samples])
    rows = []
    for size in sizes:
        started = time.perf_counter()
        picked = kcenter_coreset(
            patches.to(dev), size, config.coreset_projection_dim, config.seed
        ).cpu()
        coreset_s = time.perf_counter() - started
        # IVF as scoring uses it (each image's farthest patches searched again exactly) and without
        # that
        searches = [
            (label, probes)
            for label in indexes
            for probes in (
                (nprobes or (config.ivf_nprobe,)) if SWEEP_INDEXES[label][0] == "ivf" else (None,)
            )
        ]
        for label, probes in searches:
            kind, per_image = SWEEP_INDEXES[label]
            index = BankIndex(patches[picked], kind, probes or config.ivf_nprobe, dev)
            started = time.perf_counter()
            if per_image:
                dist = torch.cat(
                    [
                        index.search_images(test[i : i + 32].reshape(-1, h * w, d))[0]
                        for i in range(0, n, 32)
                    ]
                )
            else:
                dist, _ = index.search(test.reshape(-1, d))
            search_s = time.perf_counter() - started
            patch_scores = dist.view(n, h, w)
            maps = np.concatenate(
                [
                    anomaly_maps(
                        patch_scores[i : i + 32], config.input_hw, config.blur_sigma
                    ).numpy()
                    for i in range(0, n, 32)
                ]
            )
            rows.append(
                {
                    "dataset": name,
                    "bank_size": len(picked),
                    "index": label if probes is None else f"{label}, {probes} probes",
                    "coreset_s": coreset_s,
                    "search_ms_per_image": 1000 * search_s / n,
                    "image_auroc": image_auroc(
                        labels, patch_scores.flatten(1).max(1).values.numpy()
                    ),
                    "pixel_auroc": pixel_auroc(masks, maps),
                    "aupro": aupro(masks, maps),
                }
            )
            print(rows[-1], flush=True)
    return rows


MAIN_COLUMNS = [
    ("dataset", "dataset", ""),
    ("image_size", "input", ""),
    ("n_train", "train imgs", "d"),
    ("bank_size", "bank rows", "d"),
    ("image_auroc", "image AUROC", ".3f"),
    ("pixel_auroc", "pixel AUROC", ".3f"),
    ("aupro", "AUPRO", ".3f"),
    ("f1", "F1 @ threshold", ".3f"),
    ("false_alarm_rate", "false alarms (test/good)", ".3f"),
    ("recall", "recall (defective)", ".3f"),
    ("fit_s", "fit s", ".0f"),
    ("fit_features_s", "features s", ".0f"),
    ("fit_coreset_s", "coreset s", ".0f"),
    ("fit_threshold_s", "threshold s", ".0f"),
    ("fit_peak_gib", "fit peak GiB", ".2f"),
]
SWEEP_COLUMNS = [
    ("dataset", "dataset", ""),
    ("bank_size", "bank rows", "d"),
    ("index", "index", ""),
    ("coreset_s", "coreset s", ".1f"),
    ("search_ms_per_image", "search ms/img", ".1f"),
    ("image_auroc", "image AUROC", ".3f"),
    ("pixel_auroc", "pixel AUROC", ".3f"),
    ("aupro", "AUPRO", ".3f"),
]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.engine_accuracy",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--data-root", default=str(DEFAULT_DATA_ROOT))
    parser.add_argument("--datasets", nargs="*", default=list(DATASETS))
    parser.add_argument("--device", default="auto")
    parser.add_argument(
        "--resolutions",
        nargs="*",
        default=[],
        metavar="DATASET=SIZE",
        help="extra fits, e.g. bsd=256x256",
    )
    parser.add_argument(
        "--set",
        nargs="*",
        default=[],
        metavar="FIELD=VALUE",
        help="model settings for every fit, e.g. calibration=holdout",
    )
    parser.add_argument(
        "--bank-sweep", nargs="*", type=int, default=[], metavar="ROWS", help="bank sizes to sweep"
    )
    parser.add_argument(
        "--sweep-datasets", nargs="*", default=["bsd"], help="datasets for the bank sweep"
    )
    parser.add_argument(
        "--sweep-indexes",
        nargs="*",
        default=list(SWEEP_INDEXES),
        choices=list(SWEEP_INDEXES),
        help="searches of the bank sweep (exact search of a large bank is slow on a CPU)",
    )
    parser.add_argument(
        "--sweep-nprobes",
        nargs="*",
        type=int,
        default=[],
        help="IVF probes to sweep (default: the model's)",
    )
    parser.add_argument("--out", default=str(RESULTS / "engine.json"))
    args = parser.parse_args(argv)
    root = Path(args.data_root)
    from .protocol import parse_settings

    settings = parse_settings(args.set)  # JSON values: calibration=holdout, false_alarm_rate=0.01
    runs = [(name, {**dataset_settings(name), **settings}) for name in args.datasets]
    for spec in args.resolutions:
        name, size = spec.split("=")
        runs.append((name, {**dataset_settings(name), "image_size": size}))
    rows, sweep = [], []
    with tempfile.TemporaryDirectory() as workdir:
        for name, overrides in runs:
            rows.append(run_dataset(name, root / name, overrides, args.device, Path(workdir)))
            print(markdown(rows[-1:], MAIN_COLUMNS), flush=True)
    if args.bank_sweep:
        for name in args.sweep_datasets:
            sweep += bank_sweep(
                name,
                root / name,
                dataset_settings(name),
                args.device,
                args.bank_sweep,
                tuple(args.sweep_indexes),
                tuple(args.sweep_nprobes),
            )
    print(f"\nMachine: {machine()}; torch {torch.__version__}\n")
    print(markdown(rows, MAIN_COLUMNS))
    if sweep:
        print()
        print(markdown(sweep, SWEEP_COLUMNS))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(
        json.dumps({"machine": machine(), "rows": rows, "bank_sweep": sweep}, indent=2)
    )


if __name__ == "__main__":
    main()
