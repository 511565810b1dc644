"""Two memories of the new domain, one score: uda's (the dominant cluster) and the target memory of
every target image, each version's score normalised without labels, then combined.

Reads `python -m benchmarks.uda_elpv --methods uda target-memory-alone target-memory --keep-scores`
results. Normalisations: by the version's own normal scores (calibration scores: the target images
scored out of fold), as (s - median) / MAD, or by its threshold (s / threshold). Combinations: the
mean, the larger and the smaller of the two normalised scores. Prints image AUROC per direction and
defective share beside the two memories alone and the target memory (the floor of issue 35).

    python -m benchmarks.uda_ensemble benchmarks/results/uda-elpv.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from patchshift.core.evaluation.metrics import image_auroc

from .helpers import markdown

PAIR = ("uda", "target-memory-alone")


def robust_z(row: dict) -> np.ndarray:
    reference = np.asarray(row["calibration_scores"])
    median = np.median(reference)
    mad = np.median(np.abs(reference - median)) or 1e-9
    return (np.asarray(row["scores"]) - median) / mad


def by_threshold(row: dict) -> np.ndarray:
    return np.asarray(row["scores"]) / row["threshold"]


NORMALISED = {"z": robust_z, "ratio": by_threshold}
COMBINED = {"mean": lambda a, b: (a + b) / 2, "max": np.maximum, "min": np.minimum}


def cells(rows: list[dict]) -> list[dict]:
    out = []
    for direction, ratio in sorted({(r["direction"], r["ratio"]) for r in rows}):
        found = {r["method"]: r for r in rows if (r["direction"], r["ratio"]) == (direction, ratio)}
        if not all(m in found for m in PAIR):
            continue
        labels = np.asarray(found[PAIR[0]]["eval_labels"])
        line = {"cell": f"{direction} {ratio:.0%}"}
        for method in (*PAIR, "target-memory"):
            if method in found:
                line[method] = image_auroc(labels, np.asarray(found[method]["scores"]))
        for norm_name, normalise in NORMALISED.items():
            a, b = (normalise(found[m]) for m in PAIR)
            for comb_name, combine in COMBINED.items():
                line[f"{comb_name} {norm_name}"] = image_auroc(labels, combine(a, b))
        out.append(line)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.uda_ensemble", description=__doc__)
    parser.add_argument("files", nargs="+")
    args = parser.parse_args(argv)
    rows = [row for path in args.files for row in json.loads(Path(path).read_text())["rows"]]
    table = cells(rows)
    keys = [k for k in table[0] if k != "cell"] if table else []
    print(markdown(table, [("cell", "cell", ""), *((k, k, ".3f") for k in keys)]))


if __name__ == "__main__":
    main()
