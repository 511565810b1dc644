"""Scoring throughput at batch 32, broken down by stage, against the backbone's forward alone.

    python -m benchmarks.throughput [--datasets bsd deeppcb] [--fit-images 120]

The bank is capped at its default 10,000 rows, which a fit on 120 images already fills, so the
timings equal those of a model fitted on the whole training set. Each stage is timed as the
median of 5 runs after a warm-up; 'score' is PatchCoreModel.score (features, search, heatmaps),
'decode' is reading and resizing the 32 files (done once per image in the CLI and the service).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from .helpers import DATASETS, DEFAULT_DATA_ROOT, RESULTS, machine, markdown


def median_seconds(fn, repeats: int, device: torch.device) -> float:
    fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


@torch.inference_mode()
def breakdown(model, batch: torch.Tensor, repeats: int = 5) -> dict:
    from patchshift.core.engine.anomaly_map import anomaly_maps

    x = batch.to(model.device)
    extractor = model.extractor
    feats = extractor(x)
    b, h, w, d = feats.shape
    per_image = feats.reshape(b, h * w, d)
    patch = model.index.search_images(per_image)[0].view(b, h, w)
    dev = model.device
    times = {
        "backbone": median_seconds(
            lambda: extractor.backbone(extractor.normalise(x)), repeats, dev
        ),
        "features": median_seconds(lambda: extractor(x), repeats, dev),
        "search": median_seconds(lambda: model.index.search_images(per_image), repeats, dev),
        "heatmaps": median_seconds(
            lambda: anomaly_maps(patch, model.config.input_hw, model.config.blur_sigma),
            repeats,
            dev,
        ),
        "score": median_seconds(lambda: model.score(x), repeats, dev),
    }
    n = len(batch)
    return {
        "batch": n,
        "backbone_ms_per_image": 1000 * times["backbone"] / n,
        "features_extra_ms_per_image": 1000 * (times["features"] - times["backbone"]) / n,
        "search_ms_per_image": 1000 * times["search"] / n,
        "heatmaps_ms_per_image": 1000 * times["heatmaps"] / n,
        "score_images_per_s": n / times["score"],
        "backbone_images_per_s": n / times["backbone"],
        "score_over_backbone": times["score"] / times["backbone"],
    }


def main(argv: list[str] | None = None) -> None:
    from patchshift.core.common.images import load_batch
    from patchshift.core.engine.model_config import ModelConfig
    from patchshift.core.engine.patchcore import fit
    from patchshift.core.evaluation.data import labelled_samples, train_images

    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.throughput",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--data-root", default=str(DEFAULT_DATA_ROOT))
    parser.add_argument("--datasets", nargs="*", default=list(DATASETS))
    parser.add_argument("--fit-images", type=int, default=120)
    parser.add_argument("--indexes", nargs="*", default=["auto", "flat"])
    parser.add_argument(
        "--repeats", type=int, default=5, help="timed runs per stage (the median is kept)"
    )
    parser.add_argument(
        "--model",
        nargs="*",
        default=[],
        metavar="DATASET=DIR",
        help="score with a stored version instead of fitting one (its own index kind; --indexes "
        "is ignored)",
    )
    parser.add_argument(
        "--set",
        nargs="*",
        default=[],
        metavar="FIELD=VALUE",
        help="model settings for the fits, e.g. ivf_nprobe=8",
    )
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", default=str(RESULTS / "throughput.json"))
    args = parser.parse_args(argv)
    from .protocol import parse_variant

    _, settings = parse_variant("set:" + ",".join(args.set))
    stored = dict(item.split("=", 1) for item in args.model)
    rows = []
    for name in args.datasets:
        root = Path(args.data_root) / name
        paths = [s.path for s in labelled_samples(root)][:32]
        started = time.perf_counter()
        batch, _ = load_batch(paths, ModelConfig(**DATASETS[name]).image_size)
        decode_ms = 1000 * (time.perf_counter() - started) / len(paths)
        for index in [None] if name in stored else args.indexes:
            if name in stored:
                from patchshift.core.artifact import load_model

                model = load_model(stored[name], device=args.device)
            else:
                model = fit(
                    train_images(root)[: args.fit_images],
                    ModelConfig(**{**DATASETS[name], **settings, "index": index}),
                    device=args.device,
                )
            row = {
                "dataset": name,
                "input": DATASETS[name]["image_size"],
                "index": f"{model.config.index}: {model.index.kind} ({model.index.backend})"
                + (f", {model.config.ivf_nprobe} probes" if model.index.kind == "ivf" else ""),
                "bank_rows": len(model.bank),
                "device": str(model.device),
                "decode_ms_per_image": decode_ms,
            }
            row.update(breakdown(model, batch, args.repeats))
            rows.append(row)
            print(row, flush=True)
    columns = [
        ("dataset", "dataset", ""),
        ("input", "input", ""),
        ("index", "index", ""),
        ("bank_rows", "bank rows", "d"),
        ("backbone_ms_per_image", "backbone ms/img", ".1f"),
        ("features_extra_ms_per_image", "feature pooling ms/img", ".1f"),
        ("search_ms_per_image", "search ms/img", ".1f"),
        ("heatmaps_ms_per_image", "heatmaps ms/img", ".2f"),
        ("score_images_per_s", "score img/s", ".1f"),
        ("score_over_backbone", "score / backbone", ".2f"),
        ("decode_ms_per_image", "decode ms/img", ".1f"),
    ]
    print(f"\n{machine()}; torch {torch.__version__}; batch 32\n")
    print(markdown(rows, columns))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"machine": machine(), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
