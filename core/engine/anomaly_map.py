"""Patch distances -> pixel heatmap: bilinear upsampling and a Gaussian blur (sigma 4).

Both steps are linear and separable, so together they are one small matrix per axis:
heatmap = A_h @ patch_scores @ A_w^T, with A = Blur @ Upsample. That is exactly
F.interpolate(bilinear, align_corners=False) followed by a reflect-padded Gaussian blur, at a
fraction of the cost of running them on full-resolution maps.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F


def gaussian_kernel1d(sigma: float, device: torch.device | str = "cpu") -> torch.Tensor:
    """Normalised 1-D Gaussian truncated at 4 sigma (as scipy.ndimage.gaussian_filter)."""
    radius = max(1, int(4.0 * sigma + 0.5))
    x = torch.arange(-radius, radius + 1, dtype=torch.float32, device=device)
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    return kernel / kernel.sum()


def _blur_rows(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Blur (N, L) signals along L with reflected borders (the kernel shrinks for tiny L)."""
    kernel = gaussian_kernel1d(sigma, x.device).to(x.dtype)
    radius = kernel.numel() // 2
    if radius > x.shape[-1] - 1:
        cut = x.shape[-1] - 1
        kernel = kernel[radius - cut : radius + cut + 1]
        kernel, radius = kernel / kernel.sum(), cut
    if radius == 0:
        return x
    padded = F.pad(x.unsqueeze(1), (radius, radius), mode="reflect")
    return F.conv1d(padded, kernel.view(1, 1, -1)).squeeze(1)


@functools.lru_cache(maxsize=32)
def axis_operator(n_in: int, n_out: int, sigma: float, device: str = "cpu") -> torch.Tensor:
    """(n_out, n_in) matrix: linear upsampling (align_corners=False), then the Gaussian blur."""
    eye = torch.eye(n_in, device=device)
    upsampled = F.interpolate(eye.unsqueeze(0), size=n_out, mode="linear", align_corners=False)[
        0
    ]  # (n_in, n_out)
    if sigma > 0:
        upsampled = _blur_rows(upsampled, sigma)
    return upsampled.T.contiguous()


def anomaly_maps(
    patch_scores: torch.Tensor, output_hw: tuple[int, int], sigma: float
) -> torch.Tensor:
    """(B, h, w) patch distances -> (B, H, W) pixel heatmap at the model input resolution."""
    _, h, w = patch_scores.shape
    device = str(patch_scores.device)
    rows = axis_operator(h, output_hw[0], float(sigma), device).to(patch_scores.dtype)
    cols = axis_operator(w, output_hw[1], float(sigma), device).to(patch_scores.dtype)
    return torch.matmul(torch.matmul(rows, patch_scores), cols.T)


def gaussian_blur(maps: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable blur of (B, H, W) maps with reflected borders."""
    if sigma <= 0:
        return maps
    b, h, w = maps.shape
    across = _blur_rows(maps.reshape(b * h, w), sigma).reshape(b, h, w)
    down = _blur_rows(across.transpose(1, 2).reshape(b * w, h), sigma).reshape(b, w, h)
    return down.transpose(1, 2).contiguous()
