"""The one image pipeline: any uploaded picture -> a centred 28x28 MNIST-style digit."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import ExifTags, Image, ImageFile, ImageOps, PngImagePlugin
from scipy import ndimage

from .data import normalize

SIDE = 28
# MNIST fits each digit in a 20x20 box, then puts its centre of mass at pixel (14, 14).
BOX = 20
CENTRE = 14.0
# Bigger inputs are box-reduced first; a 28x28 result needs nowhere near this detail.
MAX_WORKING_SIDE = 512
# A picture whose longer side is shorter than MIN_WORKING_SIDE (an icon, a digit cut from a screenshot's small print)
# is enlarged first, by a whole factor, to at least ENLARGED_SIDE. At a few pixels a digit's strokes are a pixel wide
# or less, and the steps that need a few pixels around a stroke (the mask's neighbours, the opening's floor of three)
# took a tight crop's strokes for shadow: 8-pixel tight crops of MNIST test digits were refused a fifth of the time.
# Every piece of such a picture's ink is the digit's, and it is never marked as holding several digits: in a few
# pixels a stroke broken off by the shrinking looks like a second digit (3% of them were marked, the stroke left out).
MIN_WORKING_SIDE = 10
ENLARGED_SIDE = 32
# The background is what remains of the picture after a grey opening this wide (a share of its longer side):
# wider than any stroke of a digit that fills the picture (MNIST's widest come to about a quarter).
OPENING_SHARE = 0.35
# The darkest paper whose brightness still divides its ink's contrast (darker, and only noise would be left).
MIN_PAPER = np.float32(0.15)
# The background's shade is read along the picture's border, in a band this share of its shorter side wide (at least
# a pixel): a printed line that runs right along the edge (squared paper cut on a line) is a minority there.
BORDER_BAND = 0.02
# Below this ink/background contrast (on a 0..1 scale) the picture counts as blank.
MIN_CONTRAST = 0.12
# The share of the strongest ink beyond which three times the noise measured over the whole picture is doubted
# (``_ink_maps``): a tight crop's strokes, not the paper's noise.
NOISE_MAX_SHARE = 0.5
# The share of pixels at either extreme that stands for the ink when telling dark ink from light: a thin
# stroke across a large picture still covers more than this.
INK_QUANTILE = 0.001
# Sorting out the pieces of ink (``_digit_only``): a piece at least this long, relative to the picture's longer
# side, may be the digit (shorter ones are specks); a piece touching an edge along at least this share of it is a
# band of background; a piece inking less than this share of its box is a frame when it boxes a digit-sized piece
# in; a piece within this share of the digit's longer side belongs to it.
DIGIT_MIN_EXTENT = 0.15
EDGE_BAND = 0.5
FRAME_MAX_FILL = 0.3
NEAR_DIGIT = 0.2
# A frame drawn round the whole picture, each side within this share of the picture's edge, goes even with no digit
# inside it (a sheet with only a frame on it holds no digit).
FRAME_BORDER = 0.1
# A piece smaller than a digit is a speck of dust, and never the digit, when it is a solid blob: its thickness (twice
# its deepest pixel's distance from its outline) at least SPECK_MIN_THICKNESS of its longer side, and its pixels at
# least SPECK_MIN_FILL of its box. A digit's strokes are a fraction of its size; an MNIST digit shrunk to 5 pixels of
# a 400-pixel photo is as thick, but leaves 40% of its box or more empty.
SPECK_MIN_THICKNESS = 0.75
SPECK_MIN_FILL = 0.7
# Two more solid marks smaller than a digit are never the digit either. A dash: lying flat, at least DASH_MIN_RATIO as
# wide as tall, its pixels at least SPECK_MIN_FILL of its box (a 1 is the same bar stood on end, and stays). A blot:
# about round (its sides within BLOT_MAX_RATIO of each other), with no notch or hole (one run of ink along every row
# and column), and inked evenly, its mean ink at least BLOT_MIN_INK of the picture's darkest: a disc a few pixels
# wide, which the speck's measures miss where its outline's steps take its corners off. A digit shrunk to 5 to 8
# pixels is as round and as solid at times, but its strokes are finer than a pixel, so its ink is uneven: of 2,400
# MNIST test digits that small (on a photographed sheet and on white), the most evenly inked such blob came to 0.75,
# and discs of 3 to 12 pixels, sharp or smoothed, to 0.96 or more. No such digit lies flat and solid like a dash.
DASH_MIN_RATIO = 2.0
BLOT_MAX_RATIO = 1.25
BLOT_MIN_INK = 0.85
# A piece cut by the picture's edge is the edge's own when less than this share of its ink is left once the
# background goes on past the edges (a stroke of a tight crop along the edge goes, and the rest of the digit stays).
FADED_SHARE = 0.5
# The share is measured on every few pixels, as if the picture's longer side were at most this long.
FADED_SIDE = 128
# A sparse ring with no corners (drawn round the digit) goes when its inside holds a separate digit-sized piece
# inked at least RING_MIN_HELD_INK as heavily for its size (its ink over its longer side) as the ring: MNIST test
# digits ringed with a pen up to half their stroke's width then read as they do alone 94-100% of the time, and with
# a pen as wide as their stroke 78-94% (most of the rest are 1s, one stroke like a slash), while a 0's slash drawn
# apart from it with the ring's own pen comes to at most 0.42, and the 0 stays.
RING_MIN_HELD_INK = 0.5
# A digit-sized piece left out further off than NEAR_DIGIT is another digit (the picture holds several) when it is
# at least SEVERAL_MIN_HEIGHT as tall as the digit kept and holds at least SEVERAL_MIN_INK of its ink: digits written
# side by side or one above the other are about as tall as each other, while what a broken digit leaves apart (a 5's
# bar) is flat, and a speck is small. Of pairs of MNIST test digits that far apart 92-100% are taken for several (on
# black, a 1 cut to its ink is taken for a printed line and missed); of the 10,000 single test digits, the shipped
# samples and every scene of bench_preprocess, nothing left out comes to more than 0.36 of the digit's height.
SEVERAL_MIN_HEIGHT = 0.5
SEVERAL_MIN_INK = 0.2
# Two digits written closer than NEAR_DIGIT, or touching, are kept together as one (``_several_touching``). The
# picture holds several when a cut down the digit kept leaves two parts each inking SIDE_BY_SIDE_MIN_HEIGHT of its
# rows and holding SPLIT_MIN_INK of its ink, and crosses no ink or, once the digit is SIDE_BY_SIDE_MIN_RATIO as wide as
# tall, at most SPLIT_MAX_STROKES of its stroke's width (a hairline where two digits touch); or when a cut across it
# crossing no ink leaves two parts each STACKED_MIN_HEIGHT of its height, inking STACKED_MIN_WIDTH of its columns (one
# above the other). Of 2,000 pairs of MNIST test digits from a pixel to a fifth of their height apart, 96-100% are then
# taken for several, side by side or one above the other, on paper or at MNIST's size (before, 0-7% closer than three
# pixels); touching side by side, 57% (along a stroke, like a 0's side against the next digit, the two cannot be told
# from one digit's strokes); one above the other, 4% (two 0s touching are an 8). None of the 10,000 single test
# digits, the shipped samples and 500 digits in every scene of bench_preprocess is, nor would be with parts inking 0.4
# of the rows, holding 0.1 of the ink, or a cut crossing 0.8 of a stroke (at 0.9, a 4 whose crossbar thins to its
# stem is), nor with stacked parts 0.42 of the height (at 0.40, a 1 broken in two and a fine liner's 5 with its bar
# apart are).
SPLIT_MIN_INK = 0.2
SIDE_BY_SIDE_MIN_HEIGHT = 0.7
SIDE_BY_SIDE_MIN_RATIO = 1.2
SPLIT_MAX_STROKES = 0.5
STACKED_MIN_HEIGHT = 0.44
STACKED_MIN_WIDTH = 0.2
# The widest grey opening (``_background``) done with NumPy instead of SciPy: pictures up to about 90 pixels.
FAST_OPENING_MAX_SIZE = 32
_EIGHT_NEIGHBOURS = np.ones((3, 3), dtype=bool)
# The same, for a stack of masks: pieces never join across images.
_IN_PLANE = np.zeros((3, 3, 3), dtype=bool)
_IN_PLANE[1] = True
# Row and column numbers of the model's input, for its centre of mass: made once, and as the floats they are multiplied
# in (np.arange's integers, made for each digit, were converted each time too; the products are the same).
_POSITIONS = np.arange(SIDE, dtype=np.float64)
# How far from a half the offset of a centre of mass found in float64 must lie to round as the float32 one does
# (``_model_inputs``): twice the largest error of the float32 sums.
CENTRE_MARGIN = 1e-3
# Fraction of peak ink brightness that marks a pixel as part of the digit for cropping.
MASK_LEVEL = 0.25
# Ruled or squared paper: thin lines inked (above RULING_INK) along at least RULING_COVER of their length are
# printed lines, once there are at least RULING_MIN_LINES separate ones in one direction; a digit's bars, even in a
# tight crop, are at most three. Lines are looked for within 3° of the picture's edges, in steps that drift less
# than a pixel over 230.
RULING_INK = 0.1
RULING_COVER = 0.8
RULING_MIN_LINES = 4
RULING_SLOPES = np.tan(np.radians(np.arange(-3.0, 3.01, 0.25)))
# A printed line is thin (at most this many rows of the working copy) and inked at least this share of its length
# more than the rows 2-4 beside it, which a digit's thick, soft stroke never is.
RULING_MAX_WIDTH = 4
RULING_RIDGE = 0.3
# A lone printed line, too few to count as ruling (a notebook's margin, a single rule): a piece at most
# LONE_LINE_MAX_WIDTH across and at least LONE_LINE_MIN_LENGTH of the picture long in the other direction, and at least
# LONE_LINE_MIN_SLENDERNESS times as long as it is wide. The last tells nothing apart in a photo (a line 60% of 150
# pixels or more is that slender already) but spares a small picture's digit: the stem of an MNIST 1 or the bar of a 5,
# 20 pixels long and 3-5 wide, is no printed line.
LONE_LINE_MAX_WIDTH = RULING_MAX_WIDTH + 2
LONE_LINE_MIN_LENGTH = 0.6
LONE_LINE_MIN_SLENDERNESS = 15

# A sheet of paper photographed on a darker desk that shows on every side (``_desk_flattened``): a bright region
# clearly (SHEET_MIN_STEP) brighter than the picture's border, covering at least SHEET_MIN_SHARE of the picture,
# not touching its edges, at least SHEET_MIN_SIDE pixels across (a small white-on-black drawing never counts),
# filling at least SHEET_MIN_BOX_FILL of its box (a sheet's four straight sides, turned up to about 5°, not the round
# outline of a light digit's filled loop, which fills 79% at most), and bright over at least SHEET_MIN_SOLID of
# it once the ink's holes are filled (a light digit's filled loop is mostly hole). SHEET_EDGE pixels of its rim,
# half desk and half paper in a blurred photo, go with the desk.
SHEET_MIN_STEP = 0.25
SHEET_MIN_SHARE = 0.3
SHEET_MIN_SIDE = 48
SHEET_MIN_SOLID = 0.75
SHEET_MIN_BOX_FILL = 0.85
SHEET_EDGE = 2
# A sheet reaching two opposite edges of the picture, the desk showing along the other two: its share of the
# picture across, how far its sides may stray from straight lines (of that width), and the least ink on it (of its
# area). A light stroke spanning a tight crop (a solid 1, a curve) fails one of them.
SHEET_MIN_STRIP = 0.3
SHEET_STRIP_STRAIGHT = 0.02
SHEET_STRIP_MIN_INK = 0.002

_RGB_LIKE = {"RGB", "RGBX", "CMYK", "YCbCr", "HSV"}
_WITH_ALPHA = {"RGBA", "RGBa", "LA", "La", "PA"}
_SIXTEEN_BIT = {"I;16", "I;16L", "I;16B", "I;16N"}
# The modes read into arrays without Image.__array_interface__, whose bookkeeping costs more than the copy itself on
# a digit-sized picture: the pixels come straight from tobytes, in the array type the interface would give.
_ARRAY_TYPES = {"L": np.uint8, "F": np.float32}
# Where Image.getexif looks for an orientation in a picture that is not a TIFF (TIFF's own tags aside).
_ORIENTATION_INFO = ("exif", "Raw profile type exif", "XML:com.adobe.xmp", "xmp")


# Exception types that abort a whole batch (see prepare_batch).
Interrupts = tuple[type[BaseException], ...]


class EmptyImageError(ValueError):
    """The image holds no digit (blank canvas, uniform colour, pure noise, specks); the message says which."""


@dataclass(frozen=True, slots=True)
class Prepared:
    """One picture's model input, and what preprocessing noticed on the way to it."""

    pixels: np.ndarray
    # Another piece the size of a digit was left out, or the digit kept parts into two (two digits written close):
    # the picture seems to hold more than one digit.
    several_digits: bool = False


