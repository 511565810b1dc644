"""The verdict after adaptation: the threshold rule's settings chosen with one product left out.

Reads shift results written with `--keep-scores` (one file or more per product; the product is the
file's dataset) and, for every product, chooses which patches count in a target image's normal score
(AdaptConfig.threshold_patch_z), the Gumbel law's percentile pair and which images the law is
fitted to (RULES) on the other products only,
then reports that product's target-memory versions at the chosen settings: false alarms and recall
at the version's own threshold, the oracle's recall (the threshold flagging at most 1% of the
held-out good images), whether the batch was found to support the threshold, on batches with 0%, 25%
and the split's share (about half) of defective images.

    python -m benchmarks.verdicts benchmarks/results/shift-*-thr.json

A condition meets the goal when its threshold flags at most twice the asked share of good images and
catches at least 70% of what the oracle catches. The patch z and the pair are chosen for the most
conditions meeting it (ties: the nearest to it, then the lower worst false-alarm rate). The support
factor is a statement of how sure the law must be, not tuned: "supported, missing goal" counts the
versions the gate would let live with a threshold that misses the goal.
"""

from __future__ import annotations

import argparse

import numpy as np

from patchshift.core.adapt import AdaptConfig
from patchshift.core.engine.threshold import (
    GUMBEL_QUANTILES,
    SUPPORT_FACTOR,
    gumbel_reduced,
    gumbel_threshold,
)
from patchshift.core.evaluation.metrics import oracle_threshold

from .helpers import markdown

RATE = 0.01  # the fit's default, which every stored run used
PAIRS = ((0.05, 0.25), (0.05, 0.5), (0.1, 0.3), (0.1, 0.5), (0.2, 0.5), (0.25, 0.75), (0.1, 0.7))
SHARES = (0.0, 0.25, None)  # None: the split's own share (about half)
# Which target images the law is fitted to (law_input), or "gev": every image, with the law's tail
# shape fitted too (gev_threshold); the shipped rule is "all" (--rules adds the others to the
# choice: docs/design-history.md, "The threshold after adaptation", rejected).
RULES = ("all", "suspect-free", "scaled", "gev")
GEV_SHAPE_LIMIT = 0.5  # |xi| at most this: beyond it three percentiles of ~100 images say nothing
METHOD = "target-memory"

DEFAULTS = (
    f"{AdaptConfig().threshold_patch_z:g}",
    GUMBEL_QUANTILES,
    SUPPORT_FACTOR,
    "all",
)  # keys of benchmarks.shift.vouched_score_grid


def batches(result: dict, seed: int = 0) -> list[dict]:
    """Per condition and defective share: the target scores the rule sees and the held-out scores it
    is judged on."""
    labels, adapt_labels = np.asarray(result["eval_labels"]), np.asarray(result["adapt_labels"])
    out = []
    for row in result["rows"]:
        if row["method"] != METHOD or "vouched_scores" not in row:
            continue
        target = {
            key: np.asarray(values, dtype=np.float64)
            for key, values in row["vouched_scores"].items()
        }
        index = np.asarray(row["target_index"])
        kinds = adapt_labels[index]
        scores = np.asarray(row["scores"], dtype=np.float64)
        good, bad = scores[labels == 0], scores[labels == 1]
        oracle = oracle_threshold(good, RATE)
        for share in SHARES:
            chosen = np.arange(len(index)) if share is None else defective_share(kinds, share, seed)
            out.append(
                {
                    "product": result["dataset"],
                    "condition": f"{row['corruption']} {row['severity']}",
                    "share": float(kinds[chosen].mean()),
                    "asked_share": share,
                    "target": {z: values[chosen] for z, values in target.items()},
                    "good": good,
                    "bad": bad,
                    "oracle_recall": float((bad > oracle).mean()),
                }
            )
    return out


def defective_share(kinds: np.ndarray, share: float, seed: int) -> np.ndarray:
    """Every good image and as many defective ones (a seeded draw) as make `share` of the batch."""
    good, bad = np.flatnonzero(kinds == 0), np.flatnonzero(kinds == 1)
    n_bad = min(len(bad), int(round(share / (1 - share) * len(good))))
    return np.sort(np.r_[good, np.random.default_rng(seed).permutation(bad)[:n_bad]])


def law_input(
    batch: dict, z: str, pair: tuple[float, float], rule: str
) -> tuple[np.ndarray, tuple[float, float]]:
    """The normal scores and percentile pair the law is fitted to under `rule` (RULES): every
    scored image; only the images that lost no patch to the vouching (not suspects); or every image
    with the pair moved down by the suspects' share, as if every suspect scored above every normal
    image."""
    values, raw = batch["target"][z], batch["target"].get("100")
    if rule in ("all", "gev"):
        return values, pair
    if raw is None:
        raise SystemExit(
            f"rule {rule!r} needs every scored image's raw score (vouched scores at z 100), "
            "which these results files lack"
        )
    suspect = raw > values
    if rule == "suspect-free":
        return (values[~suspect], pair) if (~suspect).sum() >= 8 else (values, pair)
    clean = 1.0 - float(suspect.mean())
    return values, (pair[0] * clean, pair[1] * clean)


