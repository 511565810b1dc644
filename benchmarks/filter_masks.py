"""What the contamination filter keeps, counted against the defect masks.

    python -m benchmarks.filter_masks [--datasets bsd deeppcb] [--normal 100]
    [--defective 25] [--corruption brightness --severity 5] [--cuts 0 0.5 1 2 3] [--references 10]
    [--closest-share 0.5] [--window W]

A set of `--normal` train/good images and `--defective` defective test images (seeded draws), as a
contaminated training set or a batch of the new condition (`--corruption`), goes through the source
model's backbone and the filter (core.engine.contamination). Each patch is labelled from the masks
at the feature grid: a defect patch has a defect pixel in its cell, a normal patch is one of a good
image. Patches of defective images more than FAR_CELLS cells from any defect patch are counted
apart: normal patches drawn from the same population as the defects (train/good and the test set may
differ). For each cut z: the share of defect patches kept, of normal patches kept, and of defective
images with at least one defect patch kept. One filter pass serves every cut. Per image: how well
its worst patch's score ranks defective images above good ones (AUROC), and which images `fit
--contamination auto` would leave out of the calibration
(core.engine.patchcore.suspect_free_images). `--window W` scores per position (SoftPatch): a patch
meets only the patches within W grid cells of its own place in the other images. The patch AUROC
(defect against normal patches) compares scorings independently of the cut. Writes
benchmarks/results/filter-masks.json.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from .helpers import DATASETS, DEFAULT_DATA_ROOT, RESULTS, machine, markdown, model_settings

FAR_CELLS = (
    4  # a defective image's patch this many cells or more away from its defects counts as normal
)
COLUMNS = [
    ("dataset", "dataset", ""),
    ("condition", "condition", ""),
    ("window", "window", ""),
    ("cut_z", "cut z", ".1f"),
    ("kept", "patches kept", ".1%"),
    ("defect_kept", "defect patches kept", ".1%"),
    ("normal_kept", "normal patches kept", ".1%"),
    (
        "far_normal_kept",
        f"patches of defective images >{FAR_CELLS} cells from a defect kept",
        ".1%",
    ),
    ("images_with_defect_kept", "defective images with a defect patch kept", ".0%"),
]
IMAGE_COLUMNS = [
    ("dataset", "dataset", ""),
    ("condition", "condition", ""),
    ("window", "window", ""),
    ("patch_auroc", "patch AUROC", ".3f"),
    ("worst_patch_auroc", "worst patch's image AUROC", ".3f"),
    ("defective_left_out", "defective images left out of calibration", ".0%"),
    ("good_left_out", "good images left out", ".0%"),
]


def cell_masks(masks: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """(N, H, W) bool pixel masks -> (N, h*w) bool: a cell is a defect patch if any of its pixels
    is."""
    import torch
    import torch.nn.functional as F

    pooled = F.adaptive_max_pool2d(torch.from_numpy(masks).float().unsqueeze(1), grid)
    return pooled.flatten(1).numpy() > 0


def far_from_defects(defect: np.ndarray, grid: tuple[int, int], cells: int) -> np.ndarray:
    """(N, h*w) defect patches -> (N, h*w) bool: patches of defective images at least `cells + 1`
    grid cells from any defect patch (normal patches of the same population as the defects)."""
    import torch
    import torch.nn.functional as F

    cell_grid = torch.from_numpy(defect).float().view(-1, 1, *grid)
    near = F.max_pool2d(cell_grid, 2 * cells + 1, stride=1, padding=cells).flatten(1).numpy() > 0
    return ~near & defect.any(axis=1, keepdims=True)


def kept_shares(
    scores: np.ndarray,
    defect: np.ndarray,
    normal: np.ndarray,
    cut: float,
    far: np.ndarray | None = None,
) -> dict:
    """scores (N, P), defect/normal/far (N, P) bool -> shares kept at `cut` (None where a class is
    empty)."""
    keep = scores <= cut

    def share(members: np.ndarray | None) -> float | None:
        return float(keep[members].mean()) if members is not None and members.any() else None

    has_defect = defect.any(axis=1)
    return {
        "kept": float(keep.mean()),
        "defect_kept": share(defect),
        "normal_kept": share(normal),
        "far_normal_kept": share(far),
        "images_with_defect_kept": float((keep & defect).any(axis=1)[has_defect].mean())
        if has_defect.any()
        else None,
    }


def main(argv: list[str] | None = None) -> None:
    from patchshift.core.adapt.target_memory import target_features
    from patchshift.core.common.fileio import atomic_write_bytes
    from patchshift.core.engine.contamination import FilterSettings, mutual_scores, robust_cut
    from patchshift.core.engine.patchcore import suspect_free_images
    from patchshift.core.evaluation.data import labelled_samples, load_mask, train_images
    from patchshift.core.evaluation.metrics import image_auroc

    from .protocol import as_float, corrupt_uint8, get_model, load_images

    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.filter_masks",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--data-root", default=str(DEFAULT_DATA_ROOT))
    parser.add_argument("--datasets", nargs="*", default=list(DATASETS))
    parser.add_argument(
        "--image-size", default=None, help="override the datasets' model input size"
    )
    parser.add_argument("--normal", type=int, default=100)
    parser.add_argument(
        "--defective", type=int, default=25, help="defective test images (at least 1)"
    )
    parser.add_argument("--corruption", default=None)
    parser.add_argument("--severity", type=int, default=5)
    parser.add_argument("--cuts", nargs="*", type=float, default=[0.0, 0.5, 1.0, 2.0, 3.0])
    parser.add_argument("--references", type=int, default=FilterSettings.references)
    parser.add_argument("--closest-share", type=float, default=FilterSettings.closest_share)
    parser.add_argument(
        "--window",
        type=int,
        default=None,
        help="per-position scoring: grid cells around a patch's place",
    )
    parser.add_argument("--model-cache", default=str(RESULTS / "models"))
    parser.add_argument("--device", default="auto")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(RESULTS / "filter-masks.json"))
    args = parser.parse_args(argv)
    if args.defective < 1 or args.normal < 1:
        parser.error("--normal and --defective need at least one image each")
    rows, image_rows = [], []
    for name in args.datasets:
        rng = np.random.default_rng(args.seed)  # the same draws whatever other datasets run
        root = Path(args.data_root) / name
        model = get_model(
            name, root, Path(args.model_cache), args.device, model_settings(name, args.image_size)
        )
        train, samples = train_images(root), labelled_samples(root)
        defective = [s for s in samples if s.label == 1]
        good_paths = [train[i] for i in np.sort(rng.permutation(len(train))[: args.normal])]
        bad = [defective[i] for i in np.sort(rng.permutation(len(defective))[: args.defective])]
        size = model.config.image_size
        images = corrupt_uint8(
            load_images(good_paths + [s.path for s in bad], size),
            args.corruption,
            args.severity,
            args.seed,
        )
        pixel_masks = np.concatenate(
            [
                np.zeros((len(good_paths), size[1], size[0]), bool),
                np.stack([load_mask(s, size) for s in bad]),
            ]
        )
        feats = target_features(
            model.extractor, as_float(images), model.config.batch_size, model.device
        )
        n, grid = len(feats), tuple(feats.shape[1:3])
        scores = mutual_scores(
            feats.reshape(n, -1, feats.shape[-1]).to(model.device),
            FilterSettings(args.references, args.closest_share, seed=args.seed, window=args.window),
            grid=grid,
        ).cpu()
        defect = cell_masks(pixel_masks, grid)
        far = far_from_defects(defect, grid, FAR_CELLS)
        normal = np.zeros_like(defect)
        normal[: len(good_paths)] = True
        condition = f"{args.corruption} {args.severity}" if args.corruption else "clean"
        window = "anywhere" if args.window is None else args.window
        for z in args.cuts:
            rows.append(
                {
                    "dataset": name,
                    "condition": condition,
                    "window": window,
                    "cut_z": z,
                    "n_normal": len(good_paths),
                    "n_defective": len(bad),
                    "defect_patches": int(defect.sum()),
                    **kept_shares(scores.numpy(), defect, normal, robust_cut(scores, z), far),
                }
            )
            print(rows[-1], flush=True)
        is_defective = np.arange(n) >= len(good_paths)
        left_out = ~suspect_free_images(scores).numpy()
        labelled = defect | normal
        image_rows.append(
            {
                "dataset": name,
                "condition": condition,
                "window": window,
                "patch_auroc": image_auroc(defect[labelled], scores.numpy()[labelled]),
                "worst_patch_auroc": image_auroc(is_defective, scores.amax(1).numpy()),
                "defective_left_out": float(left_out[is_defective].mean()),
                "good_left_out": float(left_out[~is_defective].mean()),
            }
        )
        print(image_rows[-1], flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(
        args.out,
        json.dumps(
            {"machine": machine(), "args": vars(args), "rows": rows, "images": image_rows}, indent=2
        ).encode(),
    )
    print(f"\nfilter against the masks ({machine()})")
    print(markdown(rows, COLUMNS))
    print()
    print(markdown(image_rows, IMAGE_COLUMNS))


if __name__ == "__main__":
    main()
