"""Design runs for adaptation settings, kept off the shift benchmark's evaluation split.

    python -m benchmarks.design_runs [--dataset bsd] [--severities 5] [--variants
    none:method=none bn-stats:method=bn-stats roda roda-3-epochs:epochs=3 paired-oracle]

Settings are chosen here, never on the 80% evaluation split: the shift benchmark's 20% adaptation
split (same seed) is cut into two stratified halves; each variant adapts on the first half and is
scored on the second. A variant is `label[:field=value,...]` with AdaptConfig fields (default
method roda); `paired-oracle` is the reference of benchmarks/references.py. With about 60 images
scored, differences below about 0.07 AUROC are noise.
Writes benchmarks/results/design-<dataset>.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from .helpers import machine, markdown
from .protocol import (  # noqa: F401  (parse_variant: the variant syntax, used by other scripts too)
    add_protocol_arguments,
    as_float,
    corrupt_uint8,
    evaluate_on,
    load_images,
    parse_variant,
    protocol_split,
    stratified_split,
)


def main(argv: list[str] | None = None) -> None:
    from patchshift.core.adapt import AdaptConfig, adapt
    from patchshift.core.common.errors import ConfigError
    from patchshift.core.evaluation.data import load_mask

    from .references import paired_oracle

    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.design_runs",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_protocol_arguments(parser, severities=[5])
    parser.add_argument(
        "--variants",
        nargs="*",
        default=["none:method=none", "bn-stats:method=bn-stats", "roda", "paired-oracle"],
    )
    args = parser.parse_args(argv)
    variants = [parse_variant(v) for v in args.variants]
    known = set(AdaptConfig.__dataclass_fields__)
    for label, fields in variants:
        if set(fields) - known:
            parser.error(
                f"variant {label!r}: unknown AdaptConfig field(s) "
                f"{', '.join(sorted(set(fields) - known))}"
            )
    try:
        configs = {
            label: AdaptConfig(**{"seed": args.seed, "method": "roda", **fields})
            for label, fields in variants
            if label != "paired-oracle"
        }
    except ConfigError as exc:
        parser.error(str(exc))

    model, samples, labels, adapt_idx = protocol_split(args)
    first, second = stratified_split(labels[adapt_idx], 0.5, args.seed)
    fit_idx, score_idx = adapt_idx[first], adapt_idx[second]
    if len(np.unique(labels[score_idx])) < 2:
        raise SystemExit(
            f"{args.dataset}: the adaptation split ({len(adapt_idx)} images) is too small to "
            "halve with both classes in each half"
        )
    clean = load_images(
        [samples[i].path for i in np.concatenate([fit_idx, score_idx])], model.config.image_size
    )
    masks = np.stack([load_mask(samples[i], model.config.image_size) for i in score_idx])
    n = len(fit_idx)
    print(
        f"{args.dataset}: adapt on {n} images ({labels[fit_idx].sum()} defective), score "
        f"{len(score_idx)}",
        flush=True,
    )
    rows = [
        {
            "condition": "clean",
            "variant": "none",
            **evaluate_on(model, clean[n:], labels[score_idx], masks),
        }
    ]
    for corruption in args.corruptions:
        for severity in args.severities:
            shifted = corrupt_uint8(clean, corruption, severity, args.seed)
            for label, _ in variants:
                started = time.perf_counter()
                if label == "paired-oracle":
                    adapted = paired_oracle(model, shifted[:n], clean[:n], seed=args.seed)
                else:
                    adapted, _ = adapt(model, as_float(shifted[:n]), configs[label])
                seconds = time.perf_counter() - started
                rows.append(
                    {
                        "condition": f"{corruption} {severity}",
                        "variant": label,
                        "adapt_s": seconds,
                        **evaluate_on(adapted, shifted[n:], labels[score_idx], masks),
                    }
                )
                print(rows[-1], flush=True)
    result = {
        "dataset": args.dataset,
        "variants": args.variants,
        "rows": rows,
        "machine": machine(),
    }
    Path(args.out_dir).mkdir(parents=True, exist_ok=True)
    (Path(args.out_dir) / f"design-{args.dataset}.json").write_text(json.dumps(result, indent=2))
    means = []
    for label, _ in variants:
        mine = [r for r in rows if r["variant"] == label and r["condition"] != "clean"]
        means.append(
            {
                "condition": "mean",
                "variant": label,
                "image_auroc": np.mean([r["image_auroc"] for r in mine]),
                "pixel_auroc": np.mean([r["pixel_auroc"] for r in mine]),
                "adapt_s": np.mean([r["adapt_s"] for r in mine]),
            }
        )
    print(f"\n{args.dataset} design runs ({result['machine']})")
    print(
        markdown(
            rows + means,
            [
                ("condition", "condition", ""),
                ("variant", "variant", ""),
                ("image_auroc", "image AUROC", ".3f"),
                ("pixel_auroc", "pixel AUROC", ".3f"),
                ("adapt_s", "adapt s", ".1f"),
            ],
        )
    )


if __name__ == "__main__":
    main()