def gev_reduced(p: np.ndarray, shape: float) -> np.ndarray:
    """The standard generalised extreme-value law's quantile function (shape 0: Gumbel's)."""
    if abs(shape) < 1e-9:
        return gumbel_reduced(p)
    return ((-np.log(p)) ** -shape - 1) / shape


def gev_threshold(values: np.ndarray, pair: tuple[float, float], rate: float) -> float | None:
    """The (1 - rate) quantile of the generalised extreme-value law through three percentiles of
    `values`: the pair and a third as far above the pair's upper one (at most the 90th), so the
    tail may be lighter (shape < 0) or heavier (> 0) than Gumbel's; None without spread."""
    ps = np.array([pair[0], pair[1], min(0.9, 2 * pair[1] - pair[0])])
    x = np.quantile(values, ps)
    if not (x[0] < x[1] < x[2]):
        return None
    ratio = (x[2] - x[1]) / (x[1] - x[0])

    def shape_ratio(shape):
        g = gev_reduced(ps, shape)
        return (g[2] - g[1]) / (g[1] - g[0])

    low, high = -GEV_SHAPE_LIMIT, GEV_SHAPE_LIMIT  # the ratio grows with the shape
    for _ in range(60):
        middle = (low + high) / 2
        low, high = (middle, high) if shape_ratio(middle) < ratio else (low, middle)
    shape = (low + high) / 2
    g = gev_reduced(ps, shape)
    scale = (x[1] - x[0]) / (g[1] - g[0])
    return float(x[0] + scale * (gev_reduced(np.array([1 - rate]), shape)[0] - g[0]))


def judged(
    batch: dict, z: str, pair: tuple[float, float], factor: float, rule: str = "all"
) -> dict:
    values, fitted_pair = law_input(batch, z, pair, rule)
    estimate = gumbel_threshold(values, RATE, float("nan"), fitted_pair, factor)
    if rule == "gev" and (value := gev_threshold(values, pair, RATE)) is not None:
        estimate = estimate._replace(value=value)  # its interval and support stay the Gumbel law's
    if (
        "100" in batch["target"]
    ):  # every patch counted: the raw scores, whose excess over the normal ones marks a suspect
        estimate = estimate.with_suspects(batch["target"]["100"], batch["target"][z])
    fa, recall = (
        float((batch["good"] > estimate.value).mean()),
        float((batch["bad"] > estimate.value).mean()),
    )
    meets = fa <= 2 * RATE + 1e-12 and recall >= 0.7 * batch["oracle_recall"] - 1e-12
    # how near the goal: nothing above twice the asked false alarms, else the share of the recall
    # goal reached
    credit = (
        0.0
        if fa > 2 * RATE + 1e-12
        else min(1.0, recall / (0.7 * batch["oracle_recall"]))
        if batch["oracle_recall"] > 0
        else 1.0
    )
    return {
        **{k: batch[k] for k in ("product", "condition", "share", "oracle_recall")},
        "fa": fa,
        "recall": recall,
        "meets": meets,
        "credit": credit,
        "supported": estimate.supported,
        "collapses": estimate.recall_collapses,
        "expected": estimate.expected_false_alarm_rate,
        "interval": estimate.false_alarm_interval,
        "n": len(batch["target"][z]),
    }


def choose(
    batches_: list[dict], rules: tuple[str, ...] = ("all",)
) -> tuple[str, tuple[float, float], float, str]:
    """The patch z, pair and rule meeting the goal on the most of these batches (ties: the most
    credit, the share of the recall goal reached within the false-alarm goal; then the lower worst
    false-alarm rate). The support factor is not chosen: it states how sure the law must be
    (SUPPORT_FACTOR)."""

    def key(setting):
        z, pair, rule = setting
        rows = [judged(b, z, pair, SUPPORT_FACTOR, rule) for b in batches_]
        return (
            sum(r["meets"] for r in rows),
            sum(r["credit"] for r in rows),
            -max(r["fa"] for r in rows),
        )

    zs = sorted(set.intersection(*(set(b["target"]) for b in batches_)))
    z, pair, rule = max(((z, pair, rule) for z in zs for pair in PAIRS for rule in rules), key=key)
    return z, pair, SUPPORT_FACTOR, rule


def summary(rows: list[dict]) -> dict:
    trusted = [r for r in rows if r["supported"] and not r["collapses"]]  # what the gate lets live
    return {
        "conditions": len(rows),
        "fa": 100 * np.mean([r["fa"] for r in rows]),
        "fa max": 100 * max(r["fa"] for r in rows),
        "recall": 100 * np.mean([r["recall"] for r in rows]),
        "oracle": 100 * np.mean([r["oracle_recall"] for r in rows]),
        "meets": sum(r["meets"] for r in rows),
        "supported": sum(r["supported"] for r in rows),
        "collapses": sum(r["collapses"] for r in rows),
        "collapses right": sum(r["collapses"] and not r["meets"] for r in rows),
        "trusted": len(trusted),
        "trusted but missing": sum(not r["meets"] for r in trusted),
        "covered": 100
        * np.mean(
            [
                r["interval"] is not None and r["interval"][0] <= r["fa"] <= r["interval"][1]
                for r in rows
            ]
        ),
    }


