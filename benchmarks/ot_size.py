"""How much RoDA's subsampled OT problem costs in accuracy: a small case where the full problem
fits.

    python -m benchmarks.ot_size [--dataset bsd] [--image-size 288x112] [--corruptions
    ...]

Each RoDA step solves OT between `target_patches` patches sampled from the minibatch's views and
`bank_rows` bank rows (defaults 2,048 x 4,096). At 576x224 the full problem (all ~64,000 patches
of a minibatch x a 10,000-row bank) does not fit a CPU budget, so this runs a small case: the model
at 288x112 with its bank capped at 4,096 rows, so 4,096 rows are the whole bank and a minibatch
has ~16,000 patches. Same protocol as the shift benchmark (20% adaptation / 80% evaluation, fixed
seed); rows: the default sample with two seeds (the sampling noise) and the full problem.
Writes benchmarks/results/ot-size-<dataset>.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from .helpers import DEFAULT_DATA_ROOT, RESULTS, PeakMemory, machine, markdown
from .protocol import as_float, corrupt_uint8, evaluate_on, get_model, load_images, stratified_split

FULL = 10**9  # more than any minibatch or bank: sample_rows then takes every row


def main(argv: list[str] | None = None) -> None:
    from patchshift.core.adapt import AdaptConfig, adapt
    from patchshift.core.evaluation.data import labelled_samples, load_mask

    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.ot_size",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--data-root", default=str(DEFAULT_DATA_ROOT))
    parser.add_argument("--dataset", default="bsd")
    parser.add_argument("--image-size", default="288x112")
    parser.add_argument("--bank-size", type=int, default=4096)
    parser.add_argument("--corruptions", nargs="*", default=["defocus_blur", "gaussian_noise"])
    parser.add_argument("--severity", type=int, default=5)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--model-cache", default=str(RESULTS / "models-ot-size"))
    parser.add_argument("--out-dir", default=str(RESULTS))
    args = parser.parse_args(argv)

    root = Path(args.data_root) / args.dataset
    model = get_model(
        args.dataset,
        root,
        Path(args.model_cache),
        args.device,
        {"image_size": args.image_size, "coreset_max_size": args.bank_size},
    )
    samples = labelled_samples(root)
    labels = np.array([s.label for s in samples])
    adapt_idx, eval_idx = stratified_split(labels, 0.2, 0)
    clean = load_images([s.path for s in samples], model.config.image_size)
    masks = np.stack([load_mask(s, model.config.image_size) for s in samples])
    variants = [
        ("2048 x 4096 (default)", 2048, 4096, 0),
        ("2048 x 4096, other seed", 2048, 4096, 1),
        ("full", FULL, FULL, 0),
    ]
    rows = []
    for corruption in args.corruptions:
        shifted = corrupt_uint8(clean, corruption, args.severity, 0)
        base = evaluate_on(model, shifted[eval_idx], labels[eval_idx], masks[eval_idx])
        rows.append(
            {
                "corruption": corruption,
                "ot problem": "no adaptation",
                **base,
                "seconds": 0.0,
                "peak_gib": 0.0,
            }
        )
        print(rows[-1], flush=True)
        for name, patches, bank_rows, seed in variants:
            cfg = AdaptConfig(method="roda", target_patches=patches, bank_rows=bank_rows, seed=seed)
            with PeakMemory() as memory:
                started = time.perf_counter()
                adapted, _ = adapt(model, as_float(shifted[adapt_idx]), cfg)
                seconds = time.perf_counter() - started
            rows.append(
                {
                    "corruption": corruption,
                    "ot problem": name,
                    **evaluate_on(adapted, shifted[eval_idx], labels[eval_idx], masks[eval_idx]),
                    "seconds": seconds,
                    "peak_gib": memory.peak_gib,
                }
            )
            print(rows[-1], flush=True)
    patches_per_step = (
        AdaptConfig().batch_size
        * AdaptConfig().views
        * len(model.features(as_float(clean[:1]))[0].flatten(0, 1))
    )
    result = {
        "dataset": args.dataset,
        "image_size": list(model.config.image_size),
        "bank_rows": int(model.bank.shape[0]),
        "patches_per_step": patches_per_step,
        "n_adapt": int(len(adapt_idx)),
        "n_eval": int(len(eval_idx)),
        "rows": rows,
        "machine": machine(),
    }
    Path(args.out_dir).mkdir(parents=True, exist_ok=True)
    (Path(args.out_dir) / f"ot-size-{args.dataset}.json").write_text(json.dumps(result, indent=2))
    print(
        f"\n{args.dataset} at {args.image_size}, bank {result['bank_rows']} rows, "
        f"{patches_per_step} target patches per step, "
        f"severity {args.severity}; {result['machine']}\n"
    )
    print(
        markdown(
            rows,
            [
                ("corruption", "corruption", ""),
                ("ot problem", "OT problem (target patches x bank rows)", ""),
                ("image_auroc", "image AUROC", ".3f"),
                ("pixel_auroc", "pixel AUROC", ".3f"),
                ("seconds", "adapt s", ".0f"),
                ("peak_gib", "peak GiB", ".2f"),
            ],
        )
    )


if __name__ == "__main__":
    main()
