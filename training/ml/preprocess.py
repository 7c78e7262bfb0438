"""The one image pipeline: any uploaded picture -> a centred 28x28 MNIST-style digit."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import torch
from PIL import Image, ImageOps

from .data import normalize

SIDE = 28
# MNIST fits each digit in a 20x20 box, then puts its centre of mass at pixel (14, 14).
BOX = 20
CENTRE = 14.0
# Bigger inputs are box-reduced first; a 28x28 result needs nowhere near this detail.
MAX_WORKING_SIDE = 512
# The background is estimated on a grid of about this many blocks per side, from a small copy.
BACKGROUND_BLOCKS = 8
BACKGROUND_WORKING_SIDE = 96
# Below this ink/background contrast (on a 0..1 scale) the picture counts as blank.
MIN_CONTRAST = 0.12
# Fraction of peak ink brightness that marks a pixel as part of the digit for cropping.
MASK_LEVEL = 0.25

_RGB_LIKE = {"RGB", "RGBX", "CMYK", "YCbCr", "HSV"}
_WITH_ALPHA = {"RGBA", "RGBa", "LA", "La", "PA"}
_SIXTEEN_BIT = {"I;16", "I;16L", "I;16B", "I;16N"}


class EmptyImageError(ValueError):
    """The image holds no recognisable ink (blank canvas, uniform colour, pure noise)."""


def _first_frame(image: Image.Image) -> Image.Image:
    if getattr(image, "n_frames", 1) > 1:
        image.seek(0)
    if image.format == "JPEG":
        # Decoding a phone photo at reduced scale is many times faster and loses nothing we need.
        try:
            image.draft(image.mode, (MAX_WORKING_SIDE, MAX_WORKING_SIDE))
        except Exception:  # noqa: BLE001 - draft is only an optimisation
            pass
    return image


def _gray_alpha(image: Image.Image) -> tuple[np.ndarray, np.ndarray | None]:
    """Luminance in [0, 1] and, when the image has meaningful transparency, alpha in [0, 1]."""
    mode = image.mode
    if mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "L")
        mode = image.mode
    elif mode == "LAB":
        image, mode = image.getchannel(0), "L"
    elif mode in _RGB_LIKE:
        image, mode = image.convert("RGB"), "RGB"
    elif mode == "1":
        image, mode = image.convert("L"), "L"

    alpha = None
    if mode in _WITH_ALPHA:
        rgba = image.convert("RGBA")
        alpha_img, image = rgba.getchannel("A"), rgba.convert("L")
        alpha = _reduce(alpha_img)
        if alpha.min() >= 254:
            alpha = None
        else:
            alpha = alpha.astype(np.float32) / 255.0
    elif mode == "RGB":
        image = image.convert("L")

    if image.mode == "L":
        return _reduce(image).astype(np.float32) / 255.0, alpha
    if image.mode in _SIXTEEN_BIT:
        pixels = np.asarray(image).astype(np.float32) / 65535.0
    else:  # "I" (32-bit int) or "F": scale by the range they actually use
        pixels = np.asarray(image, dtype=np.float32)
        top = float(pixels.max()) if pixels.size else 1.0
        pixels = pixels / (65535.0 if top > 255 else 255.0 if top > 1 else 1.0)
    pixels = np.clip(pixels, 0.0, 1.0)
    return _reduce(Image.fromarray(pixels.astype(np.float32, copy=False))).astype(np.float32), alpha


def _reduce(image: Image.Image) -> np.ndarray:
    factor = -(-max(image.size) // MAX_WORKING_SIDE)
    if factor > 1:
        # Area averaging keeps thin strokes as faint lines that the contrast stretch restores.
        image = image.reduce(factor) if image.mode in ("L", "RGB", "RGBA") else image.resize(
            (max(1, image.width // factor), max(1, image.height // factor)), Image.Resampling.BOX
        )
    return np.asarray(image)


def _quantile(values: np.ndarray, q: float, axis: int = -1) -> np.ndarray:
    """``np.quantile(values, q, axis)`` (linear interpolation) through one partial sort.

    np.quantile and np.median cost tens of microseconds of bookkeeping per call, more than the work
    itself on arrays this small, and preprocessing runs for every uploaded image.
    """
    n = values.shape[axis]
    position = q * (n - 1)
    low = int(position)
    high = min(low + 1, n - 1)
    parted = np.partition(values, (low, high), axis=axis)
    below, above = np.take(parted, low, axis=axis), np.take(parted, high, axis=axis)
    weight = position - low
    # The same two-sided form as NumPy's lerp, so results agree to the last bit.
    return below + (above - below) * weight if weight < 0.5 else above - (above - below) * (1 - weight)


def _pad_edge(values: np.ndarray, before: tuple[int, int], after: tuple[int, int]) -> np.ndarray:
    """``np.pad(values, ..., mode="edge")`` for a 2-D array, by clipped indexing (np.pad's setup dominates here)."""
    h, w = values.shape
    rows = np.clip(np.arange(-before[0], h + after[0]), 0, h - 1)
    cols = np.clip(np.arange(-before[1], w + after[1]), 0, w - 1)
    return values[rows[:, None], cols]


def _median(values: np.ndarray) -> float:
    return float(_quantile(values.ravel(), 0.5))


def _background(gray: np.ndarray) -> np.ndarray:
    """Smooth estimate of the (dark) background under bright ink, same shape as ``gray``."""
    h, w = gray.shape
    small = Image.fromarray(gray.astype(np.float32, copy=False))
    scale = BACKGROUND_WORKING_SIDE / max(h, w)
    if scale < 1:
        small = small.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.Resampling.BOX)
    pixels = np.asarray(small, dtype=np.float32)
    block = max(2, -(-max(pixels.shape) // BACKGROUND_BLOCKS))
    ph, pw = -pixels.shape[0] % block, -pixels.shape[1] % block
    pixels = _pad_edge(pixels, (0, 0), (ph, pw))
    gh, gw = pixels.shape[0] // block, pixels.shape[1] // block
    blocks = pixels.reshape(gh, block, gw, block).transpose(0, 2, 1, 3).reshape(gh, gw, -1)
    # A low percentile ignores strokes inside a block; the 3x3 minimum then ignores blocks fully inked.
    coarse = _quantile(blocks, 0.25, axis=2).astype(np.float32)
    padded = _pad_edge(coarse, (1, 1), (1, 1))
    coarse = np.min([padded[dy : dy + gh, dx : dx + gw] for dy in range(3) for dx in range(3)], axis=0)
    return np.asarray(Image.fromarray(coarse).resize((w, h), Image.Resampling.BILINEAR), dtype=np.float32)


def _ink_map(image: Image.Image) -> np.ndarray:
    """Float image in [0, 1] where ink is bright and background is 0, whatever the polarity."""
    gray, alpha = _gray_alpha(image)
    if alpha is not None:
        weight = float(alpha.sum())
        if weight < 1.0:
            raise EmptyImageError("the image is fully transparent")
        # Dark strokes on transparency (canvas exports) go onto white, light strokes onto black.
        opaque_luminance = float((gray * alpha).sum()) / weight
        background = 1.0 if opaque_luminance < 0.5 else 0.0
        gray = alpha * gray + (1.0 - alpha) * background
    border = np.concatenate([gray[0], gray[-1], gray[:, 0], gray[:, -1]])
    if _median(border) > 0.5:
        gray = 1.0 - gray
    # Subtracting a smooth local background copes with vignetting and uneven lighting in photos.
    ink = gray - _background(gray)
    # A strided sample estimates the residual noise (MAD) as well as every pixel would, far faster.
    sample = ink.ravel()[:: max(1, ink.size // 8192)]
    noise = 1.4826 * _median(np.abs(sample - _median(sample)))
    ink -= max(3.0 * noise, 0.02)
    np.clip(ink, 0.0, None, out=ink)
    peak = float(ink.max()) if ink.size else 0.0
    if peak < MIN_CONTRAST:
        raise EmptyImageError("no ink found: the image is blank or has too little contrast")
    ink /= peak
    return ink


def _digit_bbox(ink: np.ndarray) -> tuple[int, int, int, int]:
    mask = ink > MASK_LEVEL
    # A pixel counts only with at least two marked 8-neighbours, which drops dust and specks.
    h, w = mask.shape
    padded = np.zeros((h + 2, w + 2), dtype=np.uint8)
    padded[1:-1, 1:-1] = mask
    support = sum(padded[dy : dy + h, dx : dx + w] for dy in range(3) for dx in range(3))
    mask &= support >= 3
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    if rows.size == 0:
        raise EmptyImageError("no ink found: only isolated specks")
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


def _fit_box(crop: np.ndarray) -> np.ndarray:
    h, w = crop.shape
    scale = BOX / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    # Lanczos antialiases when shrinking (like MNIST's own downsampling); bilinear avoids ringing when enlarging.
    method = Image.Resampling.LANCZOS if scale < 1 else Image.Resampling.BILINEAR
    small = np.asarray(Image.fromarray(crop.astype(np.float32, copy=False)).resize(size, method), dtype=np.float32)
    small = np.clip(small, 0.0, 1.0)
    top = float(small.max())
    return small / top if top > 0 else small


def _centre_by_mass(small: np.ndarray) -> np.ndarray:
    h, w = small.shape
    total = float(small.sum())
    cy = float((small.sum(1) * np.arange(h)).sum()) / total
    cx = float((small.sum(0) * np.arange(w)).sum()) / total
    top = min(max(int(round(CENTRE - cy)), 0), SIDE - h)
    left = min(max(int(round(CENTRE - cx)), 0), SIDE - w)
    out = np.zeros((SIDE, SIDE), dtype=np.float32)
    out[top : top + h, left : left + w] = small
    return out


def preprocess(image: Image.Image) -> np.ndarray:
    """Turn any PIL image into a 28x28 float32 array in [0, 1], white digit on black, MNIST-centred.

    Handles EXIF orientation, animated images (first frame), every common mode
    (1, L, P, RGB, RGBA, LA, CMYK, I;16, I, F, ...), transparency and either
    polarity. Raises :class:`EmptyImageError` when there is no ink.
    """
    image = _first_frame(image)
    try:
        image = ImageOps.exif_transpose(image)
    except Exception:  # noqa: BLE001 - broken EXIF must not make a valid picture unreadable
        pass
    ink = _ink_map(image)
    top, bottom, left, right = _digit_bbox(ink)
    return _centre_by_mass(_fit_box(np.ascontiguousarray(ink[top:bottom, left:right])))


def preprocess_many(images: Iterable[Image.Image]) -> np.ndarray:
    """Stack :func:`preprocess` results into an N x 28 x 28 float32 array."""
    arrays = [preprocess(image) for image in images]
    return np.stack(arrays) if arrays else np.zeros((0, SIDE, SIDE), dtype=np.float32)


def to_uint8(digit: np.ndarray) -> np.ndarray:
    """The 28x28 "what the model saw" picture as uint8 (save it with ``Image.fromarray``)."""
    return np.clip(np.rint(np.asarray(digit, dtype=np.float32) * 255.0), 0, 255).astype(np.uint8)


def to_tensor(batch: np.ndarray | Sequence[np.ndarray]) -> torch.Tensor:
    """One 28x28 array or a batch of them -> normalised float32 tensor N x 1 x 28 x 28."""
    array = np.asarray(batch, dtype=np.float32)
    if array.ndim == 2:
        array = array[None]
    if array.ndim != 3 or array.shape[1:] != (SIDE, SIDE):
        raise ValueError(f"expected 28x28 arrays, got shape {array.shape}")
    return normalize(torch.from_numpy(np.ascontiguousarray(array)).unsqueeze(1))
