"""Builds the sample product the README's walkthrough runs on: ball screws from BSData.

    python -m benchmarks.sample_product [--data-root ../shared/data] [--out docs/sample/screws]

A seeded draw of bsd's images (BSData, Schlagenhauf and Burghardt 2021, CC BY 4.0), scaled to
576 pixels wide (the model's input is 576x224) and stored as JPEG:
  train/good          40 normal screws to fit on
  test/good, test/pitting, ground_truth/pitting   10 + 10 to score and evaluate (with masks)
  new-lighting/batch  100 unlabeled screws under a darker light (brightness x0.55, contrast x0.7):
                      85 normal, 15 pitted, in a shuffled order, named by number
  new-lighting/test/good, new-lighting/test/pitting   10 + 10 fresh ones under that light
  new-lighting/ground_truth/pitting   their masks
No image appears twice. The draw is fixed by --seed, so the folder can be rebuilt byte for byte.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance

from .helpers import DEFAULT_DATA_ROOT

WIDTH = 576
QUALITY = 85
COUNTS = {"train": 40, "test_good": 10, "test_pitting": 10}
BATCH_GOOD, BATCH_PITTED, NEW_TEST = 85, 15, 10

CREDIT = """# Sample product: ball screws (BSData)

Images from BSData: T. Schlagenhauf and M. Burghardt, "Industrial Machine Tool Element Surface
Defect Dataset" (2021), https://doi.org/10.5445/IR/1000129520, licensed CC BY 4.0
(https://creativecommons.org/licenses/by/4.0/). Changes: a seeded selection, scaled to 576 pixels
wide, re-encoded as JPEG; the `new-lighting` images darkened (brightness x0.55, contrast x0.7);
masks scaled with their images.

Built by `python -m benchmarks.sample_product` from the MVTec-layout copy of the dataset.

| folder | images | what |
|---|---|---|
| train/good | 40 | normal screws to fit on |
| test/good, test/pitting | 10 + 10 | to score; `ground_truth/pitting` holds the pits' masks |
| new-lighting/batch | 100 | the line after a lighting change, unlabeled (15 are pitted) |
| new-lighting/test/good, new-lighting/test/pitting | 10 + 10 | fresh screws under the new light |
| new-lighting/ground_truth/pitting | 10 | their pits' masks |
"""


def darker(image: Image.Image) -> Image.Image:
    return ImageEnhance.Contrast(ImageEnhance.Brightness(image).enhance(0.55)).enhance(0.7)


def scaled(path: Path, mask: bool = False) -> Image.Image:
    image = Image.open(path)
    image = image.convert("L" if mask else "RGB")
    height = round(WIDTH * image.height / image.width)
    return image.resize((WIDTH, height), Image.NEAREST if mask else Image.LANCZOS)


def save(image: Image.Image, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".png":
        image.save(path, optimize=True)
    else:
        image.save(path, "JPEG", quality=QUALITY, optimize=True)


def build(root: Path, out: Path, seed: int) -> None:
    rng = np.random.default_rng(seed)
    train = sorted((root / "train/good").glob("*"))
    good = sorted((root / "test/good").glob("*"))
    pitted = sorted((root / "test/pitting").glob("*"))
    train = [train[i] for i in rng.permutation(len(train))]
    good = [good[i] for i in rng.permutation(len(good))]
    pitted = [pitted[i] for i in rng.permutation(len(pitted))]
    if out.exists():
        shutil.rmtree(out)
    for path in train[: COUNTS["train"]]:
        save(scaled(path), out / "train/good" / f"{path.stem}.jpg")
    for path in good[: COUNTS["test_good"]]:
        save(scaled(path), out / "test/good" / f"{path.stem}.jpg")
    for path in pitted[: COUNTS["test_pitting"]]:
        save(scaled(path), out / "test/pitting" / f"{path.stem}.jpg")
        mask = root / "ground_truth/pitting" / f"{path.stem}_mask.png"
        save(scaled(mask, mask=True), out / "ground_truth/pitting" / f"{path.stem}_mask.png")
    # the new condition: normal screws the model never saw (more training images, then test/good)
    fresh_good = train[COUNTS["train"] :] + good[COUNTS["test_good"] :]
    fresh_pitted = pitted[COUNTS["test_pitting"] :]
    batch = fresh_good[:BATCH_GOOD] + fresh_pitted[:BATCH_PITTED]
    for number, i in enumerate(rng.permutation(len(batch))):
        save(darker(scaled(batch[i])), out / "new-lighting/batch" / f"{number:03d}.jpg")
    test_good = fresh_good[BATCH_GOOD : BATCH_GOOD + NEW_TEST]
    test_pitted = fresh_pitted[BATCH_PITTED : BATCH_PITTED + NEW_TEST]
    for label, paths in (("good", test_good), ("pitting", test_pitted)):
        for path in paths:
            save(darker(scaled(path)), out / "new-lighting/test" / label / f"{path.stem}.jpg")
            mask = root / "ground_truth/pitting" / f"{path.stem}_mask.png"
            if label == "pitting":
                target = out / "new-lighting/ground_truth/pitting" / mask.name
                save(scaled(mask, mask=True), target)
    (out / "README.md").write_text(CREDIT)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.sample_product",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--data-root", default=str(DEFAULT_DATA_ROOT))
    parser.add_argument("--out", default="docs/sample/screws")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    build(Path(args.data_root) / "bsd", Path(args.out), args.seed)
    total = sum(f.stat().st_size for f in Path(args.out).rglob("*") if f.is_file())
    print(f"wrote {args.out}: {total / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