def _first_frame(image: Image.Image, interrupts: Interrupts) -> Image.Image:
    if getattr(image, "n_frames", 1) > 1:
        image.seek(0)
    if image.format == "JPEG":
        # Decoding a phone photo at reduced scale is many times faster and loses nothing we need.
        try:
            image.draft(image.mode, (MAX_WORKING_SIDE, MAX_WORKING_SIDE))
        except interrupts:
            raise
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
    return _pixels(image)


def _pixels(image: Image.Image) -> np.ndarray:
    """``np.asarray(image)``, the same values and type, at a fraction of the cost for an L or F picture."""
    dtype = _ARRAY_TYPES.get(image.mode)
    if dtype is None:
        return np.asarray(image)
    return np.frombuffer(_raw_bytes(image, np.dtype(dtype).itemsize), dtype=dtype).reshape(image.height, image.width)


def _raw_bytes(image: Image.Image, itemsize: int) -> bytes:
    """``image.tobytes()``; for a picture that fits one of its blocks, from its encoder alone.

    Image.tobytes looks the encoder up and gathers the blocks it writes in a
    list: three times the cost of the encoding itself on a digit-sized picture.
    """
    size = image.width * image.height * itemsize
    if not 0 < size <= ImageFile.MAXBLOCK:
        return image.tobytes()
    image.load()
    encoder = Image.core.raw_encoder(image.mode, image.mode)
    encoder.setimage(image.im)
    _, status, data = encoder.encode(ImageFile.MAXBLOCK)
    # A positive status: the whole picture is written.
    return data if status > 0 else image.tobytes()


def _quantile(values: np.ndarray, q: float, axis: int = -1) -> np.ndarray:
    """``np.quantile(values, q, axis)`` (linear interpolation) through one sort.

    np.quantile and np.median cost tens of microseconds of bookkeeping per call, more than the work
    itself on arrays this small, and preprocessing runs for every uploaded image.
    """
    return _quantiles(values, (q,), axis)[0]


def _quantiles(values: np.ndarray, qs: Sequence[float], axis: int = -1) -> list[np.ndarray]:
    """:func:`_quantile` for each of ``qs``, from one sort."""
    n = values.shape[axis]
    # A whole sort, not np.partition at the two positions each quantile needs: NumPy sorts floats with SIMD
    # instructions, and on an AVX-512 server that was 3 to 7 times faster at every size met here, photos' included,
    # on noise and on mostly black digits alike. Both find the same values.
    ordered = np.sort(values, axis=axis)
    results = []
    for q in qs:
        position = q * (n - 1)
        low = int(position)
        high = min(low + 1, n - 1)
        below, above = np.take(ordered, low, axis=axis), np.take(ordered, high, axis=axis)
        weight = position - low
        # The same two-sided form as NumPy's lerp, so results agree to the last bit.
        results.append(below + (above - below) * weight if weight < 0.5 else above - (above - below) * (1 - weight))
    return results


def _background(grays: np.ndarray, *, beyond_border: bool = False) -> np.ndarray:
    """The background under bright ink for N same-sized images: a grey opening wider than any stroke.

    It removes everything bright narrower than OPENING_SHARE of the picture (the
    strokes) and keeps what is wider: paper lit unevenly, a hard shadow's edge,
    which a smooth estimate would blur into a band of false ink.

    ``beyond_border``: as if the picture went on past its edges as it does at
    them. What the edge cuts off (a desk along it, a shadow's corner, light
    falling off towards it) is then as wide as the opening and becomes
    background; so would a stroke running along the edge of a tight crop.
    """
    size = max(3, round(OPENING_SHARE * max(grays.shape[1:])))
    if not beyond_border:
        return _grey_opening(grays, size)
    # Half the opening's width is enough: beyond it the opening reflects the padding, which goes on just the same.
    pad = size // 2 + 1
    padded = np.pad(grays, ((0, 0), (pad, pad), (pad, pad)), mode="edge")
    return _grey_opening(padded, size)[:, pad:-pad, pad:-pad]


