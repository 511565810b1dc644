"""Contaminated training sets: fit with and without the patch filter (`--contamination auto`).

    python -m benchmarks.training_contamination [--datasets bsd deeppcb] [--shares 0 0.1 0.2]

A share of train/good is replaced by defective test images chosen at random (seeded); those
images leave the evaluation set, so no image is both trained on and scored. Each training set is
fitted twice, `contamination=off` and `auto`, and evaluated on the rest of the test set: image and
pixel AUROC, AUPRO, the false-alarm rate and recall at the stored threshold, fit seconds.
Writes benchmarks/results/contamination.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from .helpers import DATASETS, DEFAULT_DATA_ROOT, RESULTS, machine, markdown, model_settings

COLUMNS = [
    ("dataset", "dataset", ""),
    ("share", "defective share of train", ".0%"),
    ("n_defective", "defective in train", "d"),
    ("contamination", "filter", ""),
    ("image_auroc", "image AUROC", ".3f"),
    ("pixel_auroc", "pixel AUROC", ".3f"),
    ("aupro", "AUPRO", ".3f"),
    ("false_alarm_rate", "false alarms", ".1%"),
    ("recall", "recall", ".1%"),
    ("fit_s", "fit s", ".0f"),
]


def contaminated_split(
    train: list[Path], samples: list, share: float, seed: int
) -> tuple[list[Path], list]:
    """(training paths, evaluation samples): `share` of the training set replaced by defective test
    images."""
    rng = np.random.default_rng(seed)
    n_bad = round(share * len(train))
    defective = [i for i, s in enumerate(samples) if s.label == 1]
    moved = set(rng.permutation(defective)[:n_bad].tolist())
    kept_train = [train[i] for i in np.sort(rng.permutation(len(train))[: len(train) - n_bad])]
    return kept_train + [samples[i].path for i in sorted(moved)], [
        s for i, s in enumerate(samples) if i not in moved
    ]


def main(argv: list[str] | None = None) -> None:
    from patchshift.core.common.fileio import atomic_write_bytes
    from patchshift.core.engine.model_config import ModelConfig
    from patchshift.core.engine.patchcore import fit
    from patchshift.core.evaluation.data import labelled_samples, train_images
    from patchshift.core.evaluation.evaluate import evaluate

    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.training_contamination",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--data-root", default=str(DEFAULT_DATA_ROOT))
    parser.add_argument("--datasets", nargs="*", default=list(DATASETS))
    parser.add_argument("--shares", nargs="*", type=float, default=[0.0, 0.1, 0.2])
    parser.add_argument(
        "--image-size", default=None, help="override the datasets' model input size"
    )
    parser.add_argument(
        "--filters",
        nargs="+",
        default=["off", "auto"],
        choices=["off", "auto"],
        help="which fits to run per share",
    )
    parser.add_argument(
        "--set", nargs="*", default=[], metavar="FIELD=VALUE", help="model settings for every fit"
    )
    parser.add_argument("--device", default="auto")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(RESULTS / "contamination.json"))
    args = parser.parse_args(argv)
    from .protocol import parse_variant

    _, extra = parse_variant("set:" + ",".join(args.set))
    rows = []
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)

    def save(complete: bool) -> None:
        atomic_write_bytes(
            args.out,
            json.dumps(
                {"machine": machine(), "rows": rows, "complete": complete}, indent=2
            ).encode(),
        )

    for name in args.datasets:
        root = Path(args.data_root) / name
        train, samples = train_images(root), labelled_samples(root)
        settings = {**model_settings(name, args.image_size), **extra}
        for share in args.shares:
            sources, evaluation = contaminated_split(train, samples, share, args.seed)
            for contamination in args.filters:
                started = time.perf_counter()
                model = fit(
                    sources,
                    ModelConfig(**settings, contamination=contamination, seed=args.seed),
                    device=args.device,
                )
                fit_s = time.perf_counter() - started
                result = evaluate(model, evaluation).to_dict()
                rows.append(
                    {
                        "dataset": name,
                        "share": share,
                        "n_defective": round(share * len(train)),
                        "contamination": contamination,
                        "fit_s": fit_s,
                        **{
                            k: result[k]
                            for k in (
                                "image_auroc",
                                "pixel_auroc",
                                "aupro",
                                "false_alarm_rate",
                                "recall",
                            )
                        },
                        "details": model.provenance.details,
                    }
                )
                print(rows[-1], flush=True)
                save(complete=False)  # a long run keeps the fits it finished
    print(f"\n{machine()}\n")
    print(markdown(rows, COLUMNS))
    save(complete=True)


if __name__ == "__main__":
    main()
