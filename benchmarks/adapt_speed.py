"""Adaptation wall time and peak memory: 150 images at 256 x 256 px (the issue's budget case).

    python -m benchmarks.adapt_speed [--dataset bsd] [--images 150] [--image-size 256]
    [--methods ...]

The model is fitted on the dataset's train/good at `--image-size` (256 px: the budget case);
the target set is its first test images under gaussian_noise severity 5.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from .helpers import DEFAULT_DATA_ROOT, RESULTS, PeakMemory, machine, markdown
from .protocol import as_float, corrupt_uint8, get_model, load_images
from .shift import method_settings


def main(argv: list[str] | None = None) -> None:
    from patchshift.core.adapt import AdaptConfig, adapt
    from patchshift.core.evaluation.data import labelled_samples

    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.adapt_speed",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--data-root", default=str(DEFAULT_DATA_ROOT))
    parser.add_argument("--dataset", default="bsd")
    parser.add_argument("--images", type=int, default=150)
    parser.add_argument("--image-size", default="256", help="model input size, N or WxH")
    parser.add_argument(
        "--methods",
        nargs="*",
        help="named rows of the shift benchmark or LABEL:FIELD=VALUE,...",
        default=[
            "bn-stats",
            "moment-matching",
            "ot-continuous",
            "roda",
            "target-memory",
            "target-memory-adabn",
            "target-memory-roda",
        ],
    )
    parser.add_argument(
        "--epochs", type=int, default=None, help="override the methods' default epochs"
    )
    parser.add_argument("--trained-layers", default="all", choices=("all", "feature-stages"))
    parser.add_argument("--device", default="auto")
    parser.add_argument("--model-cache", default=str(RESULTS / "models"))
    parser.add_argument("--out", default=str(RESULTS / "adapt-speed.json"))
    args = parser.parse_args(argv)
    root = Path(args.data_root) / args.dataset
    model = get_model(
        args.dataset, root, Path(args.model_cache), args.device, {"image_size": args.image_size}
    )
    paths = [s.path for s in labelled_samples(root)][: args.images]
    target = as_float(
        corrupt_uint8(load_images(paths, model.config.image_size), "gaussian_noise", 5, 0)
    )
    rows = []
    for method in args.methods:
        cfg = AdaptConfig(
            **{
                **method_settings(method),
                **({"epochs": args.epochs} if args.epochs is not None else {}),
                "trained_layers": args.trained_layers,
            }
        )
        with PeakMemory() as memory:
            started = time.perf_counter()
            _, report = adapt(model, target, cfg, judge=True)
            seconds = time.perf_counter() - started
        rows.append(
            {
                "method": method,
                "images": len(target),
                "steps": report.steps,
                "seconds": report.seconds,
                "gate_s": seconds - report.seconds,
                "peak_gib": memory.peak_gib,
            }
        )
        print(rows[-1], flush=True)
    print(
        f"\n{machine()}; {args.epochs or 'default'} epochs, trained layers: {args.trained_layers}\n"
    )
    print(
        markdown(
            rows,
            [
                ("method", "method", ""),
                ("images", "images", "d"),
                ("steps", "steps", "d"),
                ("seconds", "adapt s", ".1f"),
                ("gate_s", "+ gate s", ".1f"),
                ("peak_gib", "peak GiB", ".2f"),
            ],
        )
    )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"machine": machine(), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
