"""Leave one product out: each product is reported under the adaptation setting chosen on the
others.

A setting is a method row of the shift benchmark (a named row or LABEL:FIELD=VALUE,...) that every
product's results hold. For each product, the setting is chosen on the other products alone: the one
whose worst other product closes the most of its image-AUROC gap (ties: the larger mean); the
product is then reported under it. The table's headline is its worst product. The oracle recall is
the recall of the threshold that flags at most 1% of the held-out good images: what the ranking
allows at the line's operating point, whatever threshold a version sets (benchmarks/verdicts.py
reports the versions' own thresholds).

    python -m benchmarks.shift --report benchmarks/results/shift-*-thr.json --leave-one-product-out
"""

from __future__ import annotations

import numpy as np

from patchshift.core.evaluation.metrics import oracle_threshold

from .helpers import markdown

RATE = 0.01  # the fit's default, which every stored run used
TOLERANCE = 0.01  # a condition is "below no adaptation" when it falls more than this under it


CLEAN = "clean"  # the shift benchmark's condition without a shift
RANKING = ("image_auroc", "pixel_auroc", "aupro")  # a results row's ranking metrics


def conditions(result: dict) -> list[tuple[str, int]]:
    """The shifted conditions (a clean batch is reported apart: adapting to it must be harmless)."""
    return sorted(
        {
            (r["corruption"], r["severity"])
            for r in result["rows"]
            if r["method"] == "none" and r["corruption"] != CLEAN
        }
    )


def lookup(result: dict) -> dict:
    return {(r["method"], r["corruption"], r["severity"]): r for r in result["rows"]}


def gap_closed(result: dict, method: str, key: str = "image_auroc") -> float | None:
    """Share of the gap between no adaptation and the clean images that `method` closes, mean over
    the conditions."""
    rows, upper = lookup(result), result["upper_bound"].get(key)
    cells = conditions(result)
    if upper is None or any(
        (method, *c) not in rows or rows[(method, *c)].get(key) is None for c in cells
    ):
        return None
    none = np.mean([rows[("none", *c)][key] for c in cells])
    return (
        float((np.mean([rows[(method, *c)][key] for c in cells]) - none) / (upper - none))
        if upper != none
        else None
    )


def levels_kept(row: dict) -> bool:
    """Whether a target-memory row's version corrected no input level (core.engine.levels)."""
    from patchshift.core.engine.levels import LevelCorrection

    levels = row.get("details", {}).get("input_levels")
    return levels is not None and LevelCorrection.from_dict(levels).is_identity


def fill_unleveled(result: dict) -> dict:
    """Rows of a setting that differs from the default target memory only by `input_levels=none`,
    where that setting was not run on a condition whose default row kept every level: there the two
    settings are one computation (the identity correction; every such pair run on the tiles and
    ELPV gave identical rows). Each filled row says so (`filled_from`)."""
    from .protocol import parse_variant

    unleveled = {
        m
        for m in (r["method"] for r in result["rows"])
        if ":" in m and parse_variant(m)[1] == {"method": "target-memory", "input_levels": "none"}
    }
    rows = lookup(result)
    for method in unleveled:
        for row in [r for r in result["rows"] if r["method"] == "target-memory"]:
            key = (method, row["corruption"], row["severity"])
            if key not in rows and levels_kept(row):
                result["rows"].append({**row, "method": method, "filled_from": "target-memory"})
    return result


def oracle_recall(result: dict, row: dict) -> float | None:
    """The recall of the threshold flagging at most RATE of the row's held-out good images (needs
    stored scores)."""
    if row.get("oracle_recall") is not None:
        return row["oracle_recall"]
    if "scores" not in row:
        return None
    labels, scores = np.asarray(result["eval_labels"]), np.asarray(row["scores"])
    return float((scores[labels == 1] > oracle_threshold(scores[labels == 0], RATE)).mean())


def product_row(result: dict, method: str) -> dict:
    """The product's means over the conditions under `method`, against no adaptation."""
    rows, cells = lookup(result), conditions(result)
    mine, none = [rows[(method, *c)] for c in cells], [rows[("none", *c)] for c in cells]

    def mean(key, chosen):
        values = [r.get(key) for r in chosen]
        return None if any(v is None for v in values) else 100 * float(np.mean(values))

    def below(key):
        if any(r.get(key) is None for r in mine + none):
            return None
        return sum(m[key] < n[key] - TOLERANCE for m, n in zip(mine, none, strict=False))

    oracle = [oracle_recall(result, r) for r in mine]
    clean = next(((c, s) for m, c, s in rows if m == "none" and c == CLEAN), None)
    change = (
        None
        if clean is None or (method, *clean) not in rows
        else 100 * (rows[(method, *clean)]["image_auroc"] - rows[("none", *clean)]["image_auroc"])
    )
    return {
        "clean change": change,
        "product": result["dataset"],
        "setting": method,
        "conditions": len(cells),
        "image": mean("image_auroc", mine),
        "none image": mean("image_auroc", none),
        "clean image": 100 * result["upper_bound"]["image_auroc"],
        "gap": None if gap_closed(result, method) is None else 100 * gap_closed(result, method),
        "pixel": mean("pixel_auroc", mine),
        "none pixel": mean("pixel_auroc", none),
        "aupro": mean("aupro", mine),
        "image below": below("image_auroc"),
        "pixel below": below("pixel_auroc"),
        "aupro below": below("aupro"),
        "oracle": None if None in oracle else 100 * float(np.mean(oracle)),
        "none oracle": None
        if None in (o := [oracle_recall(result, r) for r in none])
        else 100 * float(np.mean(o)),
        "clean oracle": None
        if result["upper_bound"].get("oracle_recall") is None
        else 100 * result["upper_bound"]["oracle_recall"],
    }


