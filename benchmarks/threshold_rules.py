"""How a version's threshold is carried to a new condition, compared on stored shift-benchmark
scores.

Reads a results file written with `python -m benchmarks.shift --keep-scores` (every image's
score, the target images' out-of-fold scores and the source's calibration scores) and prints, per
rule, the share of held-out good images flagged (false alarms) and of defective images caught
(recall):
  Gumbel law       an extreme-value law fitted through the raw target scores' 10th percentile and
                   median, its 99th percentile (the rule before the vouched normal scores:
                   benchmarks/verdicts.py compares the rule in use)
  source shape     the source calibration's scores moved and stretched so their 10th percentile and
                   median land on the target's; its threshold goes along (measured, not adopted)
  quartile shift   the rule before it: the distance above the lower quartile kept from the source
  median shift     the same anchored at the median
  lower-band spread  the distance above the 30th percentile scaled by the 10th-30th band's width
  robust z-score   the rule before it: median and MAD of the target scores
  source kept      the source threshold unchanged
  oracle 1%        the 99th percentile of the held-out good images' scores (needs labels)

  python -m benchmarks.threshold_rules benchmarks/results/shift-bsd-thr.json
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from patchshift.core.engine.threshold import MIN_TRANSFER_IMAGES, gumbel_threshold

from .helpers import markdown


def quartile_shift(source: np.ndarray, threshold: float, target: np.ndarray) -> float:
    """The rule before the Gumbel law: keep the distance above the lower quartile (carries no change
    of spread)."""
    if source.size == 0 or target.size < MIN_TRANSFER_IMAGES:
        return threshold
    return float(threshold + np.quantile(target, 0.25) - np.quantile(source, 0.25))


def robust_z_transfer(source: np.ndarray, threshold: float, target: np.ndarray) -> float:
    """The rule before the quartile shift: keep the robust z-score (median, MAD)."""
    source_mad = np.median(np.abs(source - np.median(source)))
    target_mad = np.median(np.abs(target - np.median(target)))
    if source_mad <= 0 or target_mad <= 0:
        return threshold
    return float(np.median(target) + (threshold - np.median(source)) / source_mad * target_mad)


def median_shift(source: np.ndarray, threshold: float, target: np.ndarray) -> float:
    """A variant: the shift of the median (fewer alarms; gives way once half the batch is
    defective)."""
    return float(threshold + np.median(target) - np.median(source))


def affine_rule(quantiles: tuple[float, float]):
    """The source calibration's scores moved and stretched so that these two percentiles land on the
    target's (a change of gain and offset); the source threshold goes along."""

    def rule(source: np.ndarray, threshold: float, target: np.ndarray) -> float:
        if source.size == 0 or target.size < MIN_TRANSFER_IMAGES:
            return threshold
        (low_s, high_s), (low_t, high_t) = (
            np.quantile(source, quantiles),
            np.quantile(target, quantiles),
        )
        if high_s <= low_s or high_t <= low_t:
            return threshold
        return float(high_t + (threshold - high_s) * (high_t - low_t) / (high_s - low_s))

    return rule


FALSE_ALARM_RATE = 0.01  # the fit's default, which every stored run used
# The pair these rules were compared at: the law through the raw target scores' 10th percentile and
# median. The product's rule now reads vouched normal scores at another pair (benchmarks/verdicts.py
# compares those).
RAW_PAIR = (0.10, 0.50)


def gumbel_rule(quantiles: tuple[float, float]):
    """The Gumbel law through these percentiles of the target scores (the default pair, or
    --gumbel-pairs)."""
    return lambda source, threshold, target: (
        gumbel_threshold(target, FALSE_ALARM_RATE, threshold, quantiles).value
    )


RULES = {
    "Gumbel law": gumbel_rule(RAW_PAIR),
    "source shape": affine_rule(RAW_PAIR),
    "quartile shift": quartile_shift,
    "median shift": median_shift,
    # the 10th-30th band, a part of the batch that stays normal while a defective share is high
    "lower-band spread": affine_rule((0.1, 0.3)),
    "robust z-score": robust_z_transfer,
    "source kept": lambda source, threshold, target: threshold,
}


