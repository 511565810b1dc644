"""Shift benchmark, the RoDA paper's protocol, on every dataset in shared/data.

    python -m benchmarks.shift [--datasets bsd deeppcb] [--severities 3 5] [--max-eval N]

Fit once on clean train/good; for each corruption and severity, corrupt the test set (stored
as 8-bit images, as a camera would deliver them), split it 20% adaptation (unlabeled,
stratified so defects are in it) / 80% evaluation with a fixed seed, adapt with each method on
the 20%, evaluate on the 80%. The clean 80% without adaptation is the upper bound.
Also: the share of anomalous target patches that a bank row picks in the discretised plan,
with and without augmentation (paper Fig. 5a), and RoDA against the adaptation set's
defective share (`--sweep-condition`). Reference rows `refit-target` and `paired-oracle`
(benchmarks/references.py) bound what is recoverable; they are not adapters.
Writes benchmarks/results/shift-<dataset>.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from patchshift.core.common.fileio import atomic_write_bytes
from patchshift.core.evaluation.corruptions import CORRUPTIONS

from .helpers import (
    DATASETS,
    DEFAULT_DATA_ROOT,
    RESULTS,
    PeakMemory,
    machine,
    markdown,
    model_settings,
)
from .protocol import (  # noqa: F401  (re-exported for the scripts and tests that used them from here)
    add_protocol_arguments,
    as_float,
    corrupt_uint8,
    evaluate_on,
    get_model,
    load_images,
    parse_settings,
    parse_variant,
    protocol_split,
    shift_split,
    stratified_split,
)

METHODS = {
    "none": {"method": "none"},
    "bn-stats": {"method": "bn-stats"},
    "moment-matching": {"method": "moment-matching"},
    "ot-continuous": {"method": "ot-continuous"},
    "roda-no-augment": {"method": "roda", "augment": "none"},
    "roda": {"method": "roda"},
    "target-memory": {"method": "target-memory"},
    "target-memory-alone": {"method": "target-memory", "memory": "target"},
    "target-memory-adabn": {"method": "target-memory", "memory_bn": "stats"},
    "target-memory-roda": {"method": "target-memory", "memory_bn": "roda"},
    # the alternate adaptation for domain changes: a memory from the dominant cluster of the
    # adaptation split; and the UDA paper's global detector, trained from train/good and that split
    "uda": {"method": "uda"},
    "uda-global": {"method": "uda-global"},
    # references, not adapters (benchmarks/references.py): they use what no deployment has
    "refit-target": {},  # a bank fitted on train/good under the same corruption
    "paired-oracle": {},  # BatchNorm affine trained onto the clean images' features
}
REFERENCES = ("refit-target", "paired-oracle")
CLEAN = "clean"  # a condition without a shift: adapting to it must be harmless


def method_settings(method: str) -> dict:
    """A row's AdaptConfig fields: a named row above, or 'label:field=value,...' (e.g.
    'tm-z1:method=target-memory,filter_cut_z=1')."""
    if method in METHODS:
        return METHODS[method]
    return parse_variant(method)[1]


def filter_record(summary) -> dict:
    """What a target memory's filter did in a sweep row (nothing for other methods)."""
    return {
        key: summary.details[key]
        for key in ("filter_tail", "kept_patch_share")
        if key in summary.details
    }


def epochs_option(args: argparse.Namespace) -> dict:
    return {"epochs": args.epochs} if args.epochs is not None else {}


