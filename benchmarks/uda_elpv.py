"""UDA benchmark on ELPV solar cells: monocrystalline and polycrystalline modules as two domains.

    python -m benchmarks.uda_elpv [--directions mono-poly poly-mono] [--epochs 10]
    [--image-size 128]

Needs the PyPI package `elpv-dataset`. Normal = defect probability 0, anomalous = probability 1
(the uncertain 1/3 and 2/3 cells are left out). Source: the normal cells of one type (a fixed
random 70%). Target: the other type, split with a fixed seed into an unlabeled adaptation set with
--anomaly-ratio defective cells and a held-out evaluation set (its remaining normal and defective
cells). Rows: source-only DSVDD (lower bound), UDA (frozen encoder for clustering), the paper's
Table 4 ablations (align all targets = no clustering; psi = phi), the supervised oracle (target
normals known), and PatchCore fitted on the source normals, without and with RoDA / AdaBN on the
target set. Then the anomaly-ratio sweep (paper Fig. 4) with clustering accuracy (share of the
dominant cluster that is truly normal). Writes benchmarks/results/uda-elpv.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from .helpers import RESULTS, PeakMemory, machine, markdown


def load_elpv(size: int) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    import torch.nn.functional as F

    from .elpv import elpv_cells

    cells, labels, types = elpv_cells()
    gray = torch.from_numpy(cells).float().div(255).unsqueeze(1)
    resized = torch.cat(
        [
            F.interpolate(gray[i : i + 256], size=(size, size), mode="area")
            for i in range(0, len(gray), 256)
        ]
    )
    return resized.expand(-1, 3, -1, -1).contiguous(), labels, types


def split(
    labels: np.ndarray,
    types: np.ndarray,
    source: str,
    target: str,
    ratio: float,
    seed: int,
    size: int = 200,
) -> dict:
    """Source normals; a target adaptation set of `size` cells with `ratio` defective, drawn from
    one half of the target's cells; the other half is the evaluation set (fixed whatever the ratio).
    """
    rng = np.random.default_rng(seed)
    src_normal = rng.permutation(np.flatnonzero((types == source) & (labels == 0)))
    tgt_normal = rng.permutation(np.flatnonzero((types == target) & (labels == 0)))
    tgt_bad = rng.permutation(np.flatnonzero((types == target) & (labels == 1)))
    half_normal, half_bad = tgt_normal[: len(tgt_normal) // 2], tgt_bad[: len(tgt_bad) // 2]
    n_bad = min(len(half_bad), round(ratio * size))
    n_normal = min(len(half_normal), size - n_bad)
    return {
        "source": src_normal[: int(0.7 * len(src_normal))],
        "adapt": np.concatenate([half_normal[:n_normal], half_bad[:n_bad]]),
        "eval": np.concatenate([tgt_normal[len(tgt_normal) // 2 :], tgt_bad[len(tgt_bad) // 2 :]]),
    }


def run_uda(images, labels, parts, cfg, mode: str) -> dict:
    from patchshift.core.evaluation.metrics import image_auroc
    from patchshift.core.uda.train import fit_uda

    target = images[parts["adapt"]]
    selected = None
    if mode == "source-only":
        target = None
    elif mode == "oracle":
        selected = torch.from_numpy(labels[parts["adapt"]] == 0)
    elif mode == "align-all":
        selected = torch.ones(len(parts["adapt"]), dtype=torch.bool)
    with PeakMemory() as memory:
        started = time.perf_counter()
        model, report = fit_uda(
            images[parts["source"]], target, cfg, device="auto", selected=selected
        )
        seconds = time.perf_counter() - started
    scores = model.score_tensor(images[parts["eval"]], cfg.batch_size)
    row = {
        "image_auroc": image_auroc(labels[parts["eval"]], scores),
        "train_s": seconds,
        "peak_gib": memory.peak_gib,
    }
    if report.selected is not None and mode == "uda":
        chosen = report.selected.astype(bool)
        row["cluster_purity"] = (
            float((labels[parts["adapt"]][chosen] == 0).mean()) if chosen.any() else float("nan")
        )
        row["cluster_sizes"] = report.cluster_sizes
    return row


def png_bytes(image: torch.Tensor) -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray((image.permute(1, 2, 0) * 255).round().byte().numpy()).save(
        buffer, format="PNG"
    )
    return buffer.getvalue()


def run_patchcore(images, labels, parts, size: int, method: str | None) -> dict:
    from patchshift.core.adapt import AdaptConfig, adapt
    from patchshift.core.engine.model_config import ModelConfig
    from patchshift.core.engine.patchcore import fit
    from patchshift.core.evaluation.metrics import image_auroc

    started = time.perf_counter()
    sources = [
        png_bytes(image) for image in images[parts["source"]]
    ]  # fit takes image files, as a user gives them
    model = fit(sources, ModelConfig(image_size=size), device="auto")
    if method:
        model, _ = adapt(model, images[parts["adapt"]], AdaptConfig(method=method))
    scores, _ = model.score_batches(
        images[parts["eval"]][i : i + 16] for i in range(0, len(parts["eval"]), 16)
    )
    return {
        "image_auroc": image_auroc(labels[parts["eval"]], scores),
        "train_s": time.perf_counter() - started,
    }


def main(argv: list[str] | None = None) -> None:
    from patchshift.core.common.errors import DatasetError
    from patchshift.core.uda import UDAConfig

    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.uda_elpv",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--directions", nargs="*", default=["mono-poly", "poly-mono"])
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--clusters", type=int, default=8)
    parser.add_argument("--anomaly-ratio", type=float, default=0.1)
    parser.add_argument(
        "--modes",
        nargs="*",
        default=[
            "source-only",
            "uda",
            "align-all",
            "psi-phi",
            "oracle",
            "patchcore",
            "patchcore+bn-stats",
            "patchcore+roda",
        ],
    )
    parser.add_argument("--sweep", nargs="*", type=float, default=[0.1, 0.3, 0.5, 0.7, 0.9])
    parser.add_argument(
        "--sweep-directions",
        nargs="*",
        default=None,
        help="directions of the ratio sweep (default: all)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out-dir", default=str(RESULTS))
    args = parser.parse_args(argv)

    out = Path(args.out_dir) / "uda-elpv.json"
    out.parent.mkdir(parents=True, exist_ok=True)

    def save(
        rows: list, sweep: list
    ) -> dict:  # after every row: a long run stopped early keeps what it measured
        result = {
            "rows": rows,
            "sweep": sweep,
            "config": cfg.to_dict(),
            "machine": machine(),
            "args": vars(args),
        }
        out.write_text(json.dumps(result, indent=2, default=str))
        return result

    images, labels, types = load_elpv(args.image_size)
    cfg = UDAConfig(
        image_size=args.image_size,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        clusters=args.clusters,
        seed=args.seed,
    )
    rows, sweep = [], []
    for direction in args.directions:
        source, target = direction.split("-")
        parts = split(labels, types, source, target, args.anomaly_ratio, args.seed)
        print(
            f"{direction}: source {len(parts['source'])} normals, adaptation {len(parts['adapt'])} "
            f"({labels[parts['adapt']].mean():.0%} defective), evaluation {len(parts['eval'])}",
            flush=True,
        )
        for mode in args.modes:
            if mode.startswith("patchcore"):
                method = mode.split("+")[1] if "+" in mode else None
                row = run_patchcore(images, labels, parts, args.image_size, method)
            else:
                mode_cfg = (
                    cfg if mode != "psi-phi" else UDAConfig(**{**cfg.to_dict(), "encoder": "phi"})
                )
                row = run_uda(images, labels, parts, mode_cfg, "uda" if mode == "psi-phi" else mode)
            rows.append({"direction": direction, "method": mode, **row})
            print(rows[-1], flush=True)
            save(rows, sweep)
        done = {r["method"]: r for r in rows if r["direction"] == direction}
        for ratio in (
            args.sweep
            if args.sweep_directions is None or direction in args.sweep_directions
            else []
        ):
            parts = split(labels, types, source, target, ratio, args.seed)
            if (
                ratio == args.anomaly_ratio and "uda" in done
            ):  # the same split as the main row: reuse it
                row = {k: v for k, v in done["uda"].items() if k not in ("direction", "method")}
            else:
                try:
                    row = run_uda(images, labels, parts, cfg, "uda")
                except DatasetError as exc:  # the scarcity check refusing is a result, not a crash
                    row = {"image_auroc": float("nan"), "refused": str(exc)[:160]}
            sweep.append(
                {
                    "direction": direction,
                    "anomaly_ratio": ratio,
                    "n_adapt": len(parts["adapt"]),
                    **row,
                }
            )
            print(sweep[-1], flush=True)
            save(rows, sweep)
    result = save(rows, sweep)
    print(f"\nELPV, image size {args.image_size}, {args.epochs} epochs ({result['machine']})")
    print(
        markdown(
            rows,
            [
                ("direction", "direction", ""),
                ("method", "method", ""),
                ("image_auroc", "image AUROC", ".3f"),
                ("cluster_purity", "dominant-cluster purity", ".2f"),
                ("train_s", "train s", ".0f"),
            ],
        )
    )
    print("\nanomaly-ratio sweep (UDA)")
    print(
        markdown(
            sweep,
            [
                ("direction", "direction", ""),
                ("anomaly_ratio", "defective share of target", ".0%"),
                ("n_adapt", "target images", "d"),
                ("image_auroc", "image AUROC", ".3f"),
                ("cluster_purity", "dominant-cluster purity", ".2f"),
            ],
        )
    )


if __name__ == "__main__":
    main()
