"""A version's threshold from known-good images (`patchshift calibrate`), on the shift benchmark's
adapted versions.

Reads shift results written with `--keep-scores`. For every adapted version (target-memory rows)
and condition, `--draws` times: K good images drawn from the held-out evaluation set stand for the
parts a person vouches for; the threshold is what `calibrate` sets from their scores
(core.engine.recalibration.known_good_threshold, 1% asked); it is judged on the other held-out
images: false alarms on the remaining good ones, recall on the defective ones, against the oracle
(the threshold flagging at most 1% of those remaining good images). Prints per product and K the
mean false alarms, the share of draws within 2%, the recall against the oracle's, how often the
stated interval held the rate and how often the threshold was supported.

    python -m benchmarks.known_good benchmarks/results/shift-*-thr.json [--sizes 20 50 90]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from patchshift.core.engine.recalibration import known_good_threshold
from patchshift.core.evaluation.metrics import oracle_threshold

from .helpers import markdown

RATE = 0.01
METHOD = "target-memory"


def judged(good: np.ndarray, bad: np.ndarray, k: int, draws: int, seed: int = 0) -> list[dict]:
    """One row per draw: K of `good` give the threshold, the rest of `good` and `bad` judge it."""
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(draws):
        order = rng.permutation(len(good))
        known, rest = good[order[:k]], good[order[k:]]
        estimate = known_good_threshold(known, RATE)
        oracle = oracle_threshold(rest, RATE)
        low, high = estimate.false_alarm_interval
        fa = float((rest > estimate.value).mean())
        rows.append(
            {
                "fa": fa,
                "recall": float((bad > estimate.value).mean()),
                "oracle": float((bad > oracle).mean()),
                "covered": low <= fa <= high,
                "supported": estimate.supported,
            }
        )
    return rows


def summary(product: str, k: int, rows: list[dict], rest: int) -> dict:
    recall, oracle = np.mean([r["recall"] for r in rows]), np.mean([r["oracle"] for r in rows])
    return {
        "product": product,
        "k": k,
        "rest": rest,
        "fa": 100 * np.mean([r["fa"] for r in rows]),
        "within": 100 * np.mean([r["fa"] <= 2 * RATE + 1e-12 for r in rows]),
        "recall": 100 * recall,
        "oracle": 100 * oracle,
        "share": 100 * recall / oracle if oracle > 0 else float("nan"),
        "covered": 100 * np.mean([r["covered"] for r in rows]),
        "supported": 100 * np.mean([r["supported"] for r in rows]),
    }


COLUMNS = [
    ("product", "product", ""),
    ("k", "known-good images", "d"),
    ("rest", "held-out good judging it (per condition, min)", "d"),
    ("fa", "false alarms %", ".1f"),
    ("within", "draws within 2% %", ".0f"),
    ("recall", "recall %", ".1f"),
    ("oracle", "oracle recall %", ".1f"),
    ("share", "of the oracle's %", ".0f"),
    ("covered", "rate inside the stated interval %", ".0f"),
    ("supported", "supported %", ".0f"),
]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.known_good",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("files", nargs="+", help="shift results files written with --keep-scores")
    parser.add_argument("--sizes", nargs="*", type=int, default=[20, 50, 90])
    parser.add_argument("--draws", type=int, default=50)
    args = parser.parse_args(argv)
    out = []
    for path in args.files:
        result = json.loads(Path(path).read_text())
        labels = np.asarray(result["eval_labels"])
        rows = [r for r in result["rows"] if r["method"] == METHOD and "scores" in r]
        if not rows:
            raise SystemExit(f"{path}: no {METHOD} rows with scores (run shift with --keep-scores)")
        for k in args.sizes:
            n_good = int((labels == 0).sum())
            if n_good - k < 1 / RATE / 2:  # fewer than 50 left to judge a 1% rate: skip
                print(f"{result['dataset']}: {n_good} good images leave too few beside {k}")
                continue
            judged_rows = []
            for row in rows:
                scores = np.asarray(row["scores"], dtype=np.float64)
                judged_rows += judged(scores[labels == 0], scores[labels == 1], k, args.draws)
            out.append(summary(result["dataset"], k, judged_rows, n_good - k))
    print(markdown(out, COLUMNS))


if __name__ == "__main__":
    main()
