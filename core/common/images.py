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

from patchshift.core.common.errors import DatasetError, InvalidImageError

# An image as a caller may hand it over: encoded bytes or a file path.
ImageSource = bytes | str | os.PathLike[str]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
# Largest accepted image: 100 megapixels (a 10k x 10k camera frame) and 30k pixels a side.
MAX_PIXELS = 100_000_000
MAX_SIDE = 30_000
# Our limit (MAX_PIXELS), checked before any pixel is decoded, is the one that applies, so Pillow's
# warning above its own 89.5 MP default is silenced once for the process. Not per call: the service
# decodes on many threads and warnings.catch_warnings() is not thread-safe (tests/test_images.py).
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)


def decode_image(source: bytes | str | os.PathLike[str], name: str | None = None) -> Image.Image:
    """Decode a file or bytes into a fully loaded Pillow image in its own mode (EXIF orientation
    applied), or raise InvalidImageError. The size check comes before any pixel is decoded."""
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
    too_large = (
        f"{label}: image is {{}} pixels; accepted are up to {MAX_SIDE} pixels a side "
        f"and {MAX_PIXELS // 1_000_000} megapixels"
    )
    try:
        image = Image.open(stream)
        width, height = image.size
        if (
            width < 1
            or height < 1
            or width > MAX_SIDE
            or height > MAX_SIDE
            or width * height > MAX_PIXELS
        ):
            raise InvalidImageError(too_large.format(f"{width}x{height}"))
        image.load()
        ImageOps.exif_transpose(image, in_place=True)
    except InvalidImageError:
        raise
    except Image.DecompressionBombError:  # over twice Pillow's limit: refused while opening
        raise InvalidImageError(
            too_large.format(f"over {2 * Image.MAX_IMAGE_PIXELS // 1_000_000} million")
        ) from None
    except UnidentifiedImageError:
        raise InvalidImageError(f"{label}: not an image (unknown or unsupported format)") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise InvalidImageError(f"{label}: image data is truncated or corrupt ({exc})") from None
    return image


def open_image(source: bytes | str | os.PathLike[str], name: str | None = None) -> Image.Image:
    """Decode a file or bytes into a fully loaded RGB Pillow image, or raise InvalidImageError."""
    return to_rgb(decode_image(source, name))


# Modes whose resize commutes exactly with the conversion to RGB: resized first, so a huge grey
# camera frame is never expanded to RGB at full size.
_RESIZE_FIRST = ("RGB", "L")


def preview_size(original: tuple[int, int], max_side: int) -> tuple[int, int]:
    """(width, height) scaled down so the longer side is at most `max_side` (never up)."""
    width, height = original
    scale = min(1.0, max_side / max(width, height))
    return max(1, round(width * scale)), max(1, round(height * scale))


def decode_for_model(
    source: bytes | str | os.PathLike[str],
    size: tuple[int, int],
    name: str | None = None,
    preview_side: int | None = None,
) -> tuple[np.ndarray, tuple[int, int], np.ndarray | None]:
    """(model input (H, W, 3) uint8, original (width, height), preview for overlays or None).

    Memory is one decoded image plus small outputs: the preview's longer side is at most
    `preview_side`, whatever the original size."""
    image = decode_image(source, name)
    model_input = resize_rgb(image, size)
    preview = (
        resize_rgb(image, preview_size(image.size, preview_side), reducing_gap=3.0)
        if preview_side
        else None
    )
    return model_input, image.size, preview


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


def resize_rgb(
    image: Image.Image, size: tuple[int, int], reducing_gap: float | None = None
) -> np.ndarray:
    """Any decoded image -> (H, W, 3) uint8 at (width, height) `size`: converted to RGB, resized
    (bilinear); modes where the two commute are resized first (no full-size RGB copy)."""
    if image.mode not in _RESIZE_FIRST:
        image = to_rgb(image)
    if image.size != tuple(size):
        image = image.resize(tuple(size), Image.Resampling.BILINEAR, reducing_gap=reducing_gap)
    return np.asarray(to_rgb(image), dtype=np.uint8)


def to_tensor(arrays: Sequence[np.ndarray]) -> torch.Tensor:
    """Stack (H, W, 3) uint8 arrays into a (B, 3, H, W) float tensor in [0, 1]."""
    if len(arrays) == 0:
        raise InvalidImageError("no images given (empty batch)")
    batch = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)
    return batch.float().div_(255.0)


