"""Heatmap overlays a person can read: colour map over the photo, outline where it fails."""

from __future__ import annotations

import cv2
import numpy as np


def overlay(rgb: np.ndarray, heatmap: np.ndarray, threshold: float, alpha: float = 0.6) -> np.ndarray:
    """(H, W, 3) uint8 image + (H, W) heatmap at the same size -> (H, W, 3) uint8 overlay.

    Colours span [0.5, 1.5] x threshold on every image, so colours compare across images:
    blue is well below the threshold, red above it; regions above the threshold are outlined.
    """
    low, high = 0.5 * threshold, 1.5 * threshold
    scaled = np.clip((heatmap - low) / max(high - low, 1e-12), 0.0, 1.0)
    colours = cv2.applyColorMap((scaled * 255).astype(np.uint8), cv2.COLORMAP_JET)[..., ::-1]
    # Opacity grows with the score, so normal areas keep the photo readable.
    weight = (0.15 + (alpha - 0.15) * scaled)[..., None] if alpha > 0.15 else np.full((*scaled.shape, 1), alpha)
    blended = (rgb.astype(np.float32) * (1 - weight) + colours.astype(np.float32) * weight).astype(np.uint8)
    above = (heatmap > threshold).astype(np.uint8)
    contours, _ = cv2.findContours(above, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    thickness = max(1, round(max(rgb.shape[:2]) / 300))
    blended = np.ascontiguousarray(blended)
    cv2.drawContours(blended, contours, -1, (255, 255, 255), thickness)
    return blended


def encode_png(rgb: np.ndarray) -> bytes:
    ok, data = cv2.imencode(".png", np.ascontiguousarray(rgb[..., ::-1]))
    if not ok:
        raise RuntimeError("PNG encoding failed")
    return data.tobytes()


def heatmap_png(rgb: np.ndarray, anomaly_map: np.ndarray, threshold: float) -> bytes:
    """The overlay PNG at the photo's own size from a heatmap at the model's input size."""
    from .images import map_to_original

    heatmap = map_to_original(anomaly_map, (rgb.shape[1], rgb.shape[0]))
    return encode_png(overlay(rgb, heatmap, threshold))
