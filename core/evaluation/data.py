"""Datasets in the MVTec AD layout.

ROOT/train/good/*.png|jpg            normal training images
ROOT/test/good/*                     normal test images
ROOT/test/<defect>/*                 anomalous test images
ROOT/ground_truth/<defect>/<stem>_mask.png   255 = defect pixel (none for good images; optional:
                                             most plants label images, not pixels)
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from patchshift.core.common.errors import DatasetError
from patchshift.core.common.images import IMAGE_SUFFIXES


@dataclass(frozen=True)
class Sample:
    path: Path
    label: int  # 0 normal, 1 anomalous
    defect: str  # "good" or the defect type
    mask_path: Path | None  # None for good images and for defective images labelled without a mask


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def train_images(root: str | os.PathLike[str]) -> list[Path]:
    folder = Path(root) / "train" / "good"
    if not folder.is_dir():
        raise DatasetError(f"{root} does not follow the MVTec AD layout: {folder} is missing")
    images = _images_in(folder)
    if not images:
        raise DatasetError(f"{folder} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    return images


def labelled_samples(root: str | os.PathLike[str]) -> list[Sample]:
    """All test images with labels and, where there is one, the defect's mask path."""
    root = Path(root)
    test_dir = root / "test"
    if not test_dir.is_dir():
        raise DatasetError(f"{root} does not follow the MVTec AD layout: {test_dir} is missing")
    samples: list[Sample] = []
    for defect_dir in sorted(p for p in test_dir.iterdir() if p.is_dir()):
        defect = defect_dir.name
        for image in _images_in(defect_dir):
            if defect == "good":
                samples.append(Sample(image, 0, defect, None))
                continue
            mask = root / "ground_truth" / defect / f"{image.stem}_mask.png"
            samples.append(Sample(image, 1, defect, mask if mask.is_file() else None))
    if not samples:
        raise DatasetError(f"{test_dir} holds no test images")
    if len({s.label for s in samples}) < 2:
        kind = "good" if samples[0].label == 0 else "defective"
        raise DatasetError(
            f"{test_dir} holds only {kind} images; evaluation needs test/good and at least one "
            "test/<defect> folder"
        )
    return samples


def load_mask(sample: Sample, size: tuple[int, int]) -> np.ndarray:
    """Boolean (H, W) mask at `size` = (width, height).

    A pixel of the resized mask is defective if any defect pixel falls inside it (area
    resampling, then > 0), so defects smaller than one resized pixel are kept, not erased.
    """
    width, height = size
    if sample.mask_path is None:
        return np.zeros((height, width), dtype=bool)
    mask = cv2.imread(str(sample.mask_path), cv2.IMREAD_GRAYSCALE)
    if mask is None:
        raise DatasetError(f"{sample.mask_path}: cannot read the mask image")
    resized = cv2.resize(
        (mask > 127).astype(np.float32), (width, height), interpolation=cv2.INTER_AREA
    )
    return resized > 0
