"""Batch-wise, on-device data augmentation: random affine, smooth elastic warp, stroke thickness."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class AugmentConfig:
    """Ranges for the random transforms; each sample draws its own values."""

    rotation_deg: float = 10.0
    scale_min: float = 0.85
    scale_max: float = 1.1
    # In affine_grid units, where 1.0 is half the image (14 px).
    shift: float = 0.12
    shear_deg: float = 8.0
    # Low-resolution random displacement field, smoothly upsampled: imitates handwriting wobble.
    elastic_strength: float = 0.04
    elastic_grid: int = 4
    thickness_prob: float = 0.5
    # Fraction of the way towards a 3x3 dilation (thicker pen) or erosion (thinner pen).
    max_thicken: float = 1.0
    max_thin: float = 0.5


def _uniform(n: int, low: float, high: float, generator: torch.Generator) -> torch.Tensor:
    return torch.rand(n, generator=generator) * (high - low) + low


def _random_thickness(x: torch.Tensor, config: AugmentConfig, generator: torch.Generator) -> torch.Tensor:
    n = x.shape[0]
    amount = _uniform(n, -config.max_thin, config.max_thicken, generator)
    amount = amount * (torch.rand(n, generator=generator) < config.thickness_prob)
    amount = amount.to(x.device, non_blocking=True).view(n, 1, 1, 1)
    thick = F.max_pool2d(x, 3, stride=1, padding=1)
    thin = -F.max_pool2d(-x, 3, stride=1, padding=1)
    return x + amount.clamp(min=0) * (thick - x) + (-amount).clamp(min=0) * (thin - x)


def _random_grid(x: torch.Tensor, config: AugmentConfig, generator: torch.Generator) -> torch.Tensor:
    n = x.shape[0]
    angle = torch.deg2rad(_uniform(n, -config.rotation_deg, config.rotation_deg, generator))
    shear = math.tan(math.radians(config.shear_deg)) * _uniform(n, -1.0, 1.0, generator)
    # affine_grid maps output to input coordinates, so zooming in by s means dividing by s.
    inv_scale = 1.0 / _uniform(n, config.scale_min, config.scale_max, generator)
    tx = _uniform(n, -config.shift, config.shift, generator)
    ty = _uniform(n, -config.shift, config.shift, generator)
    cos, sin = torch.cos(angle), torch.sin(angle)
    # rotation @ horizontal shear @ isotropic scale
    theta = torch.stack(
        [
            torch.stack([cos * inv_scale, (cos * shear - sin) * inv_scale, tx], dim=1),
            torch.stack([sin * inv_scale, (sin * shear + cos) * inv_scale, ty], dim=1),
        ],
        dim=1,
    ).to(x.device, dtype=x.dtype, non_blocking=True)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    if config.elastic_strength > 0:
        k = config.elastic_grid
        coarse = torch.randn(n, 2, k, k, generator=generator) * config.elastic_strength
        coarse = coarse.to(x.device, dtype=x.dtype, non_blocking=True)
        field = F.interpolate(coarse, size=x.shape[-2:], mode="bicubic", align_corners=True)
        grid = grid + field.permute(0, 2, 3, 1)
    return grid


def augment_batch(
    x: torch.Tensor, *, generator: torch.Generator, config: AugmentConfig | None = None
) -> torch.Tensor:
    """Randomly transform a batch of [0, 1] images (N x 1 x H x W) on its own device.

    All randomness comes from ``generator`` (a CPU generator, so results are the
    same on any device for a given seed up to floating-point differences).
    """
    config = config or AugmentConfig()
    if config.thickness_prob > 0:
        x = _random_thickness(x, config, generator)
    grid = _random_grid(x, config, generator)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False).clamp_(0.0, 1.0)
