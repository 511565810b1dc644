"""Simulated camera and lighting shifts: four ImageNet-C corruptions, severities 1-5.

Parameters follow Hendrycks & Dietterich (2019). They act on (B, 3, H, W) tensors in [0, 1] at
the model input resolution (so a severity means what it means for ImageNet-C's 224 px images)
and are deterministic given the seed.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from patchshift.core.common.errors import ConfigError

GAUSSIAN_NOISE = (0.08, 0.12, 0.18, 0.26, 0.38)
DEFOCUS_BLUR = (
    (3, 0.1),
    (4, 0.5),
    (6, 0.5),
    (8, 0.5),
    (10, 0.5),
)  # (disk radius, alias blur sigma)
BRIGHTNESS = (0.1, 0.2, 0.3, 0.4, 0.5)  # added to HSV value
CONTRAST = (0.4, 0.3, 0.2, 0.1, 0.05)  # factor on the deviation from the channel mean

CORRUPTIONS = ("gaussian_noise", "defocus_blur", "brightness", "contrast")


def gaussian_noise(images: torch.Tensor, severity: int, generator: torch.Generator) -> torch.Tensor:
    sigma = GAUSSIAN_NOISE[severity - 1]
    noise = torch.randn(images.shape, generator=generator, dtype=images.dtype).to(images.device)
    return (images + sigma * noise).clamp_(0, 1)


def disk_kernel(radius: int, alias_sigma: float) -> torch.Tensor:
    """ImageNet-C's aliased disk, softened by a small Gaussian and normalised to sum 1."""
    extent = max(8, radius)
    ax = torch.arange(-extent, extent + 1, dtype=torch.float32)
    yy, xx = torch.meshgrid(ax, ax, indexing="ij")
    disk = ((xx**2 + yy**2) <= radius**2).float()
    disk = disk / disk.sum()
    size = 3 if radius <= 8 else 5
    g = torch.exp(
        -0.5 * (torch.arange(size, dtype=torch.float32) - size // 2) ** 2 / alias_sigma**2
    )
    g = g / g.sum()
    soft = F.conv2d(disk[None, None], (g[:, None] * g[None, :])[None, None], padding=size // 2)[
        0, 0
    ]
    return soft / soft.sum()


def defocus_blur(images: torch.Tensor, severity: int) -> torch.Tensor:
    radius, alias = DEFOCUS_BLUR[severity - 1]
    kernel = disk_kernel(radius, alias).to(images.device, images.dtype)
    pad = kernel.shape[-1] // 2
    channels = images.shape[1]
    padded = F.pad(images, (pad, pad, pad, pad), mode="reflect")
    weight = kernel.expand(channels, 1, *kernel.shape)
    return F.conv2d(padded, weight, groups=channels).clamp_(0, 1)


def brightness(images: torch.Tensor, severity: int) -> torch.Tensor:
    """Add c to the HSV value channel: hue and saturation stay, so RGB scales by V'/V."""
    c = BRIGHTNESS[severity - 1]
    value = images.amax(dim=1, keepdim=True)
    new_value = (value + c).clamp(max=1.0)
    scaled = images * (new_value / value.clamp_min(1e-12))
    return torch.where(value > 0, scaled, new_value.expand_as(images)).clamp_(0, 1)


def contrast(images: torch.Tensor, severity: int) -> torch.Tensor:
    c = CONTRAST[severity - 1]
    means = images.mean(dim=(2, 3), keepdim=True)
    return ((images - means) * c + means).clamp_(0, 1)


def corrupt(images: torch.Tensor, name: str, severity: int, seed: int = 0) -> torch.Tensor:
    """Apply corruption `name` at `severity` (1-5) to a (B, 3, H, W) batch in [0, 1]."""
    if name not in CORRUPTIONS:
        raise ConfigError(f"unknown corruption {name!r}; choose from {', '.join(CORRUPTIONS)}")
    if not 1 <= int(severity) <= 5:
        raise ConfigError(f"corruption severity must be 1 to 5, got {severity}")
    severity = int(severity)
    if name == "gaussian_noise":
        return gaussian_noise(images, severity, torch.Generator().manual_seed(seed))
    if name == "defocus_blur":
        return defocus_blur(images, severity)
    if name == "brightness":
        return brightness(images, severity)
    return contrast(images, severity)