def condition_rows(result: dict, method: str) -> list[dict]:
    """One row per shifted condition under `method`, against no adaptation (percent): the ranking
    (image, pixel AUROC, AUPRO), the version's own threshold (false alarms, recall) and the
    oracle's recall."""
    rows = lookup(result)

    def percent(value: float | None) -> float | None:
        return None if value is None else 100 * value

    def change(before: float | None, after: float | None) -> str | None:
        return None if None in (before, after) else f"{100 * before:.1f} -> {100 * after:.1f}"

    out = []
    for corruption, severity in conditions(result):
        none, mine = rows[("none", corruption, severity)], rows[(method, corruption, severity)]
        out.append(
            {
                "condition": f"{corruption} {severity}",
                **{key: change(none.get(key), mine.get(key)) for key in RANKING},
                "fa": percent(mine.get("false_alarm_rate")),
                "recall": percent(mine.get("recall")),
                "oracle": change(oracle_recall(result, none), oracle_recall(result, mine)),
            }
        )
    return out


def condition_table(result: dict, method: str) -> str:
    return markdown(
        condition_rows(result, method),
        [
            ("condition", f"{result['dataset']}, {method}", ""),
            ("image_auroc", "image AUROC, none -> it", ""),
            ("pixel_auroc", "pixel AUROC", ""),
            ("aupro", "AUPRO", ""),
            ("fa", "own threshold: false alarms %", ".1f"),
            ("recall", "recall %", ".1f"),
            ("oracle", "oracle recall at 1%", ""),
        ],
    )


def choose(results: list[dict], candidates: list[str]) -> str:
    """The candidate whose worst product (of these) closes the most of its image gap; ties: the
    larger mean."""

    def key(method):
        gaps = [gap_closed(r, method) for r in results]
        return (-np.inf, -np.inf) if None in gaps else (min(gaps), float(np.mean(gaps)))

    return max(candidates, key=key)


def table(results: list[dict]) -> str:
    """results: one merged result per product. Rows: each product under the setting chosen on the
    others; then, per product, its conditions under that setting."""
    candidates = [
        m
        for m in dict.fromkeys(r["method"] for r in results[0]["rows"])
        if m != "none" and all(gap_closed(other, m) is not None for other in results)
    ]
    if not candidates:
        raise SystemExit("no adaptation setting was run on every condition of every product")
    rows = []
    for product in results:
        others = [r for r in results if r is not product]
        rows.append(product_row(product, choose(others, candidates) if others else candidates[0]))
    for row in rows:  # the share of the oracle recall's gap (none -> clean images) closed
        ends = (row["none oracle"], row["oracle"], row["clean oracle"])
        # no gap where the clean images' oracle catches no more than the shifted ones' (deeppcb: a
        # few good boards score high)
        row["oracle gap"] = (
            None
            if None in ends or ends[2] <= ends[0]
            else 100 * (ends[1] - ends[0]) / (ends[2] - ends[0])
        )
    rows.sort(key=lambda r: r["gap"] if r["gap"] is not None else -np.inf)
    by_name = {r["dataset"]: r for r in results}
    per_condition = [condition_table(by_name[row["product"]], row["setting"]) for row in rows]
    return "\n\n".join([summary_table(rows), *per_condition])


def summary_table(rows: list[dict]) -> str:
    return markdown(
        rows,
        [
            ("product", "product (worst first)", ""),
            ("setting", "setting chosen on the others", ""),
            ("conditions", "conditions", "d"),
            ("none image", "image AUROC, none", ".1f"),
            ("image", "image AUROC", ".1f"),
            ("clean image", "clean", ".1f"),
            ("gap", "gap closed %", ".0f"),
            ("image below", "image below none", "d"),
            ("none pixel", "pixel AUROC, none", ".1f"),
            ("pixel", "pixel AUROC", ".1f"),
            ("pixel below", "pixel below none", "d"),
            ("aupro", "AUPRO", ".1f"),
            ("aupro below", "AUPRO below none", "d"),
            ("none oracle", "oracle recall, none %", ".1f"),
            ("oracle", "oracle recall %", ".1f"),
            ("clean oracle", "oracle recall, clean %", ".1f"),
            ("oracle gap", "oracle gap closed %", ".0f"),
            ("clean change", "clean batch: image AUROC change", "+.1f"),
        ],
    )
