"""Feature reduction study: how the patch features are reduced and weighed, on every dataset.

    python -m benchmarks.feature_reductions [--datasets bsd deeppcb] [--variants ...]

Raw features are extracted once per dataset (every channel of each stage, neighbourhood-averaged
and upsampled to the finest grid: 40 + 112 = 152 channels for EfficientNet-Lite0 at strides 8 and
16); each variant then reduces them, selects its coreset (ratio 0.1, cap 10,000, as `fit`) and
scores the test set with exact search. Variants:
  KIND-D     a feature_reduction of core/engine/reduction.py (average, random, pca), feature_dim D
  none       all raw channels concatenated (the deeper stage, 112 channels, dominates distances)
  balanced   all raw channels, each stage divided by its mean patch norm on the training patches
(`fit` fits balanced and pca on up to 64 training images; the study on every bank image's patches,
200,000 of them sampled.)
Prints a markdown table and writes benchmarks/results/reduction.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from .helpers import (
    DATASETS,
    DEFAULT_DATA_ROOT,
    RESULTS,
    dataset_settings,
    extract_features,
    machine,
    markdown,
)

VARIANTS = ("average-128", "average-224", "none", "balanced", "random-128", "pca-128", "pca-64")


def raw_extractor(config, device):
    """The model's extractor keeping every channel: (B, h, w, sum of stage channels)."""
    from patchshift.core.engine.patchcore import build_extractor

    return build_extractor(config.replace(feature_reduction="none"), device)


def projection(
    variant: str, train: torch.Tensor, stage_channels: tuple[int, ...], seed: int
) -> torch.Tensor:
    """(C, D) matrix that maps raw features to the variant's features: the reduction `fit` builds
    (core.engine.reduction), fitted on the same training patches."""
    from patchshift.core.engine.reduction import fit_reduction

    kind, _, dim = variant.partition("-")
    return fit_reduction(
        kind, train, int(dim) if dim else sum(stage_channels), stage_channels, seed
    ).matrix()


def run_dataset(
    name: str,
    root: Path,
    variants: list[str],
    device: str,
    overrides: dict | None = None,
    train_limit: int | None = None,
) -> list[dict]:
    from patchshift.core.common.device import resolve_device
    from patchshift.core.engine.anomaly_map import anomaly_maps
    from patchshift.core.engine.coreset import coreset_size, kcenter_coreset
    from patchshift.core.engine.index import BankIndex
    from patchshift.core.engine.model_config import ModelConfig
    from patchshift.core.engine.patchcore import split_holdout
    from patchshift.core.evaluation.data import labelled_samples, load_mask, train_images
    from patchshift.core.evaluation.metrics import aupro, image_auroc, pixel_auroc

    config = ModelConfig(**(overrides if overrides is not None else dataset_settings(name)))
    dev = resolve_device(device)
    backbone, extractor = raw_extractor(config, dev)
    train = train_images(root)[:train_limit]
    bank_idx, _ = split_holdout(len(train), config.holdout_fraction, config.seed)
    samples = labelled_samples(root)

    def features(paths):
        return extract_features(extractor, paths, config.image_size, dev)

    started = time.perf_counter()
    raw_train = features([train[i] for i in bank_idx])
    extract_s = time.perf_counter() - started
    raw_train = raw_train.reshape(-1, raw_train.shape[-1])
    raw_test = features([s.path for s in samples])
    n, h, w, c = raw_test.shape
    labels = np.array([s.label for s in samples])
    masks = np.stack([load_mask(s, config.image_size) for s in samples])
    print(
        f"{name}: {len(raw_train)} training patches, {n} test images, {c} raw channels; "
        f"extraction {extract_s:.0f} s",
        flush=True,
    )
    rows = []
    for variant in variants:
        started = time.perf_counter()
        matrix = projection(variant, raw_train, backbone.stage_channels, config.seed)
        patches = raw_train @ matrix
        size = coreset_size(len(patches), config.coreset_ratio, config.coreset_max_size)
        picked = kcenter_coreset(
            patches.to(dev), size, config.coreset_projection_dim, config.seed
        ).cpu()
        reduce_s = time.perf_counter() - started
        bank = patches[picked].contiguous()
        del patches
        index = BankIndex(bank, "flat", config.ivf_nprobe, dev)
        test = (raw_test.reshape(-1, c) @ matrix).contiguous()
        started = time.perf_counter()
        dist, _ = index.search(test)
        search_s = time.perf_counter() - started
        del test
        patch_scores = dist.view(n, h, w)
        maps = np.concatenate(
            [
                anomaly_maps(patch_scores[i : i + 32], config.input_hw, config.blur_sigma).numpy()
                for i in range(0, n, 32)
            ]
        )
        rows.append(
            {
                "dataset": name,
                "input": "x".join(map(str, config.image_size)),
                "variant": variant,
                "dim": int(matrix.shape[1]),
                "image_auroc": image_auroc(labels, patch_scores.flatten(1).max(1).values.numpy()),
                "pixel_auroc": pixel_auroc(masks, maps),
                "aupro": aupro(masks, maps),
                "fit_s": extract_s + reduce_s,
                "search_ms_per_image": 1000 * search_s / n,
                "bank_mib": bank.numel() * 4 / 2**20,
            }
        )
        print(markdown(rows[-1:], COLUMNS), flush=True)
    return rows


COLUMNS = [
    ("dataset", "dataset", ""),
    ("input", "input", ""),
    ("variant", "reduction", ""),
    ("dim", "D", "d"),
    ("image_auroc", "image AUROC", ".3f"),
    ("pixel_auroc", "pixel AUROC", ".3f"),
    ("aupro", "AUPRO", ".3f"),
    ("fit_s", "fit s", ".0f"),
    ("search_ms_per_image", "search ms/img", ".1f"),
    ("bank_mib", "bank MiB", ".1f"),
]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.feature_reductions",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--data-root", default=str(DEFAULT_DATA_ROOT))
    parser.add_argument("--datasets", nargs="*", default=list(DATASETS))
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS))
    parser.add_argument("--device", default="auto")
    parser.add_argument(
        "--train-limit",
        type=int,
        default=None,
        help="the first N training images only (few-image products)",
    )
    parser.add_argument("--out", default=str(RESULTS / "reduction.json"))
    args = parser.parse_args(argv)
    rows = []
    for name in args.datasets:
        rows += run_dataset(
            name,
            Path(args.data_root) / name,
            args.variants,
            args.device,
            train_limit=args.train_limit,
        )
    print(f"\nMachine: {machine()}; torch {torch.__version__}\n")
    print(markdown(rows, COLUMNS))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"machine": machine(), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
