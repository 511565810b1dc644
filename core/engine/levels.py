"""Input levels: undo a change of a camera's gain or a light's strength before the backbone.

A lighting or exposure change moves each image's brightness and stretches or squeezes its
contrast. Both are seen in the pixels of a batch before any feature is computed: the images'
mean level and the spread of their coarse structure (the standard deviation of each image
averaged over cells of 1/8 of its short side, which sensor noise and defocus barely move).
A version adapted to a new condition maps each image back towards the source's levels:

    x' = gain * (x - mean(x)) + mean(x) + offset           (per channel)

gain = source spread / target spread and offset = source level - target level, from the medians
over the images (a defective image moves neither). Contrast (about each image's own mean) and
brightness (an added level) are undone exactly where no pixel clipped. A change within the source
images' own image-to-image variation (one robust standard deviation of their levels, or of the
logarithm of their spreads) is not corrected: it is ordinary variation, or the defective images of
the batch, not a new condition.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

GRID_CELLS = 8  # cells along the short side over which the spread is measured
# An 8-bit image squeezed to 1/20 of its contrast keeps about 13 grey levels; stretched back 20x
# they show as bands 0.08 apart, which the backbone reads as edges everywhere (bsd, contrast 5:
# image AUROC 0.545 at 20x, 0.849 at 8x, docs/design-history.md "Input levels"). 8x keeps the
# bands within 8/255.
MAX_GAIN = 8.0
ORDINARY_VARIATION = 1.0  # robust standard deviations of the source images' levels not corrected
ROBUST_SD = 1.4826  # median absolute deviation -> standard deviation of a normal law


@dataclass(frozen=True)
class Levels:
    """The median image of a condition (each channel's mean level and coarse spread) and how much
    its images vary about it (robust standard deviations of the level and of the log spread)."""

    level: tuple[float, float, float]
    spread: tuple[float, float, float]
    level_sd: tuple[float, float, float] = (0.0, 0.0, 0.0)
    log_spread_sd: tuple[float, float, float] = (0.0, 0.0, 0.0)

    def to_dict(self) -> dict:
        return {k: list(v) for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict) -> Levels:
        fields = {}
        for f in dataclasses.fields(cls):
            values = tuple(float(v) for v in data[f.name])
            if len(values) != 3 or not all(math.isfinite(v) for v in values):
                raise ValueError(f"levels field {f.name} must hold 3 finite numbers, got {values}")
            fields[f.name] = values
        return cls(**fields)


@dataclass(frozen=True)
class LevelCorrection:
    """Per-channel gain about each image's own mean, then an added offset."""

    gain: tuple[float, float, float]
    offset: tuple[float, float, float]

    @property
    def is_identity(self) -> bool:
        return all(g == 1.0 for g in self.gain) and all(o == 0.0 for o in self.offset)

    def to_dict(self) -> dict:
        return {"gain": list(self.gain), "offset": list(self.offset)}

    @classmethod
    def from_dict(cls, data: dict) -> LevelCorrection:
        gain = tuple(float(v) for v in data["gain"])
        offset = tuple(float(v) for v in data["offset"])
        if len(gain) != 3 or len(offset) != 3 or not all(math.isfinite(v) for v in gain + offset):
            raise ValueError(f"a level correction holds 3 finite gains and offsets, got {data}")
        if not all(1 / MAX_GAIN <= g <= MAX_GAIN for g in gain):
            raise ValueError(f"level gains must lie within 1/{MAX_GAIN:g} and {MAX_GAIN:g}")
        return cls(gain, offset)  # type: ignore[arg-type]

    def describe(self) -> str:
        """In words, for the job result."""
        if self.is_identity:
            return "levels kept: brightness and contrast within the source images' own variation"
        gains = sorted(set(round(g, 2) for g in self.gain))
        offsets = sorted(set(round(o, 3) for o in self.offset))
        return (
            f"levels matched to the source's: contrast x{'/'.join(f'{g:g}' for g in gains)}, "
            f"brightness {'/'.join(f'{o:+g}' for o in offsets)}"
        )


def image_levels(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, 3, H, W) in [0, 1] -> each image's channel means (B, 3) and coarse spreads (B, 3)."""
    images = images.float()
    cell = max(1, min(images.shape[-2:]) // GRID_CELLS)
    coarse = F.avg_pool2d(images, cell) if cell > 1 else images
    return images.mean(dim=(2, 3)), coarse.flatten(2).std(dim=2, unbiased=False)


def _triple(values: torch.Tensor) -> tuple[float, float, float]:
    return tuple(float(v) for v in values)  # type: ignore[return-value]


def _robust_sd(values: torch.Tensor) -> torch.Tensor:
    return ROBUST_SD * (values - values.median(dim=0).values).abs().median(dim=0).values


def median_levels(means: torch.Tensor, spreads: torch.Tensor) -> Levels:
    """Per-image (N, 3) means and spreads (image_levels) -> the condition's levels."""
    return Levels(
        _triple(means.median(dim=0).values),
        _triple(spreads.median(dim=0).values),
        _triple(_robust_sd(means)),
        _triple(_robust_sd(spreads.clamp_min(1e-6).log())),
    )


def level_correction(source: Levels, target: Levels) -> LevelCorrection:
    """The correction that maps the target condition's median image onto the source's, each
    channel's gain (at most MAX_GAIN either way) and offset only where it lies beyond the source
    images' ordinary variation."""
    gains, offsets = [], []
    for s, t, sd in zip(source.spread, target.spread, source.log_spread_sd, strict=True):
        gain = min(max(s / t, 1 / MAX_GAIN), MAX_GAIN) if s > 0 and t > 0 else 1.0
        gains.append(1.0 if abs(math.log(gain)) <= ORDINARY_VARIATION * sd else gain)
    for s, t, sd in zip(source.level, target.level, source.level_sd, strict=True):
        offsets.append(s - t if abs(s - t) > ORDINARY_VARIATION * sd else 0.0)
    return LevelCorrection(tuple(gains), tuple(offsets))  # type: ignore[arg-type]


def correct_levels(images: torch.Tensor, correction: LevelCorrection) -> torch.Tensor:
    """(B, 3, H, W) -> the same images at the source's levels (not clipped: the backbone's
    normalisation takes any value)."""
    gain = torch.tensor(correction.gain, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
    offset = torch.tensor(correction.offset, dtype=images.dtype, device=images.device).view(
        1, 3, 1, 1
    )
    means = images.mean(dim=(2, 3), keepdim=True)
    return gain * (images - means) + means + offset


def pooled_levels(parts: list[tuple[torch.Tensor, torch.Tensor]]) -> Levels:
    """image_levels of several batches -> their condition's levels."""
    return median_levels(torch.cat([m for m, _ in parts]), torch.cat([s for _, s in parts]))


def levels_of(images: torch.Tensor, batch_size: int = 32) -> Levels:
    """(N, 3, H, W) images in [0, 1] -> their condition's levels, a chunk at a time."""
    return pooled_levels(
        [image_levels(images[i : i + batch_size]) for i in range(0, len(images), batch_size)]
    )
