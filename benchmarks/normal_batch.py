"""The target memory adapted on shifted images of normal parts only: what the adaptation itself
costs at the line's operating point when no defect is in the batch.

    python -m benchmarks.normal_batch [--dataset bsd] [--corruptions brightness contrast]
        [--severity 5] [--images 213] [--set filter_tail_share=0.99 ...]

N images drawn (seeded) from train/good, shifted like the shift benchmark's condition, make the
adaptation batch; the version is scored on the shift benchmark's evaluation split (the same images,
--max-eval 250) under the same shift. Compared with the refit-target reference (a bank fitted on
all of train/good under the shift), it isolates the target memory's own steps (filter, union,
input levels): the batch holds no defect. Prints image AUROC, the oracle recall at 1% false alarms
and the version's own verdicts. Use only shifts that draw no random numbers (brightness, contrast):
the evaluation images are shifted alone here, not with the whole dataset.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from .helpers import DEFAULT_DATA_ROOT, RESULTS, model_settings
from .protocol import (
    as_float,
    corrupt_uint8,
    evaluate_on,
    get_model,
    load_images,
    parse_settings,
    shift_split,
)


def main(argv: list[str] | None = None) -> None:
    from patchshift.core.adapt import adapt, get_adapter
    from patchshift.core.evaluation.data import labelled_samples, load_mask, train_images

    parser = argparse.ArgumentParser(prog="python -m benchmarks.normal_batch", description=__doc__)
    parser.add_argument("--data-root", default=str(DEFAULT_DATA_ROOT))
    parser.add_argument("--dataset", default="bsd")
    parser.add_argument("--corruptions", nargs="*", default=["brightness", "contrast"])
    parser.add_argument("--severity", type=int, default=5)
    parser.add_argument("--images", type=int, default=213, help="shifted normal images to adapt on")
    parser.add_argument("--max-eval", type=int, default=250)
    parser.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    root = Path(args.data_root) / args.dataset
    model = get_model(
        args.dataset, root, RESULTS / "models", "auto", model_settings(args.dataset, None)
    )
    samples = labelled_samples(root)
    labels = np.array([s.label for s in samples])
    _, eval_idx = shift_split(labels, args.seed, args.max_eval)
    clean = load_images([samples[i].path for i in eval_idx], model.config.image_size)
    masks = np.stack([load_mask(samples[i], model.config.image_size) for i in eval_idx])
    train = load_images(train_images(root), model.config.image_size)
    pick = np.sort(np.random.default_rng(args.seed).permutation(len(train))[: args.images])
    settings = parse_settings(args.set)
    for corruption in args.corruptions:
        batch = corrupt_uint8(train[pick], corruption, args.severity, args.seed)
        cfg = get_adapter("target-memory").configure(model, settings)
        started = time.perf_counter()
        version, _ = adapt(model, as_float(batch), cfg)
        seconds = time.perf_counter() - started
        shifted = corrupt_uint8(clean, corruption, args.severity, args.seed)
        r = evaluate_on(version, shifted, labels[eval_idx], masks)
        print(
            f"{args.dataset} {corruption} {args.severity}, {len(pick)} shifted normals, "
            f"settings {settings or 'defaults'}: image AUROC {r['image_auroc']:.3f}, oracle recall "
            f"at 1% {r['oracle_recall']:.3f}, own threshold: false alarms "
            f"{r['false_alarm_rate']:.3f} recall {r['recall']:.3f} ({seconds:.0f} s)",
            flush=True,
        )


if __name__ == "__main__":
    main()
