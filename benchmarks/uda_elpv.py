"""Every adaptation method on a real domain change: ELPV solar cells, monocrystalline and
polycrystalline modules as two domains, through the public API at the defaults.

    python -m benchmarks.uda_elpv [--directions mono-poly poly-mono] [--ratios 0.1 0.3]
        [--methods none target-memory roda bn-stats uda refit-with-labels]

Needs the PyPI package `elpv-dataset`. Normal = defect probability 0, defective = probability 1
(the uncertain 1/3 and 2/3 cells are left out). Source: every normal cell of one type; PatchCore is
fitted on them at the default ModelConfig, as `patchshift fit` does. Target: the other type, its
normal and defective cells each split in halves with a fixed seed; the adaptation set is drawn from
the first halves with the asked share defective (511 cells from poly, as many as mono allows), the
evaluation set is the second halves (the same whatever the share). Each method adapts the source
model with `core.adapt.adapt` at its defaults (uda-global also gets the source normals, as
`patchshift adapt --source-images` gives them) and is scored on the evaluation set.

Ablations (--methods): `target-memory-alone` (uda without its dominant-cluster selection),
`uda-with-source-bank` (uda keeping the source bank), `uda-mild-cut` (uda filtering its
patches at 3 robust deviations, always), `uda-global` (the paper's trained global
encoder with DSVDD and contrastive alignment; minutes and GBs at the defaults),
`uda-global-no-alignment` (without the contrastive alignment) and `uda-global-psi-phi` (clustered
on the trained encoder instead of the frozen backbone), `vouched-half-alone` and
`vouched-half-union` (the memory from the better-vouched half of the target images instead of the
dominant cluster, alone or joined to the source bank: a selection that keeps every look).

Reference rows: `refit-with-labels` fits PatchCore on the adaptation set's normal cells (the labels
a line does not have); `target-memory-oracle` builds the target memory from those normal cells
only (what a perfect selection of the target images could give).

`--uda NAME=VALUE ...` and `--memory NAME=VALUE ...` set uda's and target-memory's settings
(e.g. --uda clusters=4). Prints one table per direction and share with image AUROC, recall at 1%
false alarms (oracle threshold), the version's own verdicts, the gate, seconds and peak memory (rise
of the process's resident memory during the adaptation), and writes
benchmarks/results/uda-elpv.json; `--report FILE...` prints one table from results files.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import time
from pathlib import Path

import numpy as np

from .helpers import RESULTS, PeakMemory, machine, markdown
from .protocol import parse_settings

KEPT_SCORES = ("scores", "calibration_scores")  # in the results file with --keep-scores only
ADAPT_SIZE = 511  # the issue's adaptation set: 511 poly cells against 588 mono normals
METHODS = ["none", "target-memory", "roda", "bn-stats", "uda", "refit-with-labels"]
# Ablations of uda: the target memory without the dominant-cluster selection (the same memory of the
# new domain alone), and uda with the source bank kept beside the new memory.
VARIANTS = {
    "target-memory-alone": ("target-memory", {"memory": "target"}),
    "uda-with-source-bank": ("uda", {"memory": "union"}),
    # the cut where the outlier tail starts, always applied: the cluster already left most defective
    # images out, so the cut need only catch what is left
    "uda-mild-cut": ("uda", {"filter_cut_z": 3.0, "filter_tail_share": 0.0}),
    # the paper's method without its contrastive alignment (DSVDD on the source normals alone), and
    # with the clustering encoder psi = the trained phi instead of the frozen backbone
    "uda-global-no-alignment": ("uda-global", {"lambda_uda": 0.0}),
    "uda-global-psi-phi": ("uda-global", {"encoder": "phi"}),
    # the selection without clusters: the better-vouched half of the images (register_vouched_half),
    # alone and joined to the source bank
    "vouched-half-alone": ("vouched-half", {}),
    "vouched-half-union": ("vouched-half", {"memory": "union"}),
}


def register_vouched_half() -> None:
    """An ablation of uda's selection, as a method of this benchmark only: instead of the dominant
    cluster, the target images whose worst patch is among the better-vouched half (each image's
    highest mutual score at or below the median) build the memory. It keeps every look of the new
    domain and leaves out most defective images, so it tells which of the two the cluster earns."""
    from patchshift.core.adapt.methods import Adapter, adapter_names, get_adapter, register
    from patchshift.core.adapt.target_memory import (
        filter_settings,
        memory_version,
        target_features,
    )
    from patchshift.core.engine.contamination import filter_patches

    def adapt_vouched_half(parent, target, cfg, report_, progress, cancel):
        feats = target_features(parent.extractor, target, parent.config.batch_size, parent.device)
        n = len(feats)
        kept = filter_patches(feats.reshape(n, -1, feats.shape[-1]), filter_settings(cfg))
        worst = kept.scores.reshape(n, -1).amax(dim=1)
        members = worst <= worst.median()
        return memory_version(
            parent, parent.extractor, feats, cfg, report_, progress, cancel, members
        )

    if "vouched-half" not in adapter_names():
        uda = get_adapter("uda")
        register(
            Adapter(
                "vouched-half",
                "benchmark ablation: the better-vouched half of the target images build the memory",
                adapt_vouched_half,
                moves_memory=True,
                min_images=uda.min_images,
                options=uda.options,
                make_config=uda.make_config,
            )
        )


def png(cell: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(cell).save(buffer, format="PNG")
    return buffer.getvalue()


def split(labels: np.ndarray, types: np.ndarray, source: str, target: str, ratio: float, seed: int):
    """Indices of the source normals, the adaptation set (`ratio` defective) and the evaluation
    set."""
    rng = np.random.default_rng(seed)
    tgt_normal = rng.permutation(np.flatnonzero((types == target) & (labels == 0)))
    tgt_bad = rng.permutation(np.flatnonzero((types == target) & (labels == 1)))
    half_normal, half_bad = tgt_normal[: len(tgt_normal) // 2], tgt_bad[: len(tgt_bad) // 2]
    size = min(ADAPT_SIZE, len(half_normal) + len(half_bad))
    n_bad = min(len(half_bad), round(ratio * size))
    n_normal = min(len(half_normal), size - n_bad)
    n_bad = min(
        n_bad, round(ratio / (1 - ratio) * n_normal)
    )  # the share holds when normals run out
    return {
        "source": np.flatnonzero((types == source) & (labels == 0)),
        "adapt": np.concatenate([half_normal[:n_normal], half_bad[:n_bad]]),
        "eval": np.concatenate([tgt_normal[len(tgt_normal) // 2 :], tgt_bad[len(tgt_bad) // 2 :]]),
    }


def process_peak_gib() -> float:
    """The whole process's peak resident memory so far (VmHWM), the data and earlier rows
    included."""
    status = Path("/proc/self/status").read_text()
    return int(status.split("VmHWM:")[1].split()[0]) / 2**20


def evaluate(model, files: list[bytes], labels: np.ndarray) -> dict:
    from patchshift.core.common.images import load_target
    from patchshift.core.evaluation.metrics import image_auroc

    images = load_target(files, model.config.image_size)
    scores, _ = model.score_batches(images[i : i + 16] for i in range(0, len(images), 16))
    scores = np.asarray(scores)
    normal = np.sort(scores[labels == 0])
    oracle = normal[int(np.ceil(0.99 * len(normal))) - 1]  # flags 1% of the good cells
    return {
        "scores": [round(float(v), 5) for v in scores],
        "image_auroc": image_auroc(labels, scores),
        "recall_at_threshold": float((scores[labels == 1] > model.threshold).mean()),
        "false_alarms_at_threshold": float((scores[labels == 0] > model.threshold).mean()),
        "recall_oracle_1pct": float((scores[labels == 1] > oracle).mean()),
    }


def run_method(method: str, source_model, files, labels, parts, options: dict) -> dict:
    from patchshift.core.adapt import adapt
    from patchshift.core.adapt.methods import get_adapter
    from patchshift.core.engine.model_config import ModelConfig
    from patchshift.core.engine.patchcore import fit

    adapt_files = [files[i] for i in parts["adapt"]]
    row: dict = {}
    with PeakMemory() as memory:
        started = time.perf_counter()
        if method == "none":
            model = source_model
        elif method == "refit-with-labels":
            normals = [files[i] for i in parts["adapt"] if labels[i] == 0]
            model = fit(normals, ModelConfig(), device="auto")
        else:
            name, fixed = VARIANTS.get(method, (method, {}))
            if method == "target-memory-oracle":
                name = "target-memory"
                adapt_files = [files[i] for i in parts["adapt"] if labels[i] == 0]
            adapter = get_adapter(name)
            # a variant's settings go onto the config itself: some (lambda_uda) are not among the
            # options a user may set
            cfg = dataclasses.replace(
                adapter.configure(source_model, options.get(name, {})), **fixed
            )
            model, report = adapt(
                source_model,
                adapt_files,
                cfg,
                judge=True,
                source_images=[files[i] for i in parts["source"]],
            )
            row["gate"] = report.gate.better if report.gate else None
            wanted = ("kept_patch_share", "memory_rows", "filter_tail", "memory_images")
            row["details"] = {k: v for k, v in report.details.items() if k in wanted}
            row["gate_reason"] = report.gate.reason if report.gate else None
        row["seconds"] = time.perf_counter() - started
    row["peak_gib"] = memory.peak_gib
    row["process_peak_gib"] = process_peak_gib()
    evaluated = [files[i] for i in parts["eval"]]
    row.update(evaluate(model, evaluated, labels[parts["eval"]]))
    row["threshold"] = float(model.threshold)
    # the version's own normal scores (out of fold on the target for the adapted ones): what a
    # score can be normalised by without labels
    row["calibration_scores"] = [round(float(v), 5) for v in model.provenance.calibration_scores]
    return row


def source_for(direction: str, normals: list[bytes], args: argparse.Namespace):
    """PatchCore fitted on the source normals at the defaults (kept under --cache when given)."""
    from patchshift.core.artifact import load_model, save_model
    from patchshift.core.engine.model_config import ModelConfig
    from patchshift.core.engine.patchcore import fit

    stored = Path(args.cache) / f"{direction}-seed{args.seed}" if args.cache else None
    if stored is not None and stored.exists():
        return load_model(stored, "auto")
    model = fit(normals, ModelConfig(), "auto")
    if stored is not None:
        save_model(model, stored)
    return model


def report_table(paths: list[str]) -> str:
    """One table from results files: a row per method, image AUROC and recall at 1% (oracle
    threshold) per direction and share, the seconds and peak memory of the largest adaptation."""
    rows = [row for path in paths for row in json.loads(Path(path).read_text())["rows"]]
    cells = sorted({(r["direction"], r["ratio"]) for r in rows})
    methods = list(dict.fromkeys(r["method"] for r in rows))
    head = ["method"] + [f"{d}, {ratio:.0%}" for d, ratio in cells] + ["seconds", "peak GiB"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for method in methods:
        found = {(r["direction"], r["ratio"]): r for r in rows if r["method"] == method}
        values = [
            f"{found[c]['image_auroc']:.3f} / {found[c]['recall_oracle_1pct']:.2f}"
            if c in found
            else "–"
            for c in cells
        ]
        first = found.get(cells[0]) if cells else None  # mono -> poly: 511 target images
        cost = (
            [f"{first['seconds']:.0f}", f"{first['peak_gib']:.2f}"]
            if first and method != "none"
            else ["–", "–"]
        )
        lines.append("| " + " | ".join([method, *values, *cost]) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    from .elpv import elpv_cells

    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.uda_elpv",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--directions", nargs="*", default=["mono-poly", "poly-mono"])
    parser.add_argument("--ratios", nargs="*", type=float, default=[0.1, 0.3])
    parser.add_argument("--methods", nargs="*", default=METHODS)
    parser.add_argument("--uda", nargs="*", default=[], help="uda settings as NAME=VALUE")
    parser.add_argument(
        "--memory", nargs="*", default=[], help="target-memory settings as NAME=VALUE"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache", help="folder keeping the fitted source models between runs")
    parser.add_argument("--out", default=str(RESULTS / "uda-elpv.json"))
    parser.add_argument("--report", nargs="*", help="print one table from these results files")
    parser.add_argument(
        "--keep-scores",
        action="store_true",
        help="keep every evaluation score and the versions' calibration scores in the results file",
    )
    args = parser.parse_args(argv)
    if args.report:
        print(report_table(args.report))
        return
    options = {"uda": parse_settings(args.uda), "target-memory": parse_settings(args.memory)}
    register_vouched_half()

    cells, labels, types = elpv_cells()
    files = [png(cell) for cell in cells]
    rows: list[dict] = []
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    columns = [
        ("method", "method", ""),
        ("image_auroc", "image AUROC", ".3f"),
        ("recall_oracle_1pct", "recall at 1% (oracle thr.)", ".3f"),
        ("recall_at_threshold", "recall at own thr.", ".3f"),
        ("false_alarms_at_threshold", "false alarms", ".3f"),
        ("gate", "gate", ""),
        ("seconds", "seconds", ".0f"),
        ("peak_gib", "peak GiB", ".2f"),
    ]
    for direction in args.directions:
        source, target = direction.split("-")
        source_model = None
        for ratio in args.ratios:
            parts = split(labels, types, source, target, ratio, args.seed)
            if source_model is None:  # one source model per direction, as a line has one
                source_model = source_for(direction, [files[i] for i in parts["source"]], args)
            header = (
                f"{direction}, {labels[parts['adapt']].mean():.0%} defective: source "
                f"{len(parts['source'])} normals, adaptation {len(parts['adapt'])}, evaluation "
                f"{len(parts['eval'])} ({int(labels[parts['eval']].sum())} defective)"
            )
            print(header, flush=True)
            cell_rows = []
            for method in args.methods:
                row = run_method(method, source_model, files, labels, parts, options)
                row = {"direction": direction, "ratio": ratio, "method": method, **row}
                if not args.keep_scores:
                    row = {k: v for k, v in row.items() if k not in KEPT_SCORES}
                else:
                    row["eval_labels"] = labels[parts["eval"]].tolist()
                cell_rows.append(row)
                rows.append(row)
                print(
                    {
                        k: v
                        for k, v in row.items()
                        if k not in ("details", "eval_labels", *KEPT_SCORES)
                    },
                    flush=True,
                )
                out.write_text(
                    json.dumps(
                        {"rows": rows, "machine": machine(), "args": vars(args)},
                        indent=2,
                        default=str,
                    )
                )
            print(f"\n{header}\n" + markdown(cell_rows, columns) + "\n", flush=True)


if __name__ == "__main__":
    main()