def law_spread(sizes=(12, 20, 30, 44, 64, 100, 128, 150, 256), draws: int = 4000) -> str:
    """How far the law's threshold lands from the asked rate when the scores follow it exactly: per
    batch size, the 5th, 50th and 95th percentile of the share of normal images it flags (what no
    rule can beat)."""
    from patchshift.core.engine.threshold import gumbel_exceedance, gumbel_reduced, refitted

    rows = []
    for n in sizes:
        location, scale = refitted(
            np.random.default_rng(n).gumbel(0.0, 1.0, (draws, n)), GUMBEL_QUANTILES
        )
        shares = gumbel_exceedance(
            0.0, -(location + scale * gumbel_reduced(1 - RATE)), np.ones(draws)
        )
        low, median, high = np.quantile(shares, (0.05, 0.5, 0.95))
        rows.append({"n": n, "low": 100 * low, "median": 100 * median, "high": 100 * high})
    return markdown(
        rows,
        [
            ("n", "images", "d"),
            ("low", "5th percentile %", ".2f"),
            ("median", "median %", ".2f"),
            ("high", "95th percentile %", ".2f"),
        ],
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.verdicts",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("results", nargs="*", help="shift results files written with --keep-scores")
    parser.add_argument("--conditions", action="store_true", help="also one row per condition")
    parser.add_argument(
        "--rules",
        nargs="+",
        choices=RULES,
        default=["all"],
        help="which images the law may be fitted to, chosen with the product left out (after the "
        "results files)",
    )
    parser.add_argument(
        "--law-spread",
        action="store_true",
        help="print the false alarms of the law's own threshold per batch size and stop",
    )
    args = parser.parse_args(argv)
    if args.law_spread:
        print(
            f"share of normal images flagged by the law's threshold ({RATE:.0%} asked), scores "
            "drawn from the law itself\n"
        )
        print(law_spread())
        return
    if not args.results:
        parser.error("give shift results files written with --keep-scores")
    from .shift import merged_by_product

    every = [b for result in merged_by_product(args.results) for b in batches(result)]
    common = set.intersection(
        *(set(b["target"]) for b in every)
    )  # the patch z every file was scored at
    every = [{**b, "target": {z: v for z, v in b["target"].items() if z in common}} for b in every]
    products = list(dict.fromkeys(b["product"] for b in every))
    table, detail = [], []
    for product in products:
        chosen = (
            choose([b for b in every if b["product"] != product], tuple(args.rules))
            if len(products) > 1
            else DEFAULTS
        )
        for share in SHARES:
            for settings, label in ((DEFAULTS, "defaults"), (chosen, "left out")):
                rows = [
                    judged(b, *settings)
                    for b in every
                    if b["product"] == product and b["asked_share"] == share
                ]
                z, pair, factor, rule = settings
                table.append(
                    {
                        "product": product,
                        "settings": f"{label}: z {z}, {pair[0]:g}-{pair[1]:g}, x{factor:g}, {rule}",
                        "share": "split" if share is None else f"{share:.0%}",
                        "mean share": np.mean([r["share"] for r in rows]),
                        **summary(rows),
                    }
                )
                if label == "defaults":
                    detail += rows
    print(
        markdown(
            table,
            [
                ("product", "product", ""),
                ("settings", "patch z, pair, support factor, law fitted to", ""),
                ("share", "defective", ""),
                ("mean share", "share", ".0%"),
                ("conditions", "conditions", "d"),
                ("fa", "false alarms %", ".1f"),
                ("fa max", "worst %", ".1f"),
                ("recall", "recall %", ".1f"),
                ("oracle", "oracle recall %", ".1f"),
                ("meets", "meets goal", "d"),
                ("supported", "supported", "d"),
                ("collapses", "recall collapses", "d"),
                ("collapses right", "of which missing goal", "d"),
                ("trusted", "gate trusts", "d"),
                ("trusted but missing", "trusted, missing goal", "d"),
                ("covered", "FA in interval %", ".0f"),
            ],
        )
    )
    if args.conditions:
        for r in detail:
            r["interval"] = (
                "-"
                if r["interval"] is None
                else f"{100 * r['interval'][0]:.1f}-{100 * r['interval'][1]:.1f}"
            )
        print(
            "\n"
            + markdown(
                detail,
                [
                    ("product", "product", ""),
                    ("condition", "condition", ""),
                    ("share", "share", ".0%"),
                    ("n", "images", "d"),
                    ("fa", "false alarms", ".1%"),
                    ("recall", "recall", ".1%"),
                    ("oracle_recall", "oracle", ".1%"),
                    ("expected", "expected FA", ".1%"),
                    ("interval", "90% interval %", ""),
                    ("supported", "supported", ""),
                    ("collapses", "recall collapses", ""),
                    ("meets", "meets", ""),
                ],
            )
        )


if __name__ == "__main__":
    main()