def rule_rows(
    result: dict,
    source_threshold: float,
    threshold_images: int = 0,
    seed: int = 0,
    good_only: bool = False,
    extra_rules: dict | None = None,
) -> list[dict]:
    """One row per (condition, method, rule) with its threshold, false alarms and recall.

    threshold_images > 0 keeps the out-of-fold scores of the subset the target memory would score
    (they are the full run's scores of those images), for files that scored every image.
    good_only: the rules see only the good target images' scores, as from a batch without defects
    (a line's batch is mostly good parts; the benchmark's is half defective). The version itself was
    adapted on the whole batch."""
    from patchshift.core.adapt.target_memory import scored_images

    source = np.asarray(result["source_calibration_scores"], dtype=np.float64)
    labels, adapt_labels = (
        np.asarray(result["eval_labels"]),
        np.asarray(result.get("adapt_labels", [])),
    )
    rows = []
    for row in result["rows"]:
        if "target_scores" not in row or "scores" not in row:
            continue
        scores, target = np.asarray(row["scores"]), np.asarray(row["target_scores"])
        index = (
            np.arange(len(target))
            if row.get("target_index") is None
            else np.asarray(row["target_index"])
        )
        if threshold_images and row.get("target_index") is None and row["method"] != "none":
            index = scored_images(len(target), threshold_images, seed).numpy()
            target = target[index]
        if good_only:
            target = target[adapt_labels[index] == 0]
        good, bad = scores[labels == 0], scores[labels == 1]
        thresholds = {
            name: rule(source, source_threshold, target)
            for name, rule in {**RULES, **(extra_rules or {})}.items()
        }
        thresholds["oracle 1%"] = float(np.quantile(good, 0.99))
        for name, value in thresholds.items():
            rows.append(
                {
                    "condition": f"{row['corruption']} {row['severity']}",
                    "method": row["method"],
                    "rule": name,
                    "threshold": value,
                    "fa": 100 * float((good > value).mean()),
                    "recall": 100 * float((bad > value).mean()),
                }
            )
    return rows


def summary(rows: list[dict]) -> list[dict]:
    out = []
    for method in dict.fromkeys(r["method"] for r in rows):
        for rule in dict.fromkeys(r["rule"] for r in rows):
            chosen = [r for r in rows if r["method"] == method and r["rule"] == rule]
            out.append(
                {
                    "method": method,
                    "rule": rule,
                    "conditions": len(chosen),
                    "fa": np.mean([r["fa"] for r in chosen]),
                    "fa max": max(r["fa"] for r in chosen),
                    "recall": np.mean([r["recall"] for r in chosen]),
                }
            )
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.threshold_rules",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("results", nargs="+", help="shift results files written with --keep-scores")
    parser.add_argument(
        "--threshold-images",
        type=int,
        default=0,
        help="emulate the target memory scoring only this many images",
    )
    parser.add_argument(
        "--threshold",
        type=float,
        default=None,
        help="the source threshold (default: the one stored, else its calibration's 99th "
        "percentile)",
    )
    parser.add_argument(
        "--good-only",
        action="store_true",
        help="the rules see only the good target images' scores: a batch without defects, as on a "
        "line",
    )
    parser.add_argument(
        "--gumbel-pairs",
        nargs="*",
        default=[],
        metavar="LOW,HIGH",
        help="also the Gumbel law through these percentiles of the target scores, e.g. 0.05,0.25",
    )
    parser.add_argument(
        "--pool",
        action="store_true",
        help="one table over every file's rows (one product run in parts)",
    )
    args = parser.parse_args(argv)
    try:
        pairs = [tuple(float(v) for v in pair.split(",")) for pair in args.gumbel_pairs]
    except ValueError:
        parser.error("--gumbel-pairs takes LOW,HIGH percentiles as fractions, e.g. 0.05,0.25")
    if any(len(p) != 2 or not 0 < p[0] < p[1] < 1 for p in pairs):
        parser.error("--gumbel-pairs takes LOW,HIGH with 0 < LOW < HIGH < 1")
    extra = {f"Gumbel {low:g}-{high:g}": gumbel_rule((low, high)) for low, high in pairs}
    pooled = []
    for path in args.results:
        result = json.loads(open(path).read())
        if "source_calibration_scores" not in result:
            parser.error(f"{path} holds no scores; run the shift benchmark with --keep-scores")
        threshold = (
            args.threshold
            or result.get("source_threshold")
            or float(np.quantile(result["source_calibration_scores"], 0.99))
        )
        rows = rule_rows(
            result, threshold, args.threshold_images, good_only=args.good_only, extra_rules=extra
        )
        pooled += rows
        if not args.pool:
            print(f"\n{path}: source threshold {threshold:.2f}\n")
            print(summary_markdown(rows))
    if args.pool:
        print(f"\n{len(args.results)} files pooled\n")
        print(summary_markdown(pooled))


def summary_markdown(rows: list[dict]) -> str:
    return markdown(
        summary(rows),
        [
            ("method", "method", ""),
            ("rule", "rule", ""),
            ("conditions", "conditions", "d"),
            ("fa", "false alarms % (mean)", ".1f"),
            ("fa max", "false alarms % (worst)", ".1f"),
            ("recall", "recall % (mean)", ".1f"),
        ],
    )


if __name__ == "__main__":
    main()