def row_config(model, method: str, args: argparse.Namespace):
    """A row's config: its fields, then --epochs and --set (uda-global: its own epochs and a
    downscaled input)."""
    from patchshift.core.adapt import RECOMMENDED, get_adapter

    fields = dict(method_settings(method))
    adapter = get_adapter(fields.pop("method", RECOMMENDED))
    if adapter.own_input_size:  # a detector of its own (uda-global): smaller input, its own epochs
        width, height = model.config.image_size
        fields = {
            "image_size": (width // args.uda_downscale, height // args.uda_downscale),
            "epochs": args.uda_epochs,
            **fields,
        }
    else:
        fields = {**fields, **epochs_option(args), **args.adapt_settings}
    return adapter.make_config(adapter.name, model, {**fields, "seed": args.seed})


def source_images(root: Path, cfg) -> torch.Tensor:
    """The clean train/good images, for the methods that learn from source images."""
    from patchshift.core.evaluation.data import train_images

    return as_float(load_images(train_images(root), cfg.image_size))


@torch.inference_mode()
def assignment_share(
    model, images: torch.Tensor, masks: np.ndarray, augment: str, seed: int = 0
) -> float:
    """Share of anomalous target patches that some bank row picks (column argmax of gamma*)."""
    import torch.nn.functional as F

    from patchshift.core.adapt import AdaptConfig
    from patchshift.core.adapt.base import make_views
    from patchshift.core.adapt.ot import chosen_by_bank, sinkhorn
    from patchshift.core.adapt.roda import sample_rows

    cfg = AdaptConfig(augment=augment)
    generator = torch.Generator().manual_seed(seed)
    picked = total = 0
    for start in range(0, len(images), cfg.batch_size):
        batch = as_float(images[start : start + cfg.batch_size])
        mask = torch.from_numpy(masks[start : start + cfg.batch_size]).float().unsqueeze(1)
        views = make_views(
            torch.cat([batch, mask], 1), cfg, generator
        )  # masks turn with their images
        views = views.reshape(-1, *views.shape[2:])
        feats = model.features(views[:, :3])
        h, w = feats.shape[1:3]
        anomalous = F.adaptive_max_pool2d(views[:, 3:], (h, w)).flatten() > 0
        flat = feats.reshape(-1, feats.shape[-1]).cpu()
        rows = sample_rows(len(flat), cfg.target_patches, generator)
        bank = model.bank[sample_rows(len(model.bank), cfg.bank_rows, generator)]
        plan = sinkhorn(torch.cdist(flat[rows], bank), cfg.eps, cfg.sinkhorn_iters)
        strong = chosen_by_bank(plan)
        picked += int((strong & anomalous[rows]).sum())
        total += int(anomalous[rows].sum())
    return picked / total if total else float("nan")


# Patch z limits at which a threshold study can read the target images' normal scores
# (AdaptConfig.threshold_patch_z).
VOUCHED_Z = (2.0, 2.5, 3.0, 3.5, 4.0, 5.0, 7.0, 100.0)


# ... and where the batch's normal images' worst patches lie, at these quantiles (measured, not
# adopted).
VOUCHED_QUANTILES = (0.9, 0.95, 0.99)


def normal_patch_limit(patch_z: torch.Tensor, quantile: float) -> float:
    """(S, P) mutual robust z of S images' patches -> the z below which a normal image's worst patch
    lies with probability `quantile`: a Gumbel law through the 10th percentile and median of the
    images' worst-patch z. Half a batch defective lifts the median, and with it the limit, towards
    every patch."""
    from patchshift.core.engine.threshold import gumbel_law, gumbel_reduced

    worst = patch_z.amax(dim=1).double().numpy()
    law = gumbel_law(worst, (0.10, 0.50)) if worst.size >= 2 else None
    return float("inf") if law is None else float(law[0] + law[1] * gumbel_reduced(quantile))


def vouched_score_grid(summary) -> dict[str, list[float]]:
    """The scored target images' normal scores at every z of VOUCHED_Z (keys: z) and every limit of
    VOUCHED_QUANTILES (keys: 'auto-Q')."""
    from patchshift.core.engine.contamination import vouched_image_scores

    limits = {f"{z:g}": z for z in VOUCHED_Z}
    limits.update(
        {f"auto-{q:g}": normal_patch_limit(summary.target_patch_z, q) for q in VOUCHED_QUANTILES}
    )
    return {
        key: [
            round(float(v), 4)
            for v in vouched_image_scores(summary.target_patch_scores, summary.target_patch_z, z)
        ]
        for key, z in limits.items()
    }


def run_dataset(name: str, args: argparse.Namespace, save=None) -> dict:
    """The dataset's rows; `save(result)` after each row keeps a long run's finished rows
    ("complete": false)."""
    from patchshift.core.adapt import adapt, get_adapter
    from patchshift.core.common.errors import DatasetError
    from patchshift.core.evaluation.data import labelled_samples, load_mask

    root = Path(args.data_root) / name
    model = get_model(
        name, root, Path(args.model_cache), args.device, model_settings(name, args.image_size)
    )
    samples = labelled_samples(root)
    labels = np.array([s.label for s in samples])
    adapt_idx, eval_idx = shift_split(labels, args.seed, args.max_eval)
    clean = load_images([s.path for s in samples], model.config.image_size)
    masks = np.stack([load_mask(s, model.config.image_size) for s in samples])
    print(
        f"{name}: {len(adapt_idx)} adaptation images ({labels[adapt_idx].sum()} defective), "
        f"{len(eval_idx)} evaluation",
        flush=True,
    )
    upper = evaluate_on(model, clean[eval_idx], labels[eval_idx], masks[eval_idx], args.keep_scores)
    rows, shares, sweep, sizes = [], {}, [], []
    result = {
        "dataset": name,
        "upper_bound": upper,
        "adapt_labels": labels[adapt_idx].tolist(),
        "eval_labels": labels[eval_idx].tolist(),
        "source_calibration_scores": list(model.provenance.calibration_scores or []),
        "source_threshold": model.threshold,
        "rows": rows,
        "assignment_share": shares,
        "defect_sweep": sweep,
        "size_sweep": sizes,
        "n_adapt": int(len(adapt_idx)),
        "n_eval": int(len(eval_idx)),
        "machine": machine(),
        "complete": False,
    }
    checkpoint = save or (lambda _: None)
    for corruption in args.corruptions:
        for severity in args.severities:
            shifted = corrupt_uint8(
                clean, None if corruption == CLEAN else corruption, severity, args.seed
            )
            for method in args.methods:
                with PeakMemory() as memory:
                    started = time.perf_counter()
                    if method in REFERENCES:
                        from .references import reference_model

                        adapted = reference_model(
                            method,
                            model,
                            root,
                            corruption,
                            severity,
                            clean,
                            shifted,
                            adapt_idx,
                            args.seed,
                        )
                    else:
                        cfg = row_config(model, method, args)
                        source = (
                            source_images(root, cfg)
                            if get_adapter(cfg.method).min_source_images
                            else None
                        )
                        try:
                            adapted, summary = adapt(
                                model,
                                as_float(shifted[adapt_idx]),
                                cfg,
                                judge=args.gate,
                                source_images=source,
                            )
                        # a method refusing the batch (uda's scarcity check) is a result, not a
                        # crash
                        except DatasetError as exc:
                            rows.append(
                                {
                                    "corruption": corruption,
                                    "severity": severity,
                                    "method": method,
                                    "adapt_s": 0.0,
                                    "adapt_peak_gib": 0.0,
                                    "image_auroc": float("nan"),
                                    "pixel_auroc": None,
                                    "refused": str(exc),
                                }
                            )
                            print(rows[-1], flush=True)
                            checkpoint(result)
                            continue
                    seconds = time.perf_counter() - started
                metrics = evaluate_on(
                    adapted, shifted[eval_idx], labels[eval_idx], masks[eval_idx], args.keep_scores
                )
                extra = {}
                if method not in REFERENCES:
                    seconds = summary.seconds  # the adaptation alone, without the gate
                    extra = {
                        "details": {
                            k: v
                            for k, v in summary.details.items()
                            if k != "adapt_config" and not isinstance(v, list)
                        }
                    }
                    if summary.gate is not None:
                        verdict = summary.gate
                        extra.update(
                            gate_before=verdict.agreement_before,
                            gate_after=verdict.agreement_after,
                            gate_better=verdict.better,
                            gate_shift_percentile=verdict.shift_percentile,
                            gate_ranking_tail=verdict.ranking_tail,
                            gate_reason=verdict.reason,
                        )
                    if args.keep_scores and summary.target_scores is not None:
                        extra.update(
                            target_scores=[round(float(v), 4) for v in summary.target_scores],
                            target_index=None
                            if summary.target_index is None
                            else summary.target_index.tolist(),
                        )
                    if args.keep_scores and summary.target_patch_scores is not None:
                        extra["vouched_scores"] = vouched_score_grid(summary)
                rows.append(
                    {
                        "corruption": corruption,
                        "severity": severity,
                        "method": method,
                        "adapt_s": seconds,
                        "adapt_peak_gib": memory.peak_gib,
                        **metrics,
                        **extra,
                    }
                )
                print({k: v for k, v in rows[-1].items() if not isinstance(v, list)}, flush=True)
                checkpoint(result)
    if args.fig5a:
        shifted = corrupt_uint8(
            clean[adapt_idx], args.corruptions[0], max(args.severities), args.seed
        )
        for augment in ("rot90", "none"):
            shares[augment] = assignment_share(model, shifted, masks[adapt_idx], augment, args.seed)
    if args.defect_sweep:
        corruption, severity = args.sweep_condition or (args.corruptions[0], max(args.severities))
        shifted = corrupt_uint8(clean, corruption, int(severity), args.seed)
        good = adapt_idx[labels[adapt_idx] == 0]
        bad = adapt_idx[labels[adapt_idx] == 1]
        rng = np.random.default_rng(args.seed)
        for share in (0.0, 0.1, 0.3, 0.5):
            n_bad = min(len(bad), round(share * len(good)))
            chosen = np.concatenate(
                [rng.permutation(good)[: len(good) - n_bad], rng.permutation(bad)[:n_bad]]
            )
            adapted, summary = adapt(
                model, as_float(shifted[chosen]), row_config(model, args.sweep_method, args)
            )
            sweep.append(
                {
                    "condition": f"{corruption} {severity}",
                    "method": args.sweep_method,
                    "defective_share": share,
                    "n_images": len(chosen),
                    **filter_record(summary),
                    **evaluate_on(adapted, shifted[eval_idx], labels[eval_idx], masks[eval_idx]),
                }
            )
            print(sweep[-1], flush=True)
            checkpoint(result)
    if args.size_sweep:
        corruption, severity = args.sweep_condition or (args.corruptions[0], max(args.severities))
        shifted = corrupt_uint8(clean, corruption, int(severity), args.seed)
        for n in [*args.size_sweep, len(adapt_idx)]:
            keep, _ = stratified_split(
                labels[adapt_idx], min(1.0, n / len(adapt_idx)), args.seed + 2
            )
            chosen = adapt_idx[keep][:n]
            adapted, summary = adapt(
                model, as_float(shifted[chosen]), row_config(model, args.sweep_method, args)
            )
            sizes.append(
                {
                    "condition": f"{corruption} {severity}",
                    "method": args.sweep_method,
                    "n_images": len(chosen),
                    "defective_share": float(labels[chosen].mean()),
                    **filter_record(summary),
                    **evaluate_on(adapted, shifted[eval_idx], labels[eval_idx], masks[eval_idx]),
                }
            )
            print(sizes[-1], flush=True)
            checkpoint(result)
    result["complete"] = True
    return result


def summary_table(result: dict, key: str) -> str:
    """Paper Table 1 style: one row per method, one column per corruption/severity, mean, gap
    closed."""
    rows = result["rows"]
    conditions = sorted(
        {(r["corruption"], r["severity"]) for r in rows}, key=lambda c: (c[1], c[0])
    )
    methods = list(dict.fromkeys(r["method"] for r in rows))
    lookup = {(r["method"], r["corruption"], r["severity"]): r for r in rows}
    none_mean = (
        np.mean([lookup[("none", c, s)][key] for c, s in conditions]) if "none" in methods else None
    )
    upper = result["upper_bound"][key]
    table = []
    missing = [m for m in methods if any((m, c, s) not in lookup for c, s in conditions)]
    for method in methods:
        if method in missing:  # run on some conditions only: its mean would not compare
            continue
        values = [lookup[(method, c, s)].get(key) for c, s in conditions]
        if None in values:  # a global detector has no pixel AUROC
            continue
        row = {
            "method": method,
            **{f"{c} {s}": v * 100 for (c, s), v in zip(conditions, values, strict=False)},
            "mean": np.mean(values) * 100,
        }
        row["gap closed"] = (
            100 * (np.mean(values) - none_mean) / (upper - none_mean)
            if none_mean is not None and upper != none_mean
            else None
        )
        row["adapt s"] = np.mean([lookup[(method, c, s)]["adapt_s"] for c, s in conditions])
        row["peak GiB"] = max(lookup[(method, c, s)]["adapt_peak_gib"] for c, s in conditions)
        table.append(row)
    table.append({"method": "clean (upper bound)", "mean": upper * 100})
    if missing:
        table.append({"method": f"(not on every condition: {', '.join(missing)})"})
    columns = [("method", "method", "")] + [(f"{c} {s}", f"{c} {s}", ".1f") for c, s in conditions]
    columns += [
        ("mean", "mean", ".1f"),
        ("gap closed", "gap closed %", ".0f"),
        ("adapt s", "adapt s", ".1f"),
        ("peak GiB", "adapt peak GiB", ".2f"),
    ]
    return markdown(table, columns)


def verdict_table(result: dict) -> str:
    """The verdicts at each version's own threshold over the conditions: the share of good images
    flagged (goal: the fit's false-alarm rate) and of defective images caught; beside them the
    recall of the oracle threshold (flagging at most 1% of the good images), where rows carry it."""
    table = []
    for method in dict.fromkeys(r["method"] for r in result["rows"]):
        rows = [
            r
            for r in result["rows"]
            if r["method"] == method and r.get("false_alarm_rate") is not None
        ]
        if rows:
            alarms = [r["false_alarm_rate"] for r in rows]
            table.append(
                {
                    "method": method,
                    "conditions": len(rows),
                    "fa": 100 * np.mean(alarms),
                    "fa max": 100 * max(alarms),
                    "recall": 100 * np.mean([r["recall"] for r in rows]),
                    "oracle": 100 * np.mean(oracle)
                    if None not in (oracle := [r.get("oracle_recall") for r in rows])
                    else None,
                }
            )
    return markdown(
        table,
        [
            ("method", "method", ""),
            ("conditions", "conditions", "d"),
            ("fa", "false alarms % (mean)", ".1f"),
            ("fa max", "false alarms % (worst)", ".1f"),
            ("recall", "recall % (mean)", ".1f"),
            ("oracle", "oracle recall at 1% (mean)", ".1f"),
        ],
    )


def gate_table(result: dict, tolerance: float = 0.01) -> str:
    """How often the activation gate was right, per method: a version is 'better' when its image
    AUROC beats no adaptation's on the same condition by more than `tolerance`, 'worse' when it
    falls more than `tolerance` below it (in between: a tie, where either verdict is harmless)."""
    rows = [r for r in result["rows"] if "gate_better" in r]
    none = {
        (r["corruption"], r["severity"]): r["image_auroc"] for r in rows if r["method"] == "none"
    }
    table = []
    for method in dict.fromkeys(r["method"] for r in rows if r["method"] != "none"):
        mine = [
            r for r in rows if r["method"] == method and (r["corruption"], r["severity"]) in none
        ]
        delta = [r["image_auroc"] - none[(r["corruption"], r["severity"])] for r in mine]
        table.append(
            {
                "method": method,
                "conditions": len(mine),
                "activated": sum(r["gate_better"] for r in mine),
                "worse let through": sum(
                    r["gate_better"] and d < -tolerance for r, d in zip(mine, delta, strict=False)
                ),
                "better blocked": sum(
                    not r["gate_better"] and d > tolerance
                    for r, d in zip(mine, delta, strict=False)
                ),
            }
        )
    return markdown(
        table,
        [
            ("method", "method", ""),
            ("conditions", "conditions", "d"),
            ("activated", "activated", "d"),
            ("worse let through", "worse let through", "d"),
            ("better blocked", "better blocked", "d"),
        ],
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.shift",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--data-root", default=str(DEFAULT_DATA_ROOT))
    parser.add_argument("--datasets", nargs="*", default=list(DATASETS))
    parser.add_argument(
        "--corruptions",
        nargs="*",
        default=list(CORRUPTIONS),
        help=f"of {', '.join(CORRUPTIONS)}, or {CLEAN} (no shift)",
    )
    parser.add_argument("--severities", nargs="*", type=int, default=[3, 5])
    parser.add_argument(
        "--keep-scores",
        action="store_true",
        help="store every image score in the results file (threshold studies)",
    )
    parser.add_argument(
        "--methods",
        nargs="*",
        default=[m for m in METHODS if m not in ("uda", "uda-global", *REFERENCES)],
        help=f"of {', '.join(METHODS)}, or LABEL:FIELD=VALUE,... (default: all but the uda "
        "methods and the references)",
    )
    parser.add_argument(
        "--epochs", type=int, default=None, help="override the methods' default epochs"
    )
    parser.add_argument(
        "--set",
        nargs="*",
        default=[],
        metavar="FIELD=VALUE",
        help="adaptation settings for every method, e.g. filter_cut_z=2",
    )
    parser.add_argument(
        "--no-gate",
        dest="gate",
        action="store_false",
        help="skip the activation gate's verdict per row",
    )
    parser.add_argument("--tag", default="", help="suffix of the results file")
    parser.add_argument("--uda-epochs", type=int, default=3, help="epochs of the uda-global method")
    parser.add_argument(
        "--uda-downscale",
        type=int,
        default=2,
        help="uda-global encoder input = model input size / this",
    )
    parser.add_argument(
        "--image-size", default=None, help="override the dataset's model input size"
    )
    parser.add_argument(
        "--max-eval",
        type=int,
        default=0,
        help="subsample the evaluation split (stratified) to N images",
    )
    parser.add_argument("--no-fig5a", dest="fig5a", action="store_false")
    parser.add_argument("--no-defect-sweep", dest="defect_sweep", action="store_false")
    parser.add_argument(
        "--sweep-method",
        default="target-memory",
        help="the method of the sweeps (a row name or LABEL:FIELD=VALUE,...)",
    )
    parser.add_argument(
        "--size-sweep",
        nargs="*",
        type=int,
        default=[],
        metavar="N",
        help="adaptation-set sizes to sweep (stratified subsets of the split; all of it is added)",
    )
    parser.add_argument(
        "--sweep-condition",
        nargs=2,
        metavar=("CORRUPTION", "SEVERITY"),
        default=None,
        help="condition of the defective-share sweep (default: the first corruption at the "
        "highest severity)",
    )
    parser.add_argument("--model-cache", default=str(RESULTS / "models"))
    parser.add_argument("--device", default="auto")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out-dir", default=str(RESULTS))
    parser.add_argument(
        "--report",
        nargs="+",
        metavar="FILE",
        default=None,
        help="print the tables of stored results files (one product run in parts) and run nothing",
    )
    parser.add_argument(
        "--leave-one-product-out",
        action="store_true",
        help="with --report over several products: each product under the setting chosen on the "
        "others (benchmarks/leave_one_out.py)",
    )
    args = parser.parse_args(argv)
    if args.report:
        if args.leave_one_product_out:
            from .leave_one_out import fill_unleveled, table

            print(table([fill_unleveled(result) for result in merged_by_product(args.report)]))
            return
        report(merged(args.report), args.sweep_method)
        return
    args.adapt_settings = parse_settings(args.set)
    if args.sweep_condition and (
        args.sweep_condition[0] not in CORRUPTIONS or args.sweep_condition[1] not in list("12345")
    ):
        parser.error(
            f"--sweep-condition takes one of {', '.join(CORRUPTIONS)} and a severity 1-5, got "
            f"{' '.join(args.sweep_condition)}"
        )
    Path(args.out_dir).mkdir(parents=True, exist_ok=True)
    for name in args.datasets:
        path = Path(args.out_dir) / f"shift-{name}{args.tag}.json"
        result = run_dataset(
            name,
            args,
            save=lambda partial, path=path: atomic_write_bytes(
                path, json.dumps(partial, indent=2).encode()
            ),
        )
        atomic_write_bytes(path, json.dumps(result, indent=2).encode())
        report(result, args.sweep_method)


def merged(paths: list[str]) -> dict:
    """One product's results run in parts (same split and source model): the first file, with the
    later files' rows added; a (condition, method) row already present is kept."""
    try:
        results = [json.loads(Path(p).read_text()) for p in paths]
    except (OSError, ValueError) as exc:
        raise SystemExit(f"cannot read a results file: {exc}") from None
    first = results[0]
    seen = {(r["corruption"], r["severity"], r["method"]) for r in first["rows"]}
    for other in results[1:]:
        if other["dataset"] != first["dataset"] or other["eval_labels"] != first["eval_labels"]:
            raise SystemExit(
                f"{paths[0]} and another file are not runs of one split of one dataset"
            )
        for row in other["rows"]:
            if (row["corruption"], row["severity"], row["method"]) not in seen:
                first["rows"].append(row)
                seen.add((row["corruption"], row["severity"], row["method"]))
    return first


def merged_by_product(paths: list[str]) -> list[dict]:
    """One merged result per product, in the order the products first appear (a condition's row from
    an earlier file wins, so a re-run condition goes first)."""
    by_product: dict[str, list[str]] = {}
    for path in paths:
        by_product.setdefault(json.loads(Path(path).read_text())["dataset"], []).append(path)
    return [merged(group) for group in by_product.values()]


def report(result: dict, sweep_method: str) -> None:
    """The tables of a results file."""
    print(
        f"\n{result['dataset']} ({result['n_adapt']} adaptation / {result['n_eval']} evaluation "
        f"images; {result['machine']})"
    )
    print("\nimage AUROC (%)\n" + summary_table(result, "image_auroc"))
    for key, title in (
        ("pixel_auroc", "pixel AUROC (%)"),
        ("aupro", "AUPRO (%, up to 30% false-positive rate)"),
    ):
        if (
            result["upper_bound"].get(key) is not None
        ):  # a product without masks has no pixel metrics
            print(f"\n{title}\n" + summary_table(result, key))
    if any(r.get("false_alarm_rate") is not None for r in result["rows"]):
        print("\nverdicts at each version's own threshold\n" + verdict_table(result))
    if any("gate_better" in r for r in result["rows"]):
        print(
            "\nthe activation gate against no adaptation (image AUROC, tolerance 0.01)\n"
            + gate_table(result)
        )
    if result["assignment_share"]:
        print(
            "\nanomalous patches picked by a bank row:",
            {k: round(v, 3) for k, v in result["assignment_share"].items()},
        )
    sweep_columns = [
        ("condition", "condition", ""),
        ("method", "method", ""),
        ("defective_share", "defective share", ".0%"),
        ("n_images", "images", "d"),
        ("image_auroc", "image AUROC", ".3f"),
        ("pixel_auroc", "pixel AUROC", ".3f"),
        ("aupro", "AUPRO", ".3f"),
    ]
    if result["defect_sweep"]:
        print(f"\n{sweep_method} vs defective share of the adaptation set")
        print(markdown(result["defect_sweep"], sweep_columns))
    if result["size_sweep"]:
        print(f"\n{sweep_method} vs number of adaptation images")
        print(markdown(result["size_sweep"], sweep_columns))


if __name__ == "__main__":
    main()
