"""The engine's defaults chosen with each product left out.

Each variant changes one engine setting of the shipped ModelConfig (backbone, feature reduction,
bank cap, calibration); every product is fitted on its training images and evaluated on its whole
test set under each variant (engine_accuracy.run_dataset: one child process per fit). Then, for
every product, a setting is chosen on the other products alone and that product is reported under
it, beside the shipped default and the variant that would have been best for it in hindsight. The
choice is among the variants every product ran:

- ranking settings (backbone, reduction, bank cap): the variant whose worst other product has the
  highest image AUROC (ties: the higher mean);
- calibration settings: the variant whose worst other product's false-alarm rate on test/good lies
  nearest the asked rate.

    python -m benchmarks.engine_defaults --data-root /tmp/data --datasets tiles elpv-poly
    python -m benchmarks.engine_defaults --datasets bsd deeppcb
    python -m benchmarks.engine_defaults --report

Every fit is stored as it ends (benchmarks/results/engine-defaults.json, keyed by product and
variant), so a stopped run resumes where it was and products from several data roots share a report.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np

from patchshift.core.common.fileio import atomic_write_bytes
from patchshift.core.engine.model_config import ModelConfig

from .engine_accuracy import run_dataset
from .helpers import DEFAULT_DATA_ROOT, RESULTS, dataset_settings, machine, markdown

DEFAULT = "default"
# One setting changed from ModelConfig's defaults per variant.
RANKING_VARIANTS: dict[str, dict] = {
    DEFAULT: {},
    "backbone=lite0": {"backbone": "tf_efficientnet_lite0"},
    "backbone=lite2": {"backbone": "tf_efficientnet_lite2"},
    "reduction=pca": {"feature_reduction": "pca"},
    "reduction=none": {"feature_reduction": "none"},
    "bank cap=10000": {"coreset_max_size": 10_000},
    "bank cap=40000": {"coreset_max_size": 40_000},
}
CALIBRATION_VARIANTS: dict[str, dict] = {
    DEFAULT: {},
    "calibration=holdout": {"calibration": "holdout"},
    "calibration folds=5": {"calibration_folds": 5},
}
VARIANTS = {**RANKING_VARIANTS, **CALIBRATION_VARIANTS}
STORE = RESULTS / "engine-defaults.json"
ASKED = ModelConfig().false_alarm_rate  # no variant changes the asked rate


def key(product: str, variant: str) -> str:
    return f"{product}|{variant}"


def load(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {"machine": machine(), "runs": {}}


def measure(products: list[str], variants: list[str], root: Path, device: str, path: Path) -> dict:
    """Fit and evaluate every (product, variant) not yet stored; store each as it ends."""
    store = load(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as workdir:
        for variant in variants:  # every product under one variant before the next variant
            for product in products:
                if key(product, variant) in store["runs"]:
                    continue
                overrides = {**dataset_settings(product), **VARIANTS[variant]}
                row = run_dataset(product, root / product, overrides, device, Path(workdir))
                store["runs"][key(product, variant)] = {"variant": variant, **row}
                atomic_write_bytes(path, json.dumps(store, indent=1).encode())
                print(
                    f"{product} {variant}: image AUROC {row['image_auroc']:.3f}, false alarms "
                    f"{row['false_alarm_rate']:.3f}, fit {row['fit_s']:.0f} s",
                    flush=True,
                )
    return store


def ranking_key(rows: list[dict]) -> tuple[float, float]:
    values = [r["image_auroc"] for r in rows]
    return (min(values), float(np.mean(values)))


def calibration_key(rows: list[dict]) -> tuple[float, float]:
    misses = [abs(r["false_alarm_rate"] - ASKED) for r in rows]
    return (-max(misses), -float(np.mean(misses)))


def choose(runs: dict, products: list[str], candidates: list[str], score) -> str | None:
    """The candidate that `score` ranks highest on `products`."""
    if not candidates or not products:
        return None
    return max(candidates, key=lambda v: score([runs[key(p, v)] for p in products]))


def report_rows(store: dict, variants: dict, score) -> list[dict]:
    """Each product under the variant chosen on the others, among the variants measured on every
    product (a variant a product lacks could be chosen for it and not reported)."""
    runs = store["runs"]
    products = sorted({r["dataset"] for r in runs.values()})
    candidates = [v for v in variants if all(key(p, v) in runs for p in products)]
    if DEFAULT not in candidates:
        return []
    rows = []
    for product in products:
        others = [p for p in products if p != product]
        chosen = choose(runs, others, candidates, score)
        if chosen is None:
            continue
        mine = [v for v in variants if key(product, v) in runs]
        best = max(mine, key=lambda v: score([runs[key(product, v)]]))
        at = {name: runs[key(product, v)] for name, v in (("chosen", chosen), ("default", DEFAULT))}
        at["best"] = runs[key(product, best)]
        rows.append(
            {
                "product": product,
                "chosen": chosen,
                "best": best,
                **{f"{name} {m}": r.get(m) for name, r in at.items() for m in METRICS},
            }
        )
    return rows


METRICS = ("image_auroc", "pixel_auroc", "aupro", "false_alarm_rate", "recall", "oracle_recall")


def percent(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f}"


def ranking_table(store: dict) -> str:
    rows = report_rows(store, RANKING_VARIANTS, ranking_key)
    rows.sort(key=lambda r: r["chosen image_auroc"])  # worst product first
    return markdown(
        [
            {
                "product": r["product"],
                "chosen": r["chosen"],
                "image": f"{r['chosen image_auroc']:.3f} / {r['default image_auroc']:.3f}",
                "pixel": "no masks"
                if r["chosen pixel_auroc"] is None
                else f"{r['chosen pixel_auroc']:.3f} / {r['chosen aupro']:.3f}",
                "oracle": percent(r["chosen oracle_recall"]),
                "best": f"{r['best']}: {r['best image_auroc']:.3f}",
                "lost": f"{r['best image_auroc'] - r['chosen image_auroc']:.3f}",
            }
            for r in rows
        ],
        [
            ("product", "product (worst first)", ""),
            ("chosen", "setting chosen on the others", ""),
            ("image", "image AUROC: chosen / shipped default", ""),
            ("pixel", "pixel AUROC / AUPRO (chosen)", ""),
            ("oracle", "oracle recall at 1% (chosen) %", ""),
            ("best", "best for it in hindsight", ""),
            ("lost", "lost to hindsight", ""),
        ],
    )


def calibration_table(store: dict) -> str:
    rows = report_rows(store, CALIBRATION_VARIANTS, calibration_key)
    rows.sort(key=lambda r: -abs(r["chosen false_alarm_rate"] - ASKED))
    return markdown(
        [
            {
                "product": r["product"],
                "chosen": r["chosen"],
                "chosen fa": f"{percent(r['chosen false_alarm_rate'])} / "
                f"{percent(r['chosen recall'])}",
                "default fa": f"{percent(r['default false_alarm_rate'])} / "
                f"{percent(r['default recall'])}",
                "oracle": percent(r["default oracle_recall"]),
            }
            for r in rows
        ],
        [
            ("product", "product (worst first)", ""),
            ("chosen", "calibration chosen on the others", ""),
            ("chosen fa", "false alarms / recall %, chosen (1% asked)", ""),
            ("default fa", "shipped default", ""),
            ("oracle", "oracle recall %", ""),
        ],
    )


def variant_table(store: dict) -> str:
    runs = store["runs"]
    products = sorted({r["dataset"] for r in runs.values()})
    rows = [
        {
            "variant": v,
            **{
                p: (
                    f"{runs[key(p, v)]['image_auroc']:.3f} / "
                    f"{percent(runs[key(p, v)]['false_alarm_rate'])}% / "
                    f"{runs[key(p, v)]['fit_s']:.0f} s"
                    if key(p, v) in runs
                    else "–"
                )
                for p in products
            },
        }
        for v in VARIANTS
    ]
    return markdown(rows, [("variant", "variant", "")] + [(p, p, "") for p in products])


def report(store: dict) -> str:
    return "\n\n".join(
        [
            f"Machine: {store['machine']}",
            "Every variant: image AUROC / false alarms at 1% asked / fit seconds",
            variant_table(store),
            "Ranking settings, each product under the variant chosen on the others:",
            ranking_table(store),
            "Calibration, each product under the variant chosen on the others:",
            calibration_table(store),
        ]
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.engine_defaults",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--data-root", default=str(DEFAULT_DATA_ROOT))
    parser.add_argument("--datasets", nargs="*", default=[])
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--device", default="auto")
    parser.add_argument("--store", default=str(STORE))
    parser.add_argument("--report", action="store_true", help="only print the stored runs' tables")
    args = parser.parse_args(argv)
    path = Path(args.store)
    if args.report:
        if not path.exists():
            raise SystemExit(f"no stored runs at {path}: run the benchmark first")
        store = load(path)
    else:
        if not args.datasets:
            raise SystemExit("name the products to measure with --datasets (or pass --report)")
        store = measure(args.datasets, args.variants, Path(args.data_root), args.device, path)
    print(report(store))


if __name__ == "__main__":
    main()
