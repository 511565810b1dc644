"""Drift benchmark: does the label-free drift statistic fire on shifted streams and stay quiet on
clean ones?

    python -m benchmarks.drift_statistic [--datasets bsd deeppcb] [--window 32] [--threshold T]

For each dataset: the fitted model's reference comes from its training images. Clean stream: the
held-out normal test images (never seen at fit), in random order, and the whole clean test set
(normal and defective parts mixed, as on a line); the statistic is evaluated after every image once
the window is full, and every evaluation above the threshold counts as a false alarm (reported per
1,000 clean images). Shifted streams: all test images (normal and defective, as
a line would see them) under each corruption and severity; the statistic must exceed the threshold.
Writes benchmarks/results/drift-<dataset>.json.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from .helpers import DATASETS, DEFAULT_DATA_ROOT, RESULTS, machine, markdown
from .protocol import as_float, corrupt_uint8, get_model, load_images


def descriptors_of(model, images) -> np.ndarray:
    """The same descriptors the service computes while scoring (the bank search is not needed
    here)."""
    from patchshift.core.engine.drift import image_descriptors

    return np.concatenate(
        [
            image_descriptors(model.features(as_float(images[i : i + 16]))).cpu().numpy()
            for i in range(0, len(images), 16)
        ]
    )


def sliding_statistics(reference, descriptors: np.ndarray, window: int) -> np.ndarray:
    from patchshift.core.engine.drift import drift_statistic

    return np.array(
        [
            drift_statistic(reference, descriptors[end - window : end])
            for end in range(window, len(descriptors) + 1)
        ]
    )


def run_dataset(name: str, args: argparse.Namespace) -> dict:
    from patchshift.core.evaluation.data import labelled_samples

    root = Path(args.data_root) / name
    model = get_model(name, root, Path(args.model_cache), args.device, DATASETS.get(name, {}))
    if (
        model.drift_reference is None
    ):  # a cached model from before drift references: same rule as fit, all train images
        from patchshift.core.engine.drift import DriftReference
        from patchshift.core.evaluation.data import train_images

        train = load_images(train_images(root), model.config.image_size)
        model.drift_reference = DriftReference.from_descriptors(descriptors_of(model, train))
    samples = labelled_samples(root)
    rng = np.random.default_rng(args.seed)
    order = rng.permutation(len(samples))[: args.max_images or None]
    samples = [samples[i] for i in order]
    labels = np.array([s.label for s in samples])
    images = load_images([s.path for s in samples], model.config.image_size)
    clean = descriptors_of(model, images)
    rows = []
    good, bad = np.flatnonzero(labels == 0), np.flatnonzero(labels == 1)
    few_bad = rng.permutation(
        np.concatenate([good, bad[: round(len(good) / 9)]])
    )  # 10% defective, as on a line
    streams = (
        ("clean normal", good),
        ("clean, 10% defective", few_bad),
        (f"clean, {len(bad) / len(labels):.0%} defective (whole test set)", np.arange(len(labels))),
    )
    for stream, keep in streams:
        stats = sliding_statistics(model.drift_reference, clean[keep], args.window)
        rows.append(
            {
                "stream": stream,
                "severity": 0,
                "images": len(keep),
                "median S": float(np.median(stats)),
                "max S": float(stats.max()),
                "share of windows firing": float((stats > args.threshold).mean()),
                "alarms per 1000 images": 1000 * float((stats > args.threshold).sum()) / len(keep),
            }
        )
        print(rows[-1], flush=True)
    for corruption in args.corruptions:
        for severity in args.severities:
            shifted = descriptors_of(model, corrupt_uint8(images, corruption, severity, args.seed))
            stats = sliding_statistics(model.drift_reference, shifted, args.window)
            rows.append(
                {
                    "stream": corruption,
                    "severity": severity,
                    "images": len(images),
                    "median S": float(np.median(stats)),
                    "min S": float(stats.min()),
                    "share of windows firing": float((stats > args.threshold).mean()),
                }
            )
            print(rows[-1], flush=True)
    return {
        "dataset": name,
        "window": args.window,
        "threshold": args.threshold,
        "rows": rows,
        "machine": machine(),
    }


def main(argv: list[str] | None = None) -> None:
    from patchshift.core.engine.drift import DEFAULT_THRESHOLD, DEFAULT_WINDOW

    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.drift_statistic",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--data-root", default=str(DEFAULT_DATA_ROOT))
    parser.add_argument("--datasets", nargs="*", default=list(DATASETS))
    parser.add_argument(
        "--corruptions",
        nargs="*",
        default=["gaussian_noise", "defocus_blur", "brightness", "contrast"],
    )
    parser.add_argument("--severities", nargs="*", type=int, default=[1, 2, 3, 5])
    parser.add_argument(
        "--max-images", type=int, default=0, help="use a random subset of N test images"
    )
    parser.add_argument("--window", type=int, default=DEFAULT_WINDOW)
    parser.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD)
    parser.add_argument("--model-cache", default=str(RESULTS / "models"))
    parser.add_argument("--device", default="auto")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out-dir", default=str(RESULTS))
    args = parser.parse_args(argv)
    for name in args.datasets:
        result = run_dataset(name, args)
        Path(args.out_dir).mkdir(parents=True, exist_ok=True)
        (Path(args.out_dir) / f"drift-{name}.json").write_text(json.dumps(result, indent=2))
        print(
            f"\n{name}: window {args.window} images, threshold {args.threshold} "
            f"({result['machine']})"
        )
        print(
            markdown(
                result["rows"],
                [
                    ("stream", "stream", ""),
                    ("severity", "severity", "d"),
                    ("images", "images", "d"),
                    ("median S", "median S", ".1f"),
                    ("min S", "min S", ".1f"),
                    ("max S", "max S", ".1f"),
                    ("share of windows firing", "windows firing", ".0%"),
                    ("alarms per 1000 images", "false alarms / 1000 images", ".1f"),
                ],
            )
        )


if __name__ == "__main__":
    main()
