"""The outlier tail of the target memory's mutual scores, per condition of the shift benchmark.

    python -m benchmarks.filter_tail [--dataset bsd] [--corruptions clean brightness ...]
    [--severities 5 3]

The shift benchmark's adaptation batch (the same 20% split and seed), corrupted, through the source
backbone and the contamination filter's scoring: the share of the mutual scores beyond median + 3
robust deviations (core.engine.contamination.outlier_tail), which decides whether the target
memory's cut applies with `filter_tail_share` 0.00135 (NORMAL_TAIL_SHARE: a normal distribution's
share there). Label-free: no mask is read. Next to it, how well the activation gate's reference
ranking (each image's worst mutual score, core.adapt.gate.BatchRanking) separates the batch's
defective images from its good ones: image AUROC, the only use of the labels here. Writes
benchmarks/results/filter-tail-<dataset>.json.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .helpers import machine, markdown
from .protocol import adaptation_batch, add_protocol_arguments, as_float, corrupt_uint8

COLUMNS = [
    ("dataset", "dataset", ""),
    ("condition", "condition", ""),
    ("images", "images", "d"),
    ("tail", "scores beyond 3 robust deviations", ".2%"),
    ("cut", "the rule cuts", ""),
    ("reference_auroc", "gate's reference ranking, image AUROC", ".3f"),
]


def main(argv: list[str] | None = None) -> None:
    from patchshift.core.adapt.gate import BatchRanking
    from patchshift.core.adapt.target_memory import target_features
    from patchshift.core.common.fileio import atomic_write_bytes
    from patchshift.core.engine.contamination import (
        NORMAL_TAIL_SHARE,
        FilterSettings,
        cut_applies,
        mutual_scores,
    )
    from patchshift.core.evaluation.metrics import auroc

    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.filter_tail",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_protocol_arguments(parser, severities=[5, 3])
    args = parser.parse_args(argv)
    model, clean, batch_labels = adaptation_batch(args)
    rows = []
    for corruption in args.corruptions:
        for severity in [None] if corruption == "clean" else args.severities:
            images = (
                clean if severity is None else corrupt_uint8(clean, corruption, severity, args.seed)
            )
            feats = target_features(
                model.extractor, as_float(images), model.config.batch_size, model.device
            )
            n, h, w, d = feats.shape
            ranking = BatchRanking.of(
                mutual_scores(
                    feats.reshape(n, h * w, d).to(model.device), FilterSettings(seed=args.seed)
                )
            )
            rows.append(
                {
                    "dataset": args.dataset,
                    "condition": corruption if severity is None else f"{corruption} {severity}",
                    "images": n,
                    "tail": ranking.tail,
                    "cut": "yes"
                    if cut_applies(ranking.tail, NORMAL_TAIL_SHARE)
                    else "no: every patch kept",
                    "reference_auroc": auroc(batch_labels, ranking.scores),
                }
            )
            print(rows[-1], flush=True)
    out = Path(args.out_dir) / f"filter-tail-{args.dataset}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(
        out, json.dumps({"machine": machine(), "args": vars(args), "rows": rows}, indent=2).encode()
    )
    print(f"\nthe outlier tail of the mutual scores ({machine()})")
    print(markdown(rows, COLUMNS))


if __name__ == "__main__":
    main()
