"""Generated products for checking defaults beyond the two real datasets (MVTec AD layout).

    python -m benchmarks.generated --out /tmp/generated [--seed 0]
    python -m benchmarks.feature_reductions --data-root /tmp/generated --datasets tiles

"tiles": grey cast surfaces, 256 x 256: smooth shading, mottling and grain, a random illumination
gradient per image; test defects are small (about 20 to 300 of 65,536 pixels) and of three kinds:
thin scratches, pits, and faint stains. A product nobody tuned on, in the spirit of the grey tile
set that showed the engine's weakness: the defaults must hold here too.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

SIZE = 256
DEFECTS = ("scratch", "pit", "stain")


def _smooth_noise(rng: np.random.Generator, sigma: float) -> np.ndarray:
    noise = cv2.GaussianBlur(rng.normal(0, 1, (SIZE, SIZE)).astype(np.float32), (0, 0), sigma)
    return noise / (noise.std() + 1e-6)


def surface(rng: np.random.Generator) -> np.ndarray:
    """(SIZE, SIZE) float grey surface in [0, 1]."""
    y, x = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32) / SIZE
    angle = rng.uniform(0, 2 * np.pi)
    gradient = 0.05 * ((x - 0.5) * np.cos(angle) + (y - 0.5) * np.sin(angle))
    grey = (
        0.55
        + gradient
        + 0.05 * _smooth_noise(rng, 24)
        + 0.03 * _smooth_noise(rng, 3)
        + 0.02 * rng.normal(0, 1, (SIZE, SIZE))
    )
    return grey.astype(np.float32)


def plant(grey: np.ndarray, kind: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A small defect of `kind` on a copy of `grey`; returns (image, boolean mask)."""
    shape = np.zeros((SIZE, SIZE), np.uint8)
    cx, cy = (int(v) for v in rng.integers(32, SIZE - 32, 2))
    if kind == "scratch":
        length, angle = rng.uniform(15, 40), rng.uniform(0, np.pi)
        dx, dy = int(length / 2 * np.cos(angle)), int(length / 2 * np.sin(angle))
        cv2.line(shape, (cx - dx, cy - dy), (cx + dx, cy + dy), 1, int(rng.integers(1, 3)))
        depth = rng.uniform(0.12, 0.2)
    elif kind == "pit":
        cv2.circle(shape, (cx, cy), int(rng.integers(2, 6)), 1, -1)
        depth = rng.uniform(0.15, 0.25)
    else:
        axes = (int(rng.integers(5, 11)), int(rng.integers(4, 9)))
        cv2.ellipse(shape, (cx, cy), axes, float(rng.uniform(0, 180)), 0, 360, 1, -1)
        depth = rng.uniform(0.06, 0.09)
    mask = shape.astype(bool)
    soft = cv2.GaussianBlur(shape.astype(np.float32), (0, 0), 0.8)
    return grey - depth * soft, mask


def write(
    root: Path, seed: int = 0, n_train: int = 300, n_good: int = 100, n_per_defect: int = 40
) -> Path:
    rng = np.random.default_rng(seed)
    folders = [
        "train/good",
        "test/good",
        *(f"test/{d}" for d in DEFECTS),
        *(f"ground_truth/{d}" for d in DEFECTS),
    ]
    for folder in folders:
        (root / folder).mkdir(parents=True, exist_ok=True)

    def save(grey: np.ndarray, path: Path) -> None:
        Image.fromarray((np.clip(grey, 0, 1) * 255).round().astype(np.uint8)).convert("RGB").save(
            path
        )

    for i in range(n_train):
        save(surface(rng), root / "train/good" / f"{i:03d}.png")
    for i in range(n_good):
        save(surface(rng), root / "test/good" / f"{i:03d}.png")
    for kind in DEFECTS:
        for i in range(n_per_defect):
            image, mask = plant(surface(rng), kind, rng)
            save(image, root / f"test/{kind}" / f"{i:03d}.png")
            Image.fromarray(mask.astype(np.uint8) * 255).save(
                root / f"ground_truth/{kind}" / f"{i:03d}_mask.png"
            )
    return root


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.generated",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--out", required=True, help="folder that receives tiles/ in the MVTec AD layout"
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    print(write(Path(args.out) / "tiles", args.seed))


if __name__ == "__main__":
    main()
