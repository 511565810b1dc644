"""Decode any image file into RGB, resize it one documented way, and map heatmaps back.

The one conversion (documented in the README):
- EXIF orientation is applied, so the image is seen as a viewer shows it.
- Modes: grayscale is replicated to three channels; palette images are expanded through their
  palette; alpha (RGBA, LA, PA) is dropped; CMYK/YCbCr/LAB/HSV go through Pillow's RGB
  conversion; 16-bit and 32-bit integer images are read as 0..65535 and divided by 257;
  float images are read as 0..1 and clipped.
- The RGB image is resized (bilinear, antialiased) to the model input size, without cropping,
  so every pixel is inspected; heatmaps are resized back to the original width and height.
"""

from __future__ import annotations

import io
import os
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import InvalidImageError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
# Largest accepted image: 100 megapixels (a 10k x 10k camera frame) and 30k pixels a side.
MAX_PIXELS = 100_000_000
MAX_SIDE = 30_000


def open_image(source: bytes | str | os.PathLike[str], name: str | None = None) -> Image.Image:
    """Decode a file or bytes into a fully loaded RGB Pillow image, or raise InvalidImageError."""
    label = name or (str(source) if not isinstance(source, bytes) else "<upload>")
    if isinstance(source, bytes):
        if not source:
            raise InvalidImageError(f"{label}: file is empty (0 bytes)")
        stream: io.BytesIO | str = io.BytesIO(source)
    else:
        path = Path(source)
        if not path.is_file():
            raise InvalidImageError(f"{label}: no such file")
        if path.stat().st_size == 0:
            raise InvalidImageError(f"{label}: file is empty (0 bytes)")
        stream = str(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(stream)
            width, height = image.size
            if width < 1 or height < 1 or width > MAX_SIDE or height > MAX_SIDE or width * height > MAX_PIXELS:
                raise InvalidImageError(
                    f"{label}: image is {width}x{height} pixels; accepted are up to {MAX_SIDE} pixels a side "
                    f"and {MAX_PIXELS // 1_000_000} megapixels"
                )
            image.load()
            image = ImageOps.exif_transpose(image)
    except InvalidImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise InvalidImageError(f"{label}: image is too large to decode safely ({exc})") from None
    except UnidentifiedImageError:
        raise InvalidImageError(f"{label}: not an image (unknown or unsupported format)") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise InvalidImageError(f"{label}: image data is truncated or corrupt ({exc})") from None
    return to_rgb(image)


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB (see module docstring for the rules)."""
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in ("I", "I;16", "I;16B", "I;16L", "I;16N"):
        values = np.asarray(image, dtype=np.float64)
        gray = np.clip(np.rint(values / 257.0), 0, 255).astype(np.uint8)
        return Image.fromarray(gray).convert("RGB")
    if mode == "F":
        values = np.asarray(image, dtype=np.float64)
        gray = np.clip(np.rint(np.nan_to_num(values) * 255.0), 0, 255).astype(np.uint8)
        return Image.fromarray(gray).convert("RGB")
    if mode == "P" or mode == "PA":
        return image.convert("RGBA").convert("RGB")
    return image.convert("RGB")


def resize_rgb(image: Image.Image, size: tuple[int, int]) -> np.ndarray:
    """Resize to (width, height); returns an (H, W, 3) uint8 array."""
    if image.size != tuple(size):
        image = image.resize(tuple(size), Image.Resampling.BILINEAR)
    return np.asarray(image, dtype=np.uint8)


def to_tensor(arrays: Sequence[np.ndarray]) -> torch.Tensor:
    """Stack (H, W, 3) uint8 arrays into a (B, 3, H, W) float tensor in [0, 1]."""
    if len(arrays) == 0:
        raise InvalidImageError("no images given (empty batch)")
    batch = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)
    return batch.float().div_(255.0)


def load_batch(
    sources: Sequence[bytes | str | os.PathLike[str]], size: tuple[int, int], names: Sequence[str] | None = None
) -> tuple[torch.Tensor, list[tuple[int, int]]]:
    """Decode and resize a batch; returns the input tensor and each original (width, height)."""
    arrays, sizes = [], []
    for i, source in enumerate(sources):
        image = open_image(source, names[i] if names else None)
        sizes.append(image.size)
        arrays.append(resize_rgb(image, size))
    return to_tensor(arrays), sizes


def map_to_original(heatmap: np.ndarray, original_size: tuple[int, int]) -> np.ndarray:
    """Resize an (H, W) heatmap to the original (width, height), bilinear."""
    import cv2

    width, height = original_size
    if heatmap.shape == (height, width):
        return heatmap
    return cv2.resize(heatmap.astype(np.float32), (width, height), interpolation=cv2.INTER_LINEAR)


def list_images(paths: Iterable[str | os.PathLike[str]]) -> list[Path]:
    """Expand files and folders (recursively, sorted) into image files; folders ignore non-images."""
    found: list[Path] = []
    for entry in paths:
        path = Path(entry)
        if path.is_dir():
            found.extend(sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES))
        elif path.is_file():
            found.append(path)
        else:
            raise InvalidImageError(f"{path}: no such file or folder")
    return found


def iter_batches(
    sources: Sequence[bytes | str | os.PathLike[str]], size: tuple[int, int], batch_size: int, workers: int = 2
) -> Iterable[tuple[torch.Tensor, list[tuple[int, int]], int]]:
    """Yield (batch tensor, original sizes, offset of the batch) while the next batch decodes.

    Decoding runs in a small thread pool (Pillow releases the GIL while decoding and resizing).
    """
    from concurrent.futures import ThreadPoolExecutor

    def decode(source: bytes | str | os.PathLike[str]) -> tuple[np.ndarray, tuple[int, int]]:
        image = open_image(source)
        return resize_rgb(image, size), image.size

    with ThreadPoolExecutor(max_workers=workers) as pool:
        starts = list(range(0, len(sources), batch_size))
        pending = [pool.submit(lambda s=s: [decode(x) for x in sources[s : s + batch_size]]) for s in starts[:2]]
        for i, start in enumerate(starts):
            decoded = pending[i].result()
            if i + 2 < len(starts):
                nxt = starts[i + 2]
                pending.append(pool.submit(lambda s=nxt: [decode(x) for x in sources[s : s + batch_size]]))
            yield to_tensor([a for a, _ in decoded]), [s for _, s in decoded], start
