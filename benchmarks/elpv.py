"""ELPV solar cells (PyPI `elpv-dataset`) as a third real product, in the MVTec AD layout.

    pip install elpv-dataset
    python -m benchmarks.elpv --out /tmp/elpv
    python -m benchmarks.shift --data-root /tmp/elpv --datasets elpv-poly \
        --methods none target-memory

Electroluminescence images of single cells, 300 x 300 grey; a cell is normal at defect probability
0 and defective at 1 (the graders' uncertain 1/3 and 2/3 are left out). One product per cell type:
`elpv-mono` and `elpv-poly`; train/good holds 60% of the type's normal cells (a fixed seed),
test/good the rest, test/crack the defective ones. ELPV has no defect masks: the shift benchmark
reports image AUROC and the verdicts there, no pixel metrics.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

TRAIN_SHARE = 0.6


def elpv_cells() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(N, 300, 300) uint8 cells with a certain grade, their labels (1 defective) and types
    (mono/poly)."""
    try:
        from elpv_dataset.utils import load_dataset
    except ImportError:
        raise SystemExit("this benchmark needs the ELPV data: pip install elpv-dataset") from None
    images, probs, types = load_dataset()
    keep = (probs == 0) | (probs == 1)
    return images[keep], (probs[keep] == 1).astype(int), np.asarray(types)[keep]


def export(out: Path, seed: int = 0) -> dict[str, dict[str, int]]:
    """Write elpv-mono and elpv-poly under `out`; returns the image counts per folder."""
    images, labels, types = elpv_cells()
    counts = {}
    for kind in ("mono", "poly"):
        rng = np.random.default_rng(seed)
        normal = rng.permutation(np.flatnonzero((types == kind) & (labels == 0)))
        n_train = round(TRAIN_SHARE * len(normal))
        folders = {
            "train/good": normal[:n_train],
            "test/good": normal[n_train:],
            "test/crack": np.flatnonzero((types == kind) & (labels == 1)),
        }
        root = out / f"elpv-{kind}"
        for folder, members in folders.items():
            (root / folder).mkdir(parents=True, exist_ok=True)
            for i in members:
                Image.fromarray(images[i]).save(root / folder / f"{i:04d}.png")
        counts[root.name] = {folder: len(members) for folder, members in folders.items()}
    return counts


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.elpv",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--out", required=True, help="folder to write elpv-mono/ and elpv-poly/ into"
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    for name, folders in export(Path(args.out), args.seed).items():
        print(name, ", ".join(f"{folder} {n}" for folder, n in folders.items()))


if __name__ == "__main__":
    main()