def load_batch(
    sources: Sequence[ImageSource], size: tuple[int, int], names: Sequence[str] | None = None
) -> tuple[torch.Tensor, list[tuple[int, int]]]:
    """Decode and resize a batch; returns the input tensor and each original (width, height)."""
    arrays, sizes = [], []
    for i, source in enumerate(sources):
        array, original, _ = decode_for_model(source, size, names[i] if names else None)
        sizes.append(original)
        arrays.append(array)
    return to_tensor(arrays), sizes


def map_to_original(heatmap: np.ndarray, original_size: tuple[int, int]) -> np.ndarray:
    """Resize an (H, W) heatmap to the original (width, height), bilinear."""
    import cv2

    width, height = original_size
    if heatmap.shape == (height, width):
        return heatmap
    return cv2.resize(heatmap.astype(np.float32), (width, height), interpolation=cv2.INTER_LINEAR)


def list_images(paths: Iterable[str | os.PathLike[str]]) -> list[Path]:
    """Expand files and folders (recursively, sorted) into image files; folders ignore
    non-images."""
    found: list[Path] = []
    for entry in paths:
        path = Path(entry)
        if path.is_dir():
            found.extend(
                sorted(
                    p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                )
            )
        elif path.is_file():
            found.append(path)
        else:
            raise InvalidImageError(f"{path}: no such file or folder")
    return found


def iter_batches(
    sources: Sequence[ImageSource], size: tuple[int, int], batch_size: int, workers: int = 2
) -> Iterable[tuple[torch.Tensor, list[tuple[int, int]], int]]:
    """Yield (batch tensor, original sizes, offset of the batch) while the next batch decodes.

    Decoding runs in a small thread pool (Pillow releases the GIL while decoding and resizing).
    """
    from concurrent.futures import ThreadPoolExecutor

    def decode(source: bytes | str | os.PathLike[str]) -> tuple[np.ndarray, tuple[int, int]]:
        array, original, _ = decode_for_model(source, size)
        return array, original

    with ThreadPoolExecutor(max_workers=workers) as pool:
        starts = list(range(0, len(sources), batch_size))
        pending = [
            pool.submit(lambda s=s: [decode(x) for x in sources[s : s + batch_size]])
            for s in starts[:2]
        ]
        for i, start in enumerate(starts):
            decoded = pending[i].result()
            if i + 2 < len(starts):
                nxt = starts[i + 2]
                pending.append(
                    pool.submit(lambda s=nxt: [decode(x) for x in sources[s : s + batch_size]])
                )
            yield to_tensor([a for a, _ in decoded]), [s for _, s in decoded], start


def resize_batch(images: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    """A (N, 3, H, W) batch at (height, width) `hw` (area resampling); unchanged when already there.
    For batches kept at one input size and scored by a model with another (UDA has its own)."""
    hw = tuple(hw)
    return (
        images
        if tuple(images.shape[-2:]) == hw
        else torch.nn.functional.interpolate(images, size=hw, mode="area")
    )


def load_target(
    images: Sequence[ImageSource] | torch.Tensor, size: tuple[int, int]
) -> torch.Tensor:
    """A set of images (adaptation targets, UDA sources) as one (N, 3, H, W) tensor at `size`
    (width, height); unreadable files are an error naming them."""
    if isinstance(images, torch.Tensor):
        if images.ndim != 4 or images.shape[0] == 0:
            raise DatasetError(
                f"adaptation needs a non-empty (N, 3, H, W) batch, got {tuple(images.shape)}"
            )
        return resize_batch(images, (size[1], size[0]))
    if len(images) == 0:
        raise DatasetError("adaptation needs at least one image of the new condition")
    bad = []
    batches = []
    for start in range(0, len(images), 32):
        chunk = images[start : start + 32]
        try:
            batches.append(load_batch(chunk, size)[0])
        except InvalidImageError:
            for source in chunk:  # find every bad file, not just the first
                try:
                    load_batch([source], size)
                except InvalidImageError as exc:
                    bad.append(str(exc))
    if bad:
        raise InvalidImageError(f"{len(bad)} adaptation image(s) unusable: " + "; ".join(bad[:3]))
    return torch.cat(batches)
