"""Patch distances -> pixel heatmap: bilinear upsampling and a Gaussian blur (sigma 4)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def gaussian_kernel1d(sigma: float, device: torch.device | str = "cpu") -> torch.Tensor:
    """Normalised 1-D Gaussian truncated at 4 sigma (as scipy.ndimage.gaussian_filter)."""
    radius = max(1, int(4.0 * sigma + 0.5))
    x = torch.arange(-radius, radius + 1, dtype=torch.float32, device=device)
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    return kernel / kernel.sum()


def gaussian_blur(maps: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable blur of (B, H, W) maps with reflected borders."""
    if sigma <= 0:
        return maps
    kernel = gaussian_kernel1d(sigma, maps.device).to(maps.dtype)
    radius = kernel.numel() // 2
    x = maps.unsqueeze(1)
    pad_w = min(radius, x.shape[-1] - 1)
    pad_h = min(radius, x.shape[-2] - 1)
    if pad_w < radius or pad_h < radius:  # tiny maps: shrink the kernel to what reflect allows
        radius = min(pad_w, pad_h)
        kernel = kernel[kernel.numel() // 2 - radius : kernel.numel() // 2 + radius + 1]
        kernel = kernel / kernel.sum()
    x = F.pad(x, (radius, radius, 0, 0), mode="reflect")
    x = F.conv2d(x, kernel.view(1, 1, 1, -1))
    x = F.pad(x, (0, 0, radius, radius), mode="reflect")
    x = F.conv2d(x, kernel.view(1, 1, -1, 1))
    return x.squeeze(1)


def anomaly_maps(patch_scores: torch.Tensor, output_hw: tuple[int, int], sigma: float) -> torch.Tensor:
    """(B, h, w) patch distances -> (B, H, W) pixel heatmap at the model input resolution."""
    upsampled = F.interpolate(patch_scores.unsqueeze(1), size=output_hw, mode="bilinear", align_corners=False)
    return gaussian_blur(upsampled.squeeze(1), sigma)


__all__ = ["anomaly_maps", "gaussian_blur", "gaussian_kernel1d"]