def _grey_opening(grays: np.ndarray, size: int) -> np.ndarray:
    """``ndimage.grey_opening(grays, size=(1, size, size))`` for N pictures: the same values, where none is NaN.

    SciPy's filter walks the pictures a line at a time, and on a batch of
    digit-sized pictures the lines' own cost is most of it: a few NumPy steps
    over the whole batch (``_running_extreme``) take about half the time. Their
    cost and memory grow with the window, SciPy's do not: larger windows, and
    pictures too narrow to mirror once at their edges, stay with SciPy. A NaN
    would spread differently, but makes its picture blank anyway (its ink's
    peak is NaN).
    """
    if size > FAST_OPENING_MAX_SIZE or size // 2 > min(grays.shape[1:]):
        return ndimage.grey_opening(grays, size=(1, size, size))
    # SciPy's windows: the erosion's starts size // 2 pixels before its pixel, and the dilation's, mirrored,
    # (size - 1) // 2 pixels before (the two differ for an even size).
    eroded = grays
    for axis in (1, 2):
        eroded = _running_extreme(np.minimum, eroded, size=size, axis=axis, before=size // 2)
    opened = eroded
    for axis in (1, 2):
        opened = _running_extreme(np.maximum, opened, size=size, axis=axis, before=(size - 1) // 2)
    # The next steps take it with whole pictures, which NumPy runs several times faster on one block of memory.
    return np.ascontiguousarray(opened)


def _running_extreme(extreme: np.ufunc, values: np.ndarray, *, size: int, axis: int, before: int) -> np.ndarray:
    """``extreme`` (np.minimum or np.maximum) of each window of ``size`` pixels along ``axis`` of N pictures.

    Each window starts ``before`` pixels before its own pixel; past the edges
    the pictures go on mirrored (SciPy's "reflect": d c b a | a b c d), which
    takes ``before`` and ``size - 1 - before`` to be at most the pictures' side.
    The result is a view of N pictures spaced as in the mirrored copy.
    """

    def part(start: int, stop: int) -> np.ndarray:
        index = [slice(None)] * values.ndim
        index[axis] = slice(start, stop)
        return values[tuple(index)]

    n = values.shape[axis]
    after = size - 1 - before
    mirrored = np.concatenate([np.flip(part(0, before), axis), values, np.flip(part(n - after, n), axis)], axis=axis)
    # Every step runs on the whole batch as one line of pixels, a neighbour along ``axis`` being ``step`` further on:
    # NumPy takes a single line several times faster than the same pixels as slices of N pictures. A window that
    # would run past its picture's mirrored edge mixes in the next picture, and only windows within it are kept.
    step = mirrored.strides[axis] // mirrored.itemsize
    line = mirrored.reshape(-1)
    # The extremes over 1, 2, 4, ... pixels from each, each width from two of the one before; then the window's
    # from the widest of those and the powers of two its remainder is made of.
    spans = {1: line}
    width = 1
    while 2 * width <= size:
        narrower = spans[width]
        spans[2 * width] = extreme(narrower[: narrower.size - width * step], narrower[width * step :])
        width *= 2
    result = spans[width]
    while width < size:
        jump = 1 << ((size - width).bit_length() - 1)
        length = result.size - jump * step
        result = extreme(result[:length], spans[jump][width * step : width * step + length])
        width += jump
    shape = list(mirrored.shape)
    shape[axis] = n
    # NumPy checks that the view stays inside ``result``: the last window kept ends at its last pixel.
    return np.ndarray(tuple(shape), dtype=values.dtype, buffer=result, strides=mirrored.strides)


def _opaque_gray(image: Image.Image) -> np.ndarray:
    """Luminance in [0, 1] with any transparency flattened onto the background its strokes need."""
    gray, alpha = _gray_alpha(image)
    if alpha is not None:
        weight = float(alpha.sum())
        if weight < 1.0:
            raise EmptyImageError("it is fully transparent")
        if weight > 0.5 * alpha.size:
            # Mostly opaque: a picture with transparent margins (a photo rotated or cut out in an editor). The
            # margins take the picture's own typical shade, so they add no edge of their own.
            background = float(np.median(gray[alpha > 0.5]))
        else:
            # Strokes on transparency (canvas exports): dark strokes go onto white, light strokes onto black.
            opaque_luminance = float((gray * alpha).sum()) / weight
            background = 1.0 if opaque_luminance < 0.5 else 0.0
        gray = alpha * gray + (1.0 - alpha) * background
    return np.ascontiguousarray(gray, dtype=np.float32)


def _enlarged(gray: np.ndarray) -> np.ndarray:
    """``gray`` (its longer side under MIN_WORKING_SIDE) enlarged to at least ENLARGED_SIDE."""
    h, w = gray.shape
    factor = -(-ENLARGED_SIDE // max(h, w))
    # Lanczos kept the most of a few pixels' strokes (bicubic, bilinear and nearest read fewer such digits right);
    # it overshoots at sharp edges, so the result is clipped back into [0, 1].
    image = Image.fromarray(gray).resize((w * factor, h * factor), Image.Resampling.LANCZOS)
    return np.clip(_pixels(image), np.float32(0.0), np.float32(1.0))


def _desk_flattened(gray: np.ndarray) -> np.ndarray:
    """``gray`` with a desk around a sheet of paper turned into the sheet's own shade; other pictures as they are.

    The polarity (``_dark_ink``) is read against the picture's border: with a
    desk showing on every side, that is the desk, and the paper, far lighter
    than the desk, would be taken for light ink on it (the whole sheet read as
    one big digit). The grey opening cannot help: the sheet is wider than it.
    Like the transparent margins of ``_opaque_gray``, whatever lies outside the
    sheet takes the sheet's typical shade, so that only the sheet is left, with
    no edge of its own. An empty sheet is then as blank as on its own.

    A dark board framed by something lighter is the same picture in negative
    (a slate or blackboard on a wall, a dark app's canvas inside its light
    window in a screenshot): the frame was read as the paper, and the whole
    board, chalk and all, as one big digit of dark ink. It goes the same way.
    """
    sheet = _sheet(gray)
    if sheet is None:
        sheet = _sheet(np.float32(1.0) - gray)
        if sheet is None:
            return gray
    flattened = gray.copy()
    flattened[~sheet] = _quantile(gray[sheet], 0.5)
    return flattened


def _sheet(gray: np.ndarray) -> np.ndarray | None:
    """The sheet of ``_desk_flattened``, a bright region held within the picture, less its edge; None where none is."""
    h, w = gray.shape
    if min(h, w) < SHEET_MIN_SIDE:
        return None
    border = np.concatenate([gray[0], gray[-1], gray[:, 0], gray[:, -1]])
    desk = float(_quantile(border, 0.5))
    # Dark ink on paper, most pictures, has nothing brighter than its border: the maximum settles it.
    if float(gray.max()) - desk < SHEET_MIN_STEP:
        return None
    # Every 4th pixel each way: the paper's shade is no different, and a whole picture's quantile costs milliseconds.
    paper = float(_quantile(gray[::4, ::4].ravel(), 0.99))
    if paper - desk < SHEET_MIN_STEP:
        return None
    bright = gray > (desk + paper) / 2
    if np.count_nonzero(bright) < SHEET_MIN_SOLID * SHEET_MIN_SHARE * gray.size:
        return None  # too little bright for any sheet (light strokes on a dark ground): no need to label it
    # The ink written on the sheet leaves holes in its bright region: they belong to the sheet.
    labels, count = ndimage.label(ndimage.binary_fill_holes(bright))
    if count == 0:
        return None
    areas = np.bincount(labels.ravel(), minlength=count + 1)
    areas[0] = 0
    largest = int(np.argmax(areas))
    if areas[largest] < SHEET_MIN_SHARE * gray.size:
        return None
    sheet = labels == largest
    rows, cols = np.flatnonzero(sheet.any(axis=1)), np.flatnonzero(sheet.any(axis=0))
    # A sheet running off the picture on one side, or at a corner, leaves the desk most of the border (the sheet
    # touching three edges leaves it paper, and the steps above stop). One reaching two opposite edges is a strip
    # of the sheet between two of desk only when it looks like one; else it is a light stroke spanning the picture.
    spans_height, spans_width = rows[0] == 0 and rows[-1] == h - 1, cols[0] == 0 and cols[-1] == w - 1
    if spans_height and (spans_width or not _between_desk_strips(sheet, bright)):
        return None
    if spans_width and not _between_desk_strips(sheet.T, bright.T):
        return None
    height, width = rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1
    if min(height, width) < SHEET_MIN_SIDE or areas[largest] < SHEET_MIN_BOX_FILL * height * width:
        return None  # small, or not a sheet's box but a light stroke's round loop
    if np.count_nonzero(bright & sheet) < SHEET_MIN_SOLID * areas[largest]:
        return None  # mostly holes: a light stroke's loop (a chalk 0), not a sheet holding a few strokes
    sheet = ndimage.binary_erosion(sheet, structure=_EIGHT_NEIGHBOURS, iterations=SHEET_EDGE)
    return sheet if sheet.any() else None


def _between_desk_strips(region: np.ndarray, bright: np.ndarray) -> bool:
    """Whether a bright ``region`` running from the top of the picture to its bottom is a strip of paper between
    two of desk: clear of the left and right edges, at least SHEET_MIN_STRIP of the width, both sides straight lines
    (a sheet's edges, where a stroke's curve), and some ink on it (where a stroke is solid light)."""
    w = region.shape[1]
    present = np.flatnonzero(region.any(axis=1))
    left = np.argmax(region[present], axis=1)
    right = w - 1 - np.argmax(region[present, ::-1], axis=1)
    if left.min() == 0 or right.max() == w - 1 or np.median(right - left + 1) < SHEET_MIN_STRIP * w:
        return False
    tolerance = max(2.0, SHEET_STRIP_STRAIGHT * w)
    for side in (left, right):
        fitted = np.polyval(np.polyfit(present, side, 1), present)
        if np.abs(side - fitted).max() > tolerance:
            return False
    return np.count_nonzero(region & ~bright) >= SHEET_STRIP_MIN_INK * np.count_nonzero(region)


def _border_band(values: np.ndarray) -> np.ndarray:
    """For N pictures, the pixels of the band BORDER_BAND wide along each one's border, N rows of them."""
    n, h, w = values.shape
    k = max(1, round(BORDER_BAND * min(h, w)))
    return np.concatenate(
        [values[:, :k].reshape(n, -1), values[:, -k:].reshape(n, -1), values[:, :, :k].reshape(n, -1),
         values[:, :, -k:].reshape(n, -1)],
        axis=1,
    )


def _dark_ink(grays: np.ndarray) -> np.ndarray:
    """For N images, whether the ink is darker than the background (and must be inverted to be bright).

    The median of a band along the border (BORDER_BAND) stands for the
    background; the ink is whichever extreme lies clearly further from it.
    Paper in a dim photo is darker than mid-grey,
    and chalk's board can be lighter, so the background's own brightness decides
    only when neither side stands out (a digit too thin to reach the extremes).
    """
    n = grays.shape[0]
    background = _quantile(_border_band(grays), 0.5, axis=1)
    darkest, lightest = _quantiles(grays.reshape(n, -1), (INK_QUANTILE, 1.0 - INK_QUANTILE), axis=1)
    darker = background - darkest
    lighter = lightest - background
    return np.where(np.abs(darker - lighter) >= MIN_CONTRAST, darker > lighter, background > 0.5)


def _ink_maps(grays: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Ink maps in [0, 1] (ink bright, background 0, whatever the polarity), which hold any ink, which had dark ink."""
    n = grays.shape[0]
    dark = _dark_ink(grays)[:, None, None]
    # Light ink on a dark ground (MNIST's own) is left as it is by both steps for dark ink (turned, then divided by
    # 1): a batch of it alone skips them.
    any_dark = bool(dark.any())
    if any_dark:
        grays = np.where(dark, np.float32(1.0) - grays, grays)
    # Subtracting the local background copes with vignetting, uneven light and shadows in photos.
    background = _background(grays)
    ink = grays - background
    if any_dark:
        # Dark ink on paper: light and shadow scale the paper and the ink alike, so the contrast is divided by the
        # paper's own brightness there; a stroke in a shadow is then as strong as one in the light.
        ink /= np.where(dark, np.maximum(np.float32(1.0) - background, MIN_PAPER), np.float32(1.0))
    # A strided sample estimates the residual noise (MAD) as well as every pixel would, far faster.
    flat = ink.reshape(n, -1)
    sample = flat[:, :: max(1, flat.shape[1] // 8192)]
    centre = _quantile(sample, 0.5, axis=1)
    noise = 1.4826 * _quantile(np.abs(sample - centre[:, None]), 0.5, axis=1)
    # A digit cropped tight to its ink covers a third of the picture or more: the median pixel is then a stroke's
    # edge, and the spread measured is the strokes' against the paper, not the paper's noise; three times it wore
    # the strokes down to their cores, or away ("looks empty"). Where it would take off more than half the strongest
    # ink, the border band, mostly paper even then (as for the polarity), measures the noise instead when it finds
    # under half as much. An empty noisy sheet measures about the same there, and stays as it was.
    doubtful = np.flatnonzero(3.0 * noise > NOISE_MAX_SHARE * flat.max(axis=1))
    if doubtful.size:
        band = _border_band(ink[doubtful])
        band_noise = 1.4826 * _quantile(np.abs(band - _quantile(band, 0.5, axis=1)[:, None]), 0.5, axis=1)
        noise[doubtful] = np.where(band_noise < 0.5 * noise[doubtful], band_noise, noise[doubtful])
    ink -= np.maximum(3.0 * noise, 0.02).astype(np.float32)[:, None, None]
    np.clip(ink, 0.0, None, out=ink)
    peak = ink.reshape(n, -1).max(axis=1)
    inked = peak >= MIN_CONTRAST
    ink /= np.where(inked, peak, 1.0).astype(np.float32)[:, None, None]
    return ink, inked, dark[:, 0, 0]


def _digit_masks(inks: np.ndarray) -> np.ndarray:
    """Pixels bright enough to belong to the digit; one counts only with two marked 8-neighbours (no dust, specks)."""
    mask = inks > MASK_LEVEL
    n, h, w = mask.shape
    padded = np.zeros((n, h + 2, w + 2), dtype=np.uint8)
    padded[:, 1:-1, 1:-1] = mask
    # The 3x3 sums as sums of three rows' sums of three: four additions instead of eight.
    rows = padded[:, :-2] + padded[:, 1:-1] + padded[:, 2:]
    support = rows[:, :, :-2] + rows[:, :, 1:-1] + rows[:, :, 2:]
    return mask & (support >= 3)


def _line_counts(covered: np.ndarray) -> np.ndarray:
    """How many separate runs of covered rows (or columns) each of N profiles holds."""
    return (np.diff(covered.astype(np.int8), axis=-1, prepend=0) == 1).sum(axis=-1)


def _thin_ridges(covered: np.ndarray, share: np.ndarray) -> np.ndarray:
    """The runs of ``covered`` lines that are printed lines: thin, and inked far more than the lines 2-4 away.

    A soft, thick stroke of a tightly cropped digit covers most of many
    neighbouring columns, and its coverage flickers about RULING_COVER: each
    flicker would count as a line of its own.
    """
    edges = np.diff(covered.astype(np.int8), prepend=0, append=0)
    kept = np.zeros_like(covered)
    size = covered.size
    for start, stop in zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)):
        if stop - start > RULING_MAX_WIDTH:
            continue
        flanks = np.concatenate([share[max(0, start - 4) : max(0, start - 1)], share[min(size, stop + 1) : stop + 4]])
        if flanks.size and share[start:stop].min() - flanks.max() < RULING_RIDGE:
            continue
        kept[start:stop] = True
    return kept


def _printed_lines(ink: np.ndarray) -> np.ndarray | None:
    """The pixels of printed lines running across ``ink`` from side to side, or None when there are too few.

    Photos are rarely square to the sheet: each slope of RULING_SLOPES is
    tried, counting the marked pixels along every line of that slope, and the
    one that finds the most lines wins.
    """
    h, w = ink.shape
    slopes = len(RULING_SLOPES)
    shifts = np.rint(np.arange(w)[None, :] * RULING_SLOPES[:, None]).astype(np.intp)
    shifts -= shifts.min(axis=1, keepdims=True)
    lengths = h + shifts.max(axis=1)
    size = int(lengths.max())
    # The lines of every slope are counted at once. A shift only ever steps one way, so the columns sharing one
    # form a run, whose marked pixels land on the lines together: with the marks counted along each row up to
    # each column, a run's row profile is one difference (a few hundred runs, not every marked pixel per slope).
    running = np.zeros((w + 1, h), dtype=np.int32)
    np.cumsum((ink > RULING_INK).T, axis=0, out=running[1:])
    slope_of, starts = np.nonzero(np.diff(shifts, axis=1, prepend=-1))
    stops = np.append(starts[1:], w)
    stops[np.append(slope_of[1:] != slope_of[:-1], True)] = w
    offsets = slope_of * size + shifts[slope_of, starts]
    marked = np.bincount(
        (offsets[:, None] + np.arange(h)).ravel(),
        weights=(running[stops] - running[starts]).ravel(),
        minlength=slopes * size,
    ).reshape(slopes, size)
    # How much of each slanted line lies inside the picture (its ends leave it at the top or bottom).
    entering = (np.arange(slopes)[:, None] * (size + 1) + shifts).ravel()
    inside = np.cumsum(
        (np.bincount(entering, minlength=slopes * (size + 1)) - np.bincount(entering + h, minlength=slopes * (size + 1)))
        .reshape(slopes, size + 1)[:, :size],
        axis=1,
    )
    covered = (marked > RULING_COVER * inside) & (inside >= w // 2)
    best, best_score = None, (RULING_MIN_LINES, 0)
    # Keeping only thin ridges can only take lines away: a slope with too few already cannot win.
    for k in np.flatnonzero(_line_counts(covered) >= RULING_MIN_LINES):
        n = lengths[k]
        lines = _thin_ridges(covered[k, :n], marked[k, :n] / np.maximum(inside[k, :n], 1))
        # The most lines, then the slope that gathers the most of their pixels into them (the closest one).
        score = (int(_line_counts(lines)), int(marked[k, :n][lines].sum()))
        if score > best_score:
            best, best_score = (lines, shifts[k]), score
    if best is None:
        return None
    lines, shift = best
    return lines[np.arange(h)[:, None] + shift[None, :]]


def _grown(mask: np.ndarray) -> np.ndarray:
    """``mask`` and its 4-neighbours: ``ndimage.binary_dilation`` with its default cross, a tenth of its cost."""
    grown = mask.copy()
    grown[1:] |= mask[:-1]
    grown[:-1] |= mask[1:]
    grown[:, 1:] |= mask[:, :-1]
    grown[:, :-1] |= mask[:, 1:]
    return grown


def _rulings_removed(inks: np.ndarray, masks: np.ndarray) -> None:
    """Take ruled or squared paper's printed lines out of N ink maps and their masks, in place.

    Lines as dark as a quarter of the ink join the digit into one piece that
    reaches every edge, and the crop takes in the whole sheet. Every line of a
    sheet is printed alike, so along the lines one level, their typical ink,
    becomes the background: the lines go, and a stroke crossing one, whose ink
    covers it, keeps its full strength. A single level also spares a digit's
    bar that spans a tight crop: it is far darker than the lines. Lines as dark
    as the ink itself leave nothing to tell a stroke from a line: a stroke is
    cut where it crosses one, and the rest of the digit still reads.
    """
    marked = inks > RULING_INK
    across = marked[:, :, 0].any(axis=1) & marked[:, :, -1].any(axis=1)
    down = marked[:, 0, :].any(axis=1) & marked[:, -1, :].any(axis=1)
    for index in np.flatnonzero(across | down):
        ink = inks[index]
        lines = np.zeros(ink.shape, dtype=bool)
        if across[index] and (rows := _printed_lines(ink)) is not None:
            lines |= rows
        if down[index] and (cols := _printed_lines(ink.T)) is not None:
            lines |= cols.T
        if not lines.any():
            continue
        level = float(np.median(ink[lines]))
        # With the line on either side: a slanted line's edges are blurred over the next rows, too faint to count.
        lines = _grown(lines)
        # Ink covers the line it crosses: a stroke's pixel there is as dark as elsewhere, and only what lies between
        # the line's level and the ink's is stroke. Lines as strong as the strongest ink (an empty sheet, a clean
        # scan) leave at most their faint upper fringe: no stroke along them can be told from the line.
        ink[lines] = np.clip((ink[lines] - level) / max(1.0 - level, 0.1), 0.0, None)
        mask = _digit_masks(ink[None])[0]
        labels, count = ndimage.label(mask, structure=_EIGHT_NEIGHBOURS)
        # Pieces too short to be a digit's stroke that the lines leave behind: what their own noise leaves on
        # them (no pixel off the lines; a stroke crossing one always has some), which would make an empty sheet's
        # dashes a digit; and what is left of a line where it leaves the picture, too short to be counted with it,
        # which a digit near the edge would take in as its own. A long stroke drawn along a line stays.
        off_lines = np.bincount(labels[~lines], minlength=count + 1)
        remnants = [
            number
            for number, (down_span, across_span) in enumerate(ndimage.find_objects(labels), start=1)
            if (off_lines[number] == 0 or down_span.start == 0 or across_span.start == 0
                or down_span.stop == mask.shape[0] or across_span.stop == mask.shape[1])
            and max(down_span.stop - down_span.start, across_span.stop - across_span.start)
            < DIGIT_MIN_EXTENT * max(mask.shape)
        ]
        # One pass over the picture for all of them, however many a dense grid leaves.
        remnant = np.isin(labels, remnants)
        mask[remnant] = False
        ink[remnant] = 0.0
        masks[index] = mask


def _lone_piece_in_doubt(box: tuple[int, int, int, int], h: int, w: int) -> bool:
    """Whether the one piece in ``box`` may be no digit: a speck, a frame round the picture, or cut by an edge."""
    top, bottom, left, right = box
    small = max(bottom - top, right - left) < DIGIT_MIN_EXTENT * max(h, w)
    cut = top == 0 or left == 0 or bottom == h or right == w
    return small or cut or _round_the_picture(top, bottom, left, right, h, w)


def _round_the_picture(top: int, bottom: int, left: int, right: int, h: int, w: int) -> bool:
    """Whether a box runs round the whole picture, each of its sides within FRAME_BORDER of the picture's edge."""
    near = FRAME_BORDER * h, FRAME_BORDER * w
    return top <= near[0] and bottom >= h - near[0] and left <= near[1] and right >= w - near[1]


def _is_speck(own: np.ndarray, ink: np.ndarray) -> bool:
    """Whether a piece (its pixels in its box, and the ink there) is a solid mark, not strokes: a speck, a dash, a blot.

    See SPECK_MIN_THICKNESS and DASH_MIN_RATIO.
    """
    h, w = own.shape
    if max(h, w) <= BLOT_MAX_RATIO * min(h, w) and _one_run_each_way(own):
        if float(ink[own].mean()) >= BLOT_MIN_INK:
            return True
    if np.count_nonzero(own) < SPECK_MIN_FILL * own.size:
        return False
    if w >= DASH_MIN_RATIO * h:
        return True
    thickness = 2.0 * float(ndimage.distance_transform_edt(np.pad(own, 1)).max())
    return thickness >= SPECK_MIN_THICKNESS * max(h, w)


def _one_run_each_way(own: np.ndarray) -> bool:
    """Whether every row and every column of a piece's box holds one run of its pixels: no notch, no hole."""
    rows = np.count_nonzero(own[:, 1:] & ~own[:, :-1], axis=1) + own[:, 0]
    cols = np.count_nonzero(own[1:] & ~own[:-1], axis=0) + own[0]
    return bool((rows == 1).all() and (cols == 1).all())


def _faded_beyond_border(gray: np.ndarray, dark: bool, labels: np.ndarray, count: int) -> np.ndarray:
    """Which pieces of ``labels`` keep less than FADED_SHARE of their ink when the background goes on past the edges.

    Ink here is the picture's own contrast with its background, before it is
    scaled: once the background is as in ``_background(beyond_border=True)``,
    what was the edge's own is paper again, with only its noise left, and
    the noise goes too. So does the noise of a desk too wide to be ink at
    all, which dividing by its darkness made look like ink. The backgrounds
    are found on every few pixels (FADED_SIDE), each standing for its block:
    a share of large areas needs no more.
    """
    h, w = gray.shape
    step = -(-max(h, w) // FADED_SIDE)
    few = gray[::step, ::step]
    lit = (np.float32(1.0) - few if dark else few)[None]
    before = lit - _background(lit)
    # The noise from the smallest quarter of neighbouring pixels' differences: the paper's and the ink's own, even
    # where a digit fills a tight crop and its edges are most of the rest. For noise of deviation s, a quarter of
    # the differences (deviation s * sqrt(2)) are within 0.4506 s.
    steps = np.abs(np.diff(lit, axis=2)).ravel()
    if not steps.size:
        # A sliver of a picture, FADED_SIDE times as tall as it is wide or more, is sampled one pixel wide: its
        # neighbours are read down it instead (an empty quantile was an IndexError, the prediction failed).
        steps = np.abs(np.diff(lit, axis=1)).ravel()
    noise = float(_quantile(steps[:: max(1, steps.size // 8192)], 0.25)) / 0.4506 if steps.size else 0.0
    after = np.clip(lit - _background(lit, beyond_border=True) - np.float32(3.0 * noise), 0.0, None)
    # A piece keeps less than FADED_SHARE of its ink where this sums to less than nothing.
    weights = (after - FADED_SHARE * before)[0].repeat(step, axis=0).repeat(step, axis=1)[:h, :w]
    balance = np.bincount(labels.ravel(), weights=weights.ravel(), minlength=count + 1)
    return balance[1:] < 0


def _digit_only(
    ink: np.ndarray, mask: np.ndarray, gray: np.ndarray, dark: bool, *, tiny: bool = False
) -> tuple[np.ndarray, np.ndarray, bool]:
    """The ink and mask of the digit alone, without what a photo puts around it; and whether it left out another digit.

    The mask's connected pieces are sorted out: a lone printed line across the
    picture (a notebook's margin) goes when a digit-sized piece is left; bands
    along the picture's edge (a desk beside the paper) go when a smaller
    digit-sized piece is left; a sparse, square-cornered ring boxing a
    digit-sized piece in (a drawn frame, a form's cell), or running round the
    whole picture, goes, and so does a round one closing round a piece inked
    like a digit (a ring drawn round it); of the rest, the piece with the most
    ink and those near it (a broken stroke) stay, and specks further off go.
    The digit is never a speck (a solid mark smaller than a digit: a blob, a
    dash or a blot, see SPECK_MIN_THICKNESS and DASH_MIN_RATIO) nor a piece
    that the picture's edge cuts and that is gone once the background goes on
    past the edges (a desk along it, a shadow's corner, light falling off;
    ``gray`` is the picture the ink came
    from, ``dark`` its polarity): with nothing else, the picture holds no
    digit, and :class:`EmptyImageError` says so. A lone piece, the usual case,
    is left as it is unless it is one of those or a frame. A piece left out
    that is about as tall as the digit kept and inked comparably (see
    SEVERAL_MIN_HEIGHT) is another digit: the picture holds several, and only
    one of them is read. ``tiny``: the picture was enlarged from a few pixels,
    and every piece left is the digit's.
    """
    labels, count = ndimage.label(mask, structure=_EIGHT_NEIGHBOURS)
    h, w = mask.shape
    flat = labels.ravel()
    mass = np.bincount(flat, weights=ink.ravel(), minlength=count + 1)[1:]
    area = np.bincount(flat, minlength=count + 1)[1:]
    boxes = np.array([(r.start, r.stop, c.start, c.stop) for r, c in ndimage.find_objects(labels)])
    top, bottom, left, right = boxes.T
    extent = np.maximum(bottom - top, right - left)
    wide, tall = right - left >= EDGE_BAND * w, bottom - top >= EDGE_BAND * h
    band = ((top == 0) | (bottom == h)) & wide | ((left == 0) | (right == w)) & tall
    # Squared paper's lines are one piece reaching every edge, through the digit itself: not a band to remove.
    band &= ~((top == 0) & (bottom == h) & (left == 0) & (right == w))
    digit_sized = extent >= DIGIT_MIN_EXTENT * max(h, w)
    keep = np.ones(count, dtype=bool)
    # A lone printed line runs across most of the picture, and would outweigh the digit; _rulings_removed leaves it
    # (one line is no ruling). It goes while a piece of another shape a third of a digit's least size is left (a
    # digit written small on a whole notebook page is no more): a 1 drawn with a fine pen beside mere specks stays.
    lone_line = ((bottom - top >= LONE_LINE_MIN_LENGTH * h) & (right - left <= LONE_LINE_MAX_WIDTH)) | (
        (right - left >= LONE_LINE_MIN_LENGTH * w) & (bottom - top <= LONE_LINE_MAX_WIDTH)
    )
    lone_line &= extent >= LONE_LINE_MIN_SLENDERNESS * np.minimum(bottom - top, right - left)
    if ((extent >= DIGIT_MIN_EXTENT / 3 * max(h, w)) & ~lone_line).any():
        keep &= ~lone_line
    candidates = digit_sized & ~band & keep
    if candidates.any():
        # Only a band larger than any candidate digit: a tight crop's digit can touch an edge with a stroke of its
        # own (a 7's bar), which is always the smaller piece.
        keep &= ~(band & (area > area[candidates].max()))
    sparse = area < FRAME_MAX_FILL * (bottom - top) * (right - left)
    for outer in np.flatnonzero(keep & digit_sized & sparse):
        t, b, l, r = boxes[outer]
        inside = (top > t) & (bottom < b) & (left > l) & (right < r)
        if not (inside & keep & digit_sized).any() and not _round_the_picture(t, b, l, r, h, w):
            continue
        # A frame is a ring with corners: nothing of it in the middle of its box, where a digit's strokes cross,
        # and something of it in each corner, where a 0 (which can hold a slash) has nothing.
        own = labels[t:b, l:r] == outer + 1
        # An ellipse's outline stays 15% of its box's size away from each corner (along both axes).
        cy, cx = max(1, (b - t) // 10), max(1, (r - l) // 10)
        corners = own[:cy, :cx].any() and own[:cy, -cx:].any() and own[-cy:, :cx].any() and own[-cy:, -cx:].any()
        dy, dx = (b - t) // 4, (r - l) // 4
        if corners and not own[dy : b - t - dy, dx : r - l - dx].any():
            keep[outer] = False
            continue
        # A ring drawn round a digit has no corners: it goes when it closes round a piece inked like a digit, not
        # like a 0's slash (the piece is separate: it touches no pixel of the ring, even diagonally).
        held = np.flatnonzero(
            inside & keep & digit_sized & (mass * extent[outer] >= RING_MIN_HELD_INK * mass[outer] * extent)
        )
        if held.size:
            interior = ndimage.binary_fill_holes(own)
            pieces = labels[t:b, l:r]
            if any(interior[pieces == piece + 1].all() for piece in held):
                keep[outer] = False
    # The heaviest piece that can be the digit; the faded ones are found only when one cut by the edge comes up.
    at_edge = (top == 0) | (left == 0) | (bottom == h) | (right == w)
    faded = None
    main = -1
    for piece in np.flatnonzero(keep)[np.argsort(-mass[keep], kind="stable")]:
        t, b, l, r = boxes[piece]
        if not digit_sized[piece] and _is_speck(labels[t:b, l:r] == piece + 1, ink[t:b, l:r]):
            continue
        if faded is None and at_edge[piece]:
            faded = _faded_beyond_border(gray, dark, labels, count)
        if faded is not None and faded[piece]:
            continue
        main = int(piece)
        break
    if main < 0:
        if faded is not None and faded.any():
            raise EmptyImageError("its only marks are shadows or the edge of the sheet")
        raise EmptyImageError("its only marks are specks or printed lines")
    # In a picture enlarged from a few pixels, every piece left is the digit's: the shrinking broke its strokes apart,
    # and a piece further off is no second digit there.
    margin = max(h, w) if tiny else max(2.0, NEAR_DIGIT * extent[main])
    # Grown piece by piece, so that a stroke broken into several pieces stays whole.
    near = np.zeros(count, dtype=bool)
    near[main] = True
    while True:
        t, b, l, r = top[near].min(), bottom[near].max(), left[near].min(), right[near].max()
        grown = keep & (bottom > t - margin) & (top < b + margin) & (right > l - margin) & (left < r + margin)
        if (grown == near).all():
            break
        near = grown
    # ``t`` and ``b`` now bound the digit kept, all its pieces together.
    another = keep & ~near & digit_sized
    # A piece cut by the picture's edges counts only where the digit kept is cut by the same edge or the one opposite
    # (a tight crop of a number cuts its first digit at one end and its last at the other): the two pieces a hard
    # shadow's edge leaves where it meets the picture's bottom and its side are no pair of digits.
    cut = np.stack([(top == 0) | (bottom == h), (left == 0) | (right == w)], axis=1)
    another &= ~cut.any(axis=1) | (cut & cut[near].any(axis=0)).any(axis=1)
    several = bool(
        (another & (bottom - top >= SEVERAL_MIN_HEIGHT * (b - t)) & (mass >= SEVERAL_MIN_INK * mass[near].sum())).any()
    )
    keep = near
    if keep.all():
        return ink, mask, several
    kept = np.concatenate([[False], keep])[labels]
    # The faint fringe around a removed piece goes with it; the digit's own pixels never do.
    removed = ndimage.binary_dilation(mask & ~kept, structure=_EIGHT_NEIGHBOURS) & ~kept
    return np.where(removed, np.float32(0.0), ink), kept, several


def _split_in_two(mask: np.ndarray, *, across: float, along: float, strokes: float) -> bool:
    """Whether a cut down ``mask`` (a digit's box) parts it into two digits written side by side.

    The cut crosses at most ``strokes`` of the stroke's width of ink (none: two
    pieces; half: a hairline where two digits touch) and leaves on each side
    at least SPLIT_MIN_INK of the ink, inking at least ``across`` of the box's
    rows and reaching at least ``along`` of its width from the cut. A
    single digit's cuts cross two strokes or more (a 0's sides), or leave a
    stub on one side (a 7's bar, a 4's crossbar running to its stem, a speck
    beside it). For digits one above the other, pass the mask transposed.
    """
    h, w = mask.shape
    low = max(1, int(np.ceil(along * w)))
    if low >= w - low:
        return False
    counts = np.count_nonzero(mask, axis=0)
    total = int(counts.sum())
    if strokes > 0:
        # Every inked column holds a run of ink at least, so the stroke's width below is at most this: most wide digits
        # are settled without counting the runs.
        if counts[low : w - low].min() > strokes * total / np.count_nonzero(counts):
            return False
        # The stroke's width: its area over its length, which the runs of ink along the rows and the columns count.
        runs = np.count_nonzero(mask[1:] & ~mask[:-1]) + np.count_nonzero(mask[:, 1:] & ~mask[:, :-1])
        runs += np.count_nonzero(mask[0]) + np.count_nonzero(mask[:, 0])
        strokes *= total / runs
    cuts = low + np.flatnonzero(counts[low : w - low] <= strokes)
    if cuts.size == 0:
        return False
    before = np.cumsum(counts)
    cuts = cuts[(before[cuts - 1] >= SPLIT_MIN_INK * total) & (total - before[cuts] >= SPLIT_MIN_INK * total)]
    if cuts.size == 0:
        return False
    # How many rows each side of every cut inks: a digit inks every row it spans, while the bits a cut leaves of a
    # stroke (or of a shadow's corner kept beside the digit) may lie far apart.
    left = np.count_nonzero(np.logical_or.accumulate(mask, axis=1)[:, cuts - 1], axis=0)
    right = np.count_nonzero(np.logical_or.accumulate(mask[:, ::-1], axis=1)[:, ::-1][:, cuts + 1], axis=0)
    return bool(((left >= across * h) & (right >= across * h)).any())


def _several_touching(mask: np.ndarray) -> bool:
    """Whether the digit kept, ``mask`` cut to its box, is two digits written closer than NEAR_DIGIT or touching."""
    h, w = mask.shape
    if w >= SIDE_BY_SIDE_MIN_RATIO * h:
        if _split_in_two(mask, across=SIDE_BY_SIDE_MIN_HEIGHT, along=0.0, strokes=SPLIT_MAX_STROKES):
            return True
    elif not mask.any(axis=0).all() and _split_in_two(mask, across=SIDE_BY_SIDE_MIN_HEIGHT, along=0.0, strokes=0.0):
        return True
    return not mask.any(axis=1).all() and _split_in_two(
        mask.T, across=STACKED_MIN_WIDTH, along=STACKED_MIN_HEIGHT, strokes=0.0
    )


def _piece_counts(masks: np.ndarray) -> np.ndarray:
    """How many connected pieces each of N masks has, labelled in one call for the whole batch."""
    labels, _ = ndimage.label(masks, structure=_IN_PLANE)
    # Labels run in scan order, image after image: each image's highest label counts every piece up to it.
    highest = np.maximum.accumulate(labels.reshape(len(masks), -1).max(axis=1))
    return np.diff(highest, prepend=0)


def _digit_bbox(mask: np.ndarray) -> tuple[int, int, int, int]:
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    if rows.size == 0:
        raise _no_digit_left()
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


def _no_digit_left() -> EmptyImageError:
    return EmptyImageError("its only marks are specks or printed lines")


def _digit_bboxes(masks: np.ndarray) -> list[tuple[int, int, int, int] | None]:
    """:func:`_digit_bbox` of each of N masks, None for an empty one, in a few calls for the whole batch."""
    n, h, w = masks.shape
    rows, cols = masks.any(axis=2), masks.any(axis=1)
    # The first marked row or column from either end (argmax finds the first True).
    top, bottom = rows.argmax(axis=1), h - rows[:, ::-1].argmax(axis=1)
    left, right = cols.argmax(axis=1), w - cols[:, ::-1].argmax(axis=1)
    inked = rows.any(axis=1).tolist()
    boxes = np.stack([top, bottom, left, right], axis=1).tolist()
    return [tuple(box) if any_ink else None for box, any_ink in zip(boxes, inked, strict=True)]


def _fitted(crop: np.ndarray) -> np.ndarray:
    """``crop`` resized to fit BOX keeping its aspect ratio (its longer side BOX pixels), as float32."""
    h, w = crop.shape
    scale = BOX / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    crop = crop.astype(np.float32, copy=False)
    if size == (w, h):
        # Already the box's size, as most MNIST digits are: going through an image and back would cost more than
        # the rest of the digit's way to the model.
        return crop
    # Lanczos antialiases when shrinking (like MNIST's own downsampling); bilinear avoids ringing when enlarging.
    method = Image.Resampling.LANCZOS if scale < 1 else Image.Resampling.BILINEAR
    resized = Image.frombuffer("F", (w, h), np.ascontiguousarray(crop), "raw", "F", 0, 1).resize(size, method)
    return _pixels(resized)


def _centre_by_mass(small: np.ndarray) -> np.ndarray:
    h, w = small.shape
    total = float(small.sum())
    cy = float((small.sum(1) * _POSITIONS[:h]).sum()) / total
    cx = float((small.sum(0) * _POSITIONS[:w]).sum()) / total
    top = min(max(int(round(CENTRE - cy)), 0), SIDE - h)
    left = min(max(int(round(CENTRE - cx)), 0), SIDE - w)
    out = np.zeros((SIDE, SIDE), dtype=np.float32)
    out[top : top + h, left : left + w] = small
    return out


def _model_inputs(crops: Sequence[np.ndarray], interrupts: Interrupts) -> list[np.ndarray | Exception]:
    """Each digit's crop of its ink fitted into BOX, its ink scaled to a peak of 1, its centre of mass put at CENTRE.

    The array steps run once for the whole batch, the pictures side by side
    in BOX x BOX frames padded with zeros: on a digit, NumPy's per-call
    overhead was most of these steps' cost. Every value is as the plain steps
    (``_fitted``, clipped to [0, 1], divided by its peak, ``_centre_by_mass``)
    give it, zeros' signs included; a picture that fails gets its exception.
    """
    n = len(crops)
    boxed = np.zeros((n, BOX, BOX), dtype=np.float32)
    shapes: list[tuple[int, int] | Exception] = []
    for k, crop in enumerate(crops):
        try:
            small = _fitted(crop)
            h, w = small.shape
            boxed[k, :h, :w] = small
            shapes.append((h, w))
        except interrupts:
            raise
        except Exception as exc:  # noqa: BLE001 - reported per image
            shapes.append(exc)
    # The padding's zeros stay zeros and change no peak.
    np.clip(boxed, 0.0, 1.0, out=boxed)
    peaks = np.maximum.reduce(boxed.reshape(n, -1), axis=1)
    # A blank picture is left as it is: divided by 1.
    boxed /= np.where(peaks > 0, peaks, np.float32(1.0))[:, None, None]
    # The centres of mass in float64, where the plain step's sums are float32. Those come within 5e-4 of the exact
    # centre (a sum of at most BOX * BOX ink values in [0, 1] is off by at most 399 of float32's relative steps, 2.4e-5
    # of it, and the centre at most BOX from the edge): the two round alike wherever the offset (CENTRE less the centre)
    # lies more than CENTRE_MARGIN from a half. The few that do not, as well as a picture with no ink, take the
    # plain step.
    rows = boxed.sum(axis=2, dtype=np.float64)
    mass = rows.sum(axis=1)
    inked = mass > 0
    mass[~inked] = 1.0
    offsets = CENTRE - np.stack([rows @ _POSITIONS[:BOX], boxed.sum(axis=1, dtype=np.float64) @ _POSITIONS[:BOX]]) / mass
    rounded = np.rint(offsets)
    clear = inked & (0.5 - np.abs(offsets - rounded) > CENTRE_MARGIN).all(axis=0)
    out = np.zeros((n, SIDE, SIDE), dtype=np.float32)
    results: list[np.ndarray | Exception] = []
    for k, (shape, (top, left), certain) in enumerate(zip(shapes, rounded.T.tolist(), clear.tolist(), strict=True)):
        if isinstance(shape, Exception):
            results.append(shape)
            continue
        h, w = shape
        if certain:
            top, left = min(max(int(top), 0), SIDE - h), min(max(int(left), 0), SIDE - w)
            out[k, top : top + h, left : left + w] = boxed[k, :h, :w]
            results.append(out[k])
            continue
        try:
            results.append(_centre_by_mass(np.ascontiguousarray(boxed[k, :h, :w])))
        except interrupts:
            raise
        except Exception as exc:  # noqa: BLE001 - as above
            results.append(exc)
    return results


def _upright_first_frame(image: Image.Image, interrupts: Interrupts) -> Image.Image:
    image = _first_frame(image, interrupts)
    if _decoded_png_without_orientation(image):
        return image
    try:
        # exif_transpose copies the whole picture even when there is nothing to turn (20 ms for 36 megapixels).
        if image.getexif().get(ExifTags.Base.Orientation, 1) in range(2, 9):
            return ImageOps.exif_transpose(image)
    except interrupts:
        raise
    except Exception:  # noqa: BLE001 - broken EXIF must not make a valid picture unreadable
        pass
    return image


def _decoded_png_without_orientation(image: Image.Image) -> bool:
    """Whether ``image`` is a decoded PNG in which ``getexif`` would find no orientation.

    Every stored upload is one (its copy is written without metadata), and
    building the empty Exif that says so cost a few percent of preparing a
    28x28 digit. A PNG's ``getexif`` decodes the picture (EXIF may follow the
    pixels), then reads the orientation from these info entries alone, which
    decoding has filled in by then. A plain PNG decoded without Image.open
    (``classifier.png``) is a plain Image whose ``getexif`` reads the same entries.
    """
    return (
        (type(image) is PngImagePlugin.PngImageFile and not image.tile or type(image) is Image.Image)
        and not any(key in image.info for key in _ORIENTATION_INFO)
    )


def prepare_batch(images: Iterable[Image.Image], *, interrupts: Interrupts = ()) -> list[Prepared | Exception]:
    """:func:`preprocess` for many images at once, with what was noticed; a failing image gets its exception instead.

    ``interrupts``: exceptions that are never an image's fault (a caller's time
    limit, raised from a signal handler wherever the work happens to be). They
    end the whole batch at once instead of standing in for one image's result.

    ``images`` is read once, in order, and each picture is reduced to a working
    copy of at most MAX_WORKING_SIDE before the next is asked for: given a
    generator, a batch of large photos is never all decoded at once. Images of
    the same size then go through the array steps together: on small pictures
    NumPy's per-call overhead, not the arithmetic, is most of the cost.
    """
    results: list[Prepared | Exception | None] = []
    by_shape: dict[tuple[int, int], list[tuple[int, np.ndarray]]] = {}
    # Those enlarged from under MIN_WORKING_SIDE, whose pieces of ink are all the digit's (``_digit_only``).
    tiny: set[int] = set()
    # Counted by hand: enumerate keeps its last (index, image) pair while it asks for the next image.
    for image in images:
        index = len(results)
        results.append(None)
        try:
            gray = _opaque_gray(_upright_first_frame(image, interrupts))
            if max(gray.shape) < MIN_WORKING_SIDE:
                gray = _enlarged(gray)
                tiny.add(index)
            gray = _desk_flattened(gray)
            by_shape.setdefault(gray.shape, []).append((index, gray))
        except interrupts:
            raise
        except Exception as exc:  # noqa: BLE001 - reported per image; the rest of the batch goes on
            # Without its traceback, whose frames hold the picture.
            results[index] = exc.with_traceback(None)
        del image  # not held while the next one is read
    for members in by_shape.values():
        # Each digit found: its picture's place, its ink cut to the digit's box, whether it seemed to be one of several.
        digits: list[tuple[int, np.ndarray, bool]] = []
        inks, inked, darks = _ink_maps(np.stack([gray for _, gray in members]))
        masks = _digit_masks(inks)
        _rulings_removed(inks, masks)
        pieces = _piece_counts(masks)
        boxes = _digit_bboxes(masks)
        # As Python values: NumPy's scalars are slower to test, one by one.
        for (index, gray), ink, mask, has_ink, dark, count, box in zip(
            members, inks, masks, inked.tolist(), darks.tolist(), pieces.tolist(), boxes, strict=True
        ):
            try:
                if not has_ink:
                    raise EmptyImageError("it looks empty (blank, or too little contrast)")
                several = False
                if box is None:
                    raise _no_digit_left()
                # A lone piece, the usual case, is the digit unless it may be no digit at all.
                if count > 1 or _lone_piece_in_doubt(box, *mask.shape):
                    ink, mask, several = _digit_only(ink, mask, gray, bool(dark), tiny=index in tiny)
                    box = _digit_bbox(mask)
                top, bottom, left, right = box
                # Only pieces kept together, or a digit far wider than tall, can be two: a lone piece of a digit's
                # shape, the usual case, costs nothing more. Never a picture enlarged from a few pixels, whose
                # strokes the shrinking ran together or broke.
                if not several and index not in tiny and (
                    count > 1 or right - left >= SIDE_BY_SIDE_MIN_RATIO * (bottom - top)
                ):
                    several = _several_touching(mask[top:bottom, left:right])
                digits.append((index, ink[top:bottom, left:right], several))
            except interrupts:
                raise
            except Exception as exc:  # noqa: BLE001 - as above
                results[index] = exc
        if digits:
            inputs = _model_inputs([crop for _, crop, _ in digits], interrupts)
            for (index, _, several), pixels in zip(digits, inputs, strict=True):
                results[index] = (
                    pixels if isinstance(pixels, Exception) else Prepared(pixels=pixels, several_digits=several)
                )
    return results  # type: ignore[return-value]


def preprocess_batch(images: Iterable[Image.Image], *, interrupts: Interrupts = ()) -> list[np.ndarray | Exception]:
    """:func:`prepare_batch`'s model inputs alone."""
    return [r.pixels if isinstance(r, Prepared) else r for r in prepare_batch(images, interrupts=interrupts)]


def preprocess(image: Image.Image) -> np.ndarray:
    """Turn any PIL image into a 28x28 float32 array in [0, 1], white digit on black, MNIST-centred.

    Handles EXIF orientation, animated images (first frame), every common mode
    (1, L, P, RGB, RGBA, LA, CMYK, I;16, I, F, ...), transparency and either
    polarity. Raises :class:`EmptyImageError` when no digit is left (its message says why).
    """
    result = preprocess_batch([image])[0]
    if isinstance(result, Exception):
        raise result
    return result


def preprocess_many(images: Iterable[Image.Image]) -> np.ndarray:
    """Stack :func:`preprocess` results into an N x 28 x 28 float32 array; the first failure is raised."""
    arrays = preprocess_batch(images)
    for array in arrays:
        if isinstance(array, Exception):
            raise array
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
