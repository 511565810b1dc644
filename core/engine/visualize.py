"""Heatmap overlays a person can read: the photo untouched where it looks normal, colour only
where the anomaly map nears or passes the threshold, the failing regions outlined, the worst
spot circled when it nears the threshold, and on request a legend in the picture."""

from __future__ import annotations

import cv2
import numpy as np

# Colour starts at this share of the threshold (yellow) and is full red at FULL x threshold, so a
# colour means the same on every image of a model.
START, FULL = 0.75, 1.5
YELLOW, RED = np.array([255, 214, 0], np.float32), np.array([214, 0, 0], np.float32)
OPACITY = 0.6


def colour_scale(values: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """(H, W) map -> colours (H, W, 3) float and opacity (H, W): 0 below START x threshold."""
    level = np.clip((values - START * threshold) / max((FULL - START) * threshold, 1e-12), 0.0, 1.0)
    shown = values >= START * threshold
    colours = YELLOW + (RED - YELLOW) * level[..., None]
    opacity = np.where(shown, 0.35 + (OPACITY - 0.35) * level, 0.0)
    return colours, opacity


def overlay(
    rgb: np.ndarray, heatmap: np.ndarray, threshold: float, legend: bool = False
) -> np.ndarray:
    """(H, W, 3) uint8 photo + (H, W) heatmap at the same size -> (H', W, 3) uint8 overlay
    (H' = H, or more with a legend strip below the photo)."""
    colours, opacity = colour_scale(heatmap, threshold)
    blended = rgb.astype(np.float32) * (1 - opacity[..., None]) + colours * opacity[..., None]
    out = np.ascontiguousarray(blended.astype(np.uint8))
    line = max(1, round(max(rgb.shape[:2]) / 300))
    above = (heatmap > threshold).astype(np.uint8)
    contours, _ = cv2.findContours(above, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    cv2.drawContours(
        out, contours, -1, (0, 0, 0), 3 * line
    )  # dark under light: visible on any photo
    cv2.drawContours(out, contours, -1, (255, 255, 255), line)
    y, x = np.unravel_index(int(np.argmax(heatmap)), heatmap.shape)
    if heatmap[y, x] >= START * threshold:  # the worst spot, where there is one worth a look
        radius = max(6, round(max(rgb.shape[:2]) / 40))
        cv2.circle(out, (int(x), int(y)), radius, (0, 0, 0), 3 * line)
        cv2.circle(out, (int(x), int(y)), radius, (0, 255, 255), line)
    return np.concatenate([out, legend_strip(rgb.shape[1], threshold)]) if legend else out


def legend_strip(width: int, threshold: float) -> np.ndarray:
    """A strip to put under an overlay: the colour ramp with the values it stands for."""
    height = max(36, width // 12)
    strip = np.full((height, width, 3), 255, np.uint8)
    left, right, top = width // 20, width - width // 20, height // 8
    values = np.linspace(START * threshold, FULL * threshold, max(right - left, 2))
    colours, opacity = colour_scale(values[None, :], threshold)
    ramp = (255 * (1 - opacity[..., None]) + colours * opacity[..., None]).astype(np.uint8)
    strip[top : height // 2, left:right] = np.repeat(ramp, height // 2 - top, axis=0)[
        :, : right - left
    ]
    font, scale = cv2.FONT_HERSHEY_SIMPLEX, max(0.3, width / 1600)
    for share in (START, 1.0, FULL):
        x = left + round((share - START) / (FULL - START) * (right - left - 1))
        cv2.line(strip, (x, top), (x, height // 2 + 2), (0, 0, 0), 1)
        label = "threshold" if share == 1.0 else f"{share:g}x"
        size = cv2.getTextSize(label, font, scale, 1)[0]
        cv2.putText(
            strip,
            label,
            (min(max(x - size[0] // 2, 0), width - size[0]), height - height // 8),
            font,
            scale,
            (0, 0, 0),
            1,
            cv2.LINE_AA,
        )
    return strip


def encode_png(rgb: np.ndarray) -> bytes:
    ok, data = cv2.imencode(".png", np.ascontiguousarray(rgb[..., ::-1]))
    if not ok:
        raise RuntimeError("PNG encoding failed")
    return data.tobytes()


def encode_jpeg(rgb: np.ndarray, quality: int = 80) -> bytes:
    ok, data = cv2.imencode(
        ".jpg", np.ascontiguousarray(rgb[..., ::-1]), [cv2.IMWRITE_JPEG_QUALITY, quality]
    )
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    return data.tobytes()


def heatmap_png(
    rgb: np.ndarray, anomaly_map: np.ndarray, threshold: float, legend: bool = False
) -> bytes:
    """The overlay PNG at the photo's own size from a heatmap at the model's input size."""
    from patchshift.core.common.images import map_to_original

    heatmap = map_to_original(anomaly_map, (rgb.shape[1], rgb.shape[0]))
    return encode_png(overlay(rgb, heatmap, threshold, legend))
