"""Checking uploaded images and re-encoding them to clean PNGs before anything is stored.

Policy for file names: the content alone decides the format, whatever the name says. Pictures saved from the
web or a chat app are often misnamed (a JPEG called ``seven.png``), and a phone offers no way to rename them;
a name guards nothing either, since only Pillow's decoders for the allowed formats ever read the bytes, and
what is stored and served is a clean PNG under a generated name (with nosniff): a fresh one, or the upload
itself when it is a PNG holding its pixels and nothing else. The name is kept only to be shown to its owner.
"""
from __future__ import annotations

import hashlib
import io
import re
import threading
import unicodedata
import warnings
import zlib
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import PurePosixPath, PureWindowsPath
from struct import error as struct_error
from struct import unpack, unpack_from
from typing import IO

import numpy as np
from django.conf import settings
from django.core.exceptions import ValidationError
from PIL import ExifTags, Image, ImageOps, ImageSequence, UnidentifiedImageError

from classifier.png import PNG_HEADER, plain_png

# Only these Pillow decoders ever see uploaded bytes; everything else is "not an image".
ALLOWED_FORMATS = ("PNG", "JPEG", "GIF", "WEBP", "BMP")
# Longest side of the stored copy. Preprocessing works on at most 512 pixels, and a photo kept whole as a
# lossless PNG would take ten times its upload's size on disk (a 2 MB, 35-megapixel JPEG: 25 MB).
STORED_MAX_SIDE = 2048

# Rows of a 16-bit picture converted at a time.
_BAND_ROWS = 256
# A picture with more pixels than the stored copy can have is decoded by one request at a time in each web
# process: a few dozen of them at once (each a few hundred megabytes while decoded) would exhaust its memory.
LARGE_IMAGE_PIXELS = STORED_MAX_SIDE**2
# Reentrant: a large PNG is opened under it, then decoded under it again.
_large_decode = threading.RLock()

# Per-band spread (0-255) below which an image carries no drawing at all.
BLANK_SPREAD = 8
MAX_NAME_LENGTH = 255


@dataclass(frozen=True)
class ValidatedImage:
    """An accepted upload: the PNG to store plus what we record about the original."""

    content: bytes
    original_name: str
    format: str
    size: int
    width: int
    height: int
    sha256: str


_PATH_PARTS = re.compile(r"[/\\:]")
_SPACES = re.compile(r"\s+")


def sanitize_filename(name: str | None) -> str:
    """The client's file name, safe to show: no folders, no control characters, at most 255 characters."""
    name = name or ""
    if not (name.isascii() and name.isprintable()) or _PATH_PARTS.search(name):
        # Browsers on Windows have sent full paths with backslashes.
        name = PureWindowsPath(PurePosixPath(name).name).name
        name = unicodedata.normalize("NFC", name)
        name = "".join(ch for ch in name if unicodedata.category(ch)[0] != "C")
    # else printable ASCII without a folder or drive, nearly every name: the steps above would keep it as it is
    # (at a tenth of a small PNG's validation).
    name = _SPACES.sub(" ", name).strip(" .")
    if len(name) > MAX_NAME_LENGTH:
        stem, dot, ext = name.rpartition(".")
        if dot and 0 < len(ext) <= 16:
            name = f"{stem[: MAX_NAME_LENGTH - len(ext) - 1]}.{ext}"
        else:
            name = name[:MAX_NAME_LENGTH]
    return name


def validate_file_count(count: int) -> None:
    if count == 0:
        raise ValidationError("Choose at least one image, or draw a digit.", code="no_files")
    if count > settings.UPLOAD_MAX_FILES:
        raise ValidationError(
            f"Too many files: {count} were sent, at most {settings.UPLOAD_MAX_FILES} are accepted at once.",
            code="too_many_files",
        )


def _read_limited(file: IO[bytes], *, label: str) -> bytes:
    limit = settings.UPLOAD_MAX_BYTES
    declared = getattr(file, "size", None)
    if declared is not None and declared > limit:
        raise ValidationError(f"{label} is too large ({_mb(declared)}); the limit is {_mb(limit)}.", code="too_large")
    if hasattr(file, "seek"):
        file.seek(0)
    data = file.read(limit + 1)
    if len(data) > limit:
        raise ValidationError(f"{label} is too large; the limit is {_mb(limit)}.", code="too_large")
    return data


def _mb(size: int) -> str:
    return f"{size / (1024 * 1024):.1f} MB"


def _first_frame(image: Image.Image) -> Image.Image:
    # Animated GIF/WEBP/PNG: the first frame is the picture people see first.
    if getattr(image, "is_animated", False):
        frame = next(iter(ImageSequence.Iterator(image)))
        return frame.copy()
    return image


def _jpeg_draft_size(width: int, height: int) -> tuple[int, int]:
    """What to ask a JPEG's decoder for: the picture scaled by the largest of 1/8 to 1/1 that divides the stored copy's
    reduction, so that the rest of it is a whole factor too and the copy comes out as large as from every pixel.

    Rounded down: the decoder takes the largest scale whose result still covers the size asked for.
    """
    factor = -(-max(width, height) // STORED_MAX_SIDE)
    scale = next(scale for scale in (8, 4, 2, 1) if factor % scale == 0)
    return max(1, width // scale), max(1, height // scale)


def _draft(image: Image.Image) -> int:
    """Ask a JPEG's decoder for a reduced scale (``_jpeg_draft_size``); returns how many pixels decoding works on.

    Every byte is still read (truncation shows), at a fraction of the work: a phone's 4000x3000 photo, stored at
    2000x1500, is decoded at half scale. A progressive JPEG's decoder keeps the coefficients of the whole picture
    whatever the scale, so it counts whole. Other formats are decoded whole.
    """
    whole = image.width * image.height
    if image.format not in ("JPEG", "MPO"):
        return whole
    image.draft(image.mode, _jpeg_draft_size(image.width, image.height))
    return whole if image.info.get("progressive") else image.width * image.height


def _upright(image: Image.Image) -> Image.Image:
    try:
        # exif_transpose copies the whole picture even when there is nothing to turn.
        if image.getexif().get(ExifTags.Base.Orientation, 1) in range(2, 9):
            return ImageOps.exif_transpose(image)
    except Exception:  # noqa: BLE001 - a broken EXIF block must not make a valid picture unreadable
        pass
    return image


def _eight_bit(image: Image.Image) -> Image.Image:
    """A 16- or 32-bit grey picture scaled to 8 bits, rounded (Pillow's convert("L") clips instead of scaling).

    A band of rows at a time, in integers: a whole 40-megapixel picture in floating point would take gigabytes.
    """
    pixels = np.asarray(image)
    top = 65535 if image.mode.startswith("I;16") or pixels.max() > 255 else 255
    out = np.empty(pixels.shape, dtype=np.uint8)
    for start in range(0, pixels.shape[0], _BAND_ROWS):
        band = np.clip(pixels[start : start + _BAND_ROWS], 0, top).astype(np.int32)
        out[start : start + _BAND_ROWS] = (band * 510 + top) // (2 * top)  # round(band * 255 / top)
    return Image.fromarray(out)


def _to_storable(image: Image.Image) -> Image.Image:
    """Any decoded mode -> 8-bit L, LA, RGB or RGBA, which PNG stores losslessly."""
    mode = image.mode
    if mode in ("L", "LA", "RGB", "RGBA"):
        return image
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        return _eight_bit(image)
    if mode == "1":
        return image.convert("L")
    if mode in ("P", "PA"):
        has_alpha = mode == "PA" or "transparency" in image.info
        return image.convert("RGBA" if has_alpha else "RGB")
    if mode in ("CMYK", "YCbCr", "LAB", "HSV"):
        return image.convert("RGB")
    if mode in ("La", "RGBa"):
        return image.convert("RGBA")
    return image.convert("RGBA" if "A" in image.getbands() else "RGB")


# A 32-bit BMP's fourth byte, as Pillow reads it when its header does not call it alpha, and as alpha.
_BMP_ALPHA_RAWMODES = {"BGRX": "BGRA", "XBGR": "ABGR", "BGXR": "BGAR"}
_BMP_BITFIELDS = 3
# The smallest header holding an alpha mask (BITMAPV3INFOHEADER, and V4 and V5 after it).
_BMP_ALPHA_MASK_HEADER = 56


def _bmp_with_alpha(image: Image.Image, data: bytes) -> Image.Image | None:
    """A 32-bit BMP's picture with the alpha that Pillow leaves out, decoded; None for any other picture.

    Pillow reads a 32-bit BMP's fourth byte as alpha only where bit fields name an alpha mask; in a plain (BI_RGB)
    one it drops it, whatever the header. Writers that mean no alpha leave that byte 0, as the format asks, or 255;
    those that fill it mean alpha: Pillow's own RGBA BMPs, V4 and V5 headers naming an alpha mask with BI_RGB. Read
    without it, a drawing in the alpha of black pixels (a canvas's export) was refused as blank. Bit fields that
    name no alpha in a header with room for one say it has none: those stay opaque.
    """
    if image.format != "BMP" or image.mode != "RGB" or len(image.tile) != 1:
        return None
    tile = image.tile[0]
    if tile.codec_name != "raw" or tile.args[0] not in _BMP_ALPHA_RAWMODES:
        return None
    header_size = int.from_bytes(data[14:18], "little")
    if image.info.get("compression") == _BMP_BITFIELDS and header_size >= _BMP_ALPHA_MASK_HEADER:
        return None
    rawmode, stride, direction = tile.args
    end = tile.offset + stride * image.height
    if end > len(data):
        return None  # truncated: decoding it says so
    rgba = Image.frombuffer(
        "RGBA", image.size, data[tile.offset : end], "raw", _BMP_ALPHA_RAWMODES[rawmode], stride, direction
    )
    low, high = rgba.getchannel("A").getextrema()
    return rgba if high > 0 and low < 255 else None


def _is_blank(image: Image.Image) -> bool:
    extrema = image.getextrema()
    if image.mode == "L":
        extrema = (extrema,)
    return all(high - low <= BLANK_SPREAD for low, high in extrema)


# What Pillow reads in Python, a byte, segment or block at a time, before its decoders (in C) take over: a JPEG's
# segments up to its first scan, a PNG's chunks, a GIF's blocks up to its second picture. A file within the upload
# limit that was nothing but empty segments, filler or one-byte blocks kept a web process busy for seconds (a GIF's
# comment in one-byte blocks, joined one by one, for a minute), so such files are refused from a scan that jumps
# over each part whole. The limits sit far above what cameras and editors write: tens of segments and a few hundred
# KB of EXIF, ICC and XMP before a photo, a few bytes of padding, 8 KB IDAT chunks, 255-byte GIF blocks.
MAX_HEADER_PARTS = 4096
MAX_PADDING_BYTES = 64 * 1024
# A JPEG's frame headers and quantization tables (Pillow unpacks them in Python): a camera's take under 1 KB.
MAX_JPEG_TABLE_BYTES = 16 * 1024
# One EXIF segment holds at most 64 KB; Pillow joins any more, copying what came before each time.
MAX_JPEG_EXIF_BYTES = 128 * 1024
# Photoshop's resources (a thumbnail, IPTC captions, paths), listed one by one in Python.
MAX_JPEG_PHOTOSHOP_BYTES = 256 * 1024
# A progressive JPEG's scans, each a pass of the decoder over the whole picture however few bytes it takes: encoders
# write up to a few dozen (libjpeg 10), while a 360 KB file of 20,000 near-empty scans took 14 s to decode at
# 2048 x 2048. Counted as their markers anywhere in the file (an EXIF thumbnail's or an MPO preview's too).
MAX_JPEG_SCANS = 256
_PNG_DATA = (b"IDAT", b"fdAT")
MIN_PNG_DATA_CHUNK = 1024
# Pillow inflates each compressed text or ICC chunk of a PNG, up to 1 MB of it: a 1 KB chunk can hold 1 MB.
MAX_PNG_COMPRESSED_CHUNKS = 16
# Pillow joins a GIF's comment block by block.
MAX_GIF_COMMENT_BLOCKS = 256
# The first picture's data: Pillow steps over it block by block to see whether a second follows. 16 MB in full blocks.
MAX_GIF_DATA_BLOCKS = 65536
# A run-length (RLE8, RLE4) BMP's runs and escapes, which Pillow decodes in Python, a pair of bytes at a time: a 2 MB
# file of one-pixel runs took 0.3 to 1 s for a 1000 x 1000 picture, which counts one image of the allowance (a PNG
# of it, 15 ms). Editors write a run for each stretch of one colour, at most 255 pixels long: a digit drawn at
# 2048 x 2048, 23,000 runs. Counted a megapixel at a time, as the allowance counts the picture.
MAX_BMP_RUNS_PER_MEGAPIXEL = 65536
_BMP_RLE = (1, 2)  # the compression values RLE8 and RLE4

_JPEG_FILL = re.compile(rb"\xff+")
# Markers Pillow reads no length after, and those whose contents it unpacks (frame headers and quantization tables).
_JPEG_STANDALONE = frozenset((0xC8, *range(0xD0, 0xDA), *range(0xF0, 0xFE)))
_JPEG_TABLES = frozenset((*range(0xC0, 0xD0), 0xDB, 0xDE)) - {0xC4, 0xC8, 0xCC}
_GIF_JUNK = re.compile(rb"[^!,;]*")


def _structure_excess(data: bytes) -> str | None:
    """What in this file Pillow would spend too long reading before decoding it, or None: it may be read."""
    if data.startswith(b"\xff\xd8\xff"):
        return _jpeg_excess(data)
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return _png_excess(data)
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return _gif_excess(data)
    return None


def _jpeg_excess(data: bytes) -> str | None:
    """Pillow's walk from marker to marker up to the first scan, skipping filler and segments whole."""
    segments = padding = tables = exif = photoshop = 0
    pos, end = 2, len(data)
    while True:
        marker = data.find(b"\xff", pos)
        if marker < 0:
            padding += end - pos  # Pillow reads it a byte at a time, looking for a marker
            break
        fill_end = _JPEG_FILL.match(data, marker).end()
        padding += fill_end - pos - 1  # anything before the marker's last 0xFF: Pillow steps over it a byte at a time
        if fill_end < end and data[fill_end] == 0:
            padding += 2  # an escaped 0xFF, skipped like filler
        if padding > MAX_PADDING_BYTES:
            break
        if fill_end >= end:
            return None
        kind, pos = data[fill_end], fill_end + 1
        if kind == 0:
            continue
        if kind == 0xDA and data.count(b"\xff\xda", marker) > MAX_JPEG_SCANS:
            return f"more than {MAX_JPEG_SCANS} scans"
        if kind < 0xC0 or kind == 0xDA:
            return None  # not a marker (Pillow stops), or the first scan: the decoder reads on
        segments += 1
        if segments > MAX_HEADER_PARTS:
            return f"more than {MAX_HEADER_PARTS:,} segments before its picture"
        if kind in _JPEG_STANDALONE:
            continue
        length = max(int.from_bytes(data[pos : pos + 2], "big"), 2)
        start, pos = pos + 2, pos + length
        if kind in _JPEG_TABLES:
            tables += length - 2
            if tables > MAX_JPEG_TABLE_BYTES:
                return f"more than {MAX_JPEG_TABLE_BYTES // 1024} KB of frame and quantization tables"
        elif kind == 0xE1 and data.startswith(b"Exif\0\0", start, pos):
            exif += length - 2
            if exif > MAX_JPEG_EXIF_BYTES:
                return f"more than {MAX_JPEG_EXIF_BYTES // 1024} KB of EXIF data"
        elif kind == 0xED and data.startswith(b"Photoshop 3.0\0", start, pos):
            photoshop += length - 2
            if photoshop > MAX_JPEG_PHOTOSHOP_BYTES:
                return f"more than {MAX_JPEG_PHOTOSHOP_BYTES // 1024} KB of Photoshop data"
    if padding > MAX_PADDING_BYTES:
        return f"more than {MAX_PADDING_BYTES // 1024} KB of padding between its segments"
    return None


def _png_excess(data: bytes) -> str | None:
    """Pillow reads every chunk up to the last (IEND) one by one, before and after the picture's data.

    In an animation it stops at the next frame's control chunk (fcTL) after the first frame's data.
    """
    pos, end, chunks, compressed = 8, len(data), 0, 0
    # The frame counts of the animation control chunks (acTL) before the picture's data: only those count to Pillow.
    frame_counts: list[int] = []
    animated = picture_seen = False
    while pos + 8 <= end:
        kind = data[pos + 4 : pos + 8]
        length = int.from_bytes(data[pos : pos + 4], "big")
        if kind == b"acTL" and not picture_seen:
            frame_counts.append(int.from_bytes(data[pos + 8 : pos + 12], "big") if length >= 8 else 0)
        elif kind == b"IDAT" and not picture_seen:
            picture_seen = True
            # Pillow plays an animation from one well-formed acTL (a second one turns it off, as does a count of
            # none or over 2**31); in doubt the file is taken for a still picture, whose every chunk Pillow reads.
            animated = len(frame_counts) == 1 and 1 < frame_counts[0] <= 0x80000000
        elif kind == b"fcTL" and animated:
            break
        # A picture's data in chunks of a kilobyte or more costs its decoding, not the walk: a large PNG in small
        # IDAT chunks is never refused for their number.
        if kind not in _PNG_DATA or length < MIN_PNG_DATA_CHUNK:
            chunks += 1
            if chunks > MAX_HEADER_PARTS:
                return f"more than {MAX_HEADER_PARTS:,} small chunks"
        if kind == b"IEND":
            break
        if kind in (b"zTXt", b"iCCP") or kind == b"iTXt" and _itxt_compressed(data, pos + 8):
            compressed += 1
            if compressed > MAX_PNG_COMPRESSED_CHUNKS:
                return f"more than {MAX_PNG_COMPRESSED_CHUNKS} compressed text or colour profile chunks"
        pos += 12 + length
    return None


def _itxt_compressed(data: bytes, start: int) -> bool:
    # A keyword of at most 79 characters and its NUL, then the compression flag.
    flag = data.find(b"\0", start, start + 80) + 1
    return flag > 0 and data[flag : flag + 1] != b"\0"


def _gif_excess(data: bytes) -> str | None:
    """Pillow's walk over the blocks up to the second picture (its first frame's, and whether another follows)."""
    end = len(data)
    flags = data[10] if end > 10 else 0
    pos = 13 + ((3 << (flags & 7) + 1) if flags & 0x80 else 0)
    padding = extensions = comments = pictures = 0
    while pos < end:
        introducer = _GIF_JUNK.match(data, pos).end()
        padding += introducer - pos  # Pillow reads it a byte at a time, looking for a block
        if padding > MAX_PADDING_BYTES:
            return f"more than {MAX_PADDING_BYTES // 1024} KB of padding between its blocks"
        if introducer >= end or data[introducer] == 0x3B:  # the trailer
            break
        if data[introducer] == 0x21:  # an extension: a label, then blocks up to an empty one
            comment = data[introducer + 1 : introducer + 2] == b"\xfe"
            pos, blocks = introducer + 2, 1
            while pos < end and data[pos] and blocks <= MAX_HEADER_PARTS:
                pos, blocks = pos + 1 + data[pos], blocks + 1
            pos += 1
            extensions += blocks
            if extensions > MAX_HEADER_PARTS:
                return f"more than {MAX_HEADER_PARTS:,} extension blocks"
            comments += blocks if comment else 0
            if comments > MAX_GIF_COMMENT_BLOCKS:
                return f"more than {MAX_GIF_COMMENT_BLOCKS:,} comment blocks"
            continue
        pictures += 1
        if pictures == 2 or introducer + 10 > end:
            break
        flags = data[introducer + 9]
        # The descriptor, its palette and the data's code size; then the data, in blocks up to an empty one.
        pos, blocks = introducer + 11 + ((3 << (flags & 7) + 1) if flags & 0x80 else 0), 0
        while pos < end and data[pos] and blocks <= MAX_GIF_DATA_BLOCKS:
            pos, blocks = pos + 1 + data[pos], blocks + 1
        pos += 1
        if blocks > MAX_GIF_DATA_BLOCKS:
            return f"more than {MAX_GIF_DATA_BLOCKS:,} blocks of picture data"
    return None


def _bmp_rle_excess(image: Image.Image, data: bytes) -> str | None:
    """Too many runs for Pillow to decode in Python in a run-length BMP ``image`` opened from ``data``, or None.

    Pillow's own walk over the runs, step for step, counting them up to the limit for the picture's pixels: each run
    is stepped over, not decoded, and the walk stops at the limit.
    """
    if image.format != "BMP" or image.info.get("compression") not in _BMP_RLE or len(image.tile) != 1:
        return None
    width, height = image.size
    limit = MAX_BMP_RUNS_PER_MEGAPIXEL * -(-width * height // 1_000_000)
    pos, end, x, filled, rle4 = image.tile[0].offset, len(data), 0, 0, bool(image.tile[0].args[1])
    for _ in range(limit):
        if filled >= width * height or pos + 2 > end:
            return None
        count, value = data[pos], data[pos + 1]
        pos += 2
        if count:  # a run of one colour, cut at the row's end
            count = max(0, min(count, width - x))
            filled, x = filled + count, x + count
        elif value == 0:  # the end of a row
            filled, x = filled + -filled % width, 0
        elif value == 1:  # the end of the picture
            return None
        elif value == 2:  # a jump, whose two bytes Pillow reads twice over, the second time for its distance
            if pos + 4 > end:
                return None
            filled += data[pos + 2] + data[pos + 3] * width
            pos, x = pos + 4, filled % width
        else:  # pixels as they are, padded to an even position in the file
            length = value // 2 if rle4 else value
            if pos + length > end:
                return None
            filled, x = filled + length * (2 if rle4 else 1), x + value
            pos += length + (pos + length) % 2
    if filled >= width * height or pos + 2 > end:
        return None
    return f"more than {MAX_BMP_RUNS_PER_MEGAPIXEL:,} runs of pixels a megapixel"


def _bloated(label: str, excess: str) -> ValidationError:
    return ValidationError(
        f"{label} is padded or split up far more than any camera or editor writes a picture ({excess}). "
        "Save it again as a plain PNG or JPEG.",
        code="bloated",
    )


def validate_image(file: IO[bytes], *, name: str | None = None) -> ValidatedImage:
    """Accept one uploaded file or raise ValidationError with a message a person can act on.

    Nothing is written anywhere; the caller stores ``content`` (a PNG without
    the original's metadata) only after every file passed.
    """
    original_name = sanitize_filename(name if name is not None else getattr(file, "name", ""))
    label = f"“{original_name}”" if original_name else "The file"
    data = _read_limited(file, label=label)
    if not data:
        raise ValidationError(f"{label} is empty.", code="empty")
    excess = _structure_excess(data)
    if excess is not None:
        raise _bloated(label, excess)

    plain = _plain_png(data)
    if plain is not None:
        # The steps below would decode the same pixels, find no orientation or second frame, and store the file as
        # sent; skipping Image.open and its bookkeeping halves validating a digit's PNG.
        if _is_blank(plain):
            raise ValidationError(f"{label} is blank. Draw or upload a digit.", code="blank")
        return ValidatedImage(
            content=data,
            original_name=original_name,
            format="PNG",
            size=len(data),
            width=plain.width,
            height=plain.height,
            sha256=hashlib.sha256(data).hexdigest(),
        )

    sizes = _png_header_sizes(data)
    if any(size != sizes[0] for size in sizes):
        # A second header, which the decoder obeys: the size weighed for the allowance would not be the one decoded.
        raise ValidationError(f"{label} is damaged or truncated.", code="truncated")
    if sizes and sizes[0][0] * sizes[0][1] > settings.UPLOAD_MAX_PIXELS:
        # Before Image.open: opening an animated PNG fills a frame of its header's size, before Pillow checks the
        # size at all (a 128-byte file claiming 16000 x 16000 pixels took a gigabyte and seconds; more, a 500).
        raise _too_many_pixels(label, *sizes[0])

    # Image.open itself fills an animated PNG's first frame whole: a large one is opened under the lock too.
    opening = _large_decode if sizes and sizes[0][0] * sizes[0][1] > LARGE_IMAGE_PIXELS else nullcontext()
    with opening, warnings.catch_warnings():
        # Pillow only warns between MAX_IMAGE_PIXELS and twice that; treat it as an error.
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            image = Image.open(io.BytesIO(data), formats=list(ALLOWED_FORMATS))
        except (UnidentifiedImageError, ValueError, TypeError, SyntaxError):
            raise ValidationError(
                f"{label} is not an image we can read. Upload a PNG, JPEG, GIF, WEBP or BMP file.", code="not_image"
            ) from None
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise ValidationError(f"{label} has far too many pixels to be a digit.", code="too_many_pixels") from None
        except OSError:
            raise ValidationError(f"{label} is damaged or truncated.", code="truncated") from None

        # A camera JPEG carrying a second, preview picture (Multi-Picture Format) is opened as "MPO"; it is a
        # JPEG file, and its first picture is the photo.
        detected = "JPEG" if image.format == "MPO" else image.format or ""
        width, height = image.size
        # Checked from the header, before a single pixel is decoded.
        if width <= 0 or height <= 0:
            raise ValidationError(f"{label} has no pixels.", code="empty")
        if width * height > settings.UPLOAD_MAX_PIXELS:
            raise _too_many_pixels(label, width, height)
        # Only once its size is known to be within the limit, which bounds the runs walked.
        excess = _bmp_rle_excess(image, data)
        if excess is not None:
            raise _bloated(label, excess)
        try:
            # Before the first frame is taken, which decodes a camera's MPO file.
            with _large_decode if _draft(image) > LARGE_IMAGE_PIXELS else nullcontext():
                frame = _bmp_with_alpha(image, data)
                if frame is None:
                    frame = _first_frame(image)
                frame.load()
                # The stored copy drops EXIF, so its orientation is applied to the pixels first.
                unturned = frame.size
                frame = _upright(frame)
                if frame.size != unturned:
                    # Turned a quarter: the size reported is that of the picture as stored and shown, not as encoded.
                    width, height = height, width
                storable = _to_storable(frame)
                factor = -(-max(storable.size) // STORED_MAX_SIDE)
                if factor > 1:
                    storable = storable.reduce(factor)  # area averaging: thin strokes stay, fainter
                # The decoded pictures' memory is given back before the next large one is decoded.
                for decoded in (frame, image):
                    if decoded is not storable:
                        decoded.close()
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise ValidationError(f"{label} has far too many pixels to be a digit.", code="too_many_pixels") from None
        except (OSError, ValueError, SyntaxError, EOFError, IndexError, struct_error):
            raise ValidationError(f"{label} is damaged or truncated.", code="truncated") from None

    if _is_blank(storable):
        raise ValidationError(f"{label} is blank. Draw or upload a digit.", code="blank")

    if storable is image and detected == "PNG" and _png_holds_pixels_only(data):
        # Decoded whole just now and stored as is, with nothing a fresh encoding would leave behind: encoding it
        # again was a third of validating a small PNG, a canvas drawing's or a scanned digit's.
        content = data
    else:
        out = io.BytesIO()
        # A fresh encoder writes pixels only: EXIF, text chunks and ICC profiles are left behind. zlib's fastest
        # level halves the encoder's share of an upload's CPU; digits come out a few percent larger. Its run-length
        # strategy costs no more and stores a photo's noisy paper in a quarter less space (2.6 MB, not 3.4, for a
        # phone's photo), which counts against its owner's quota.
        storable.save(out, format="PNG", compress_level=1, compress_type=zlib.Z_RLE)
        content = out.getvalue()
    return ValidatedImage(
        content=content,
        original_name=original_name,
        format=detected,
        size=len(data),
        width=width,
        height=height,
        sha256=hashlib.sha256(data).hexdigest(),
    )


# How far into a file its picture's size is looked for when weighing it: a camera's metadata comes first, but not
# this much of it. A header further in (a file padded to be slow to read) counts as the largest picture accepted.
HEADER_PREFIX_BYTES = 512 * 1024


def _png_size(data: bytes) -> tuple[int, int] | None:
    """A PNG's size from its first chunk, which must be its header, or None when ``data`` is no such PNG."""
    if not data.startswith(PNG_HEADER) or len(data) < len(PNG_HEADER) + 8:
        return None
    return unpack(">II", data[len(PNG_HEADER) : len(PNG_HEADER) + 8])


def _too_many_pixels(label: str, width: int, height: int) -> ValidationError:
    return ValidationError(
        f"{label} is {width}×{height} pixels; at most {settings.UPLOAD_MAX_PIXELS:,} pixels are accepted.",
        code="too_many_pixels",
    )


def _png_header_sizes(data: bytes) -> list[tuple[int, int]]:
    """The size each header chunk (IHDR) of a PNG declares, in order, up to where Image.open stops reading chunks
    (the picture's data or the end), which takes the last one's; empty for any other file."""
    if _png_size(data) is None:
        return []
    sizes, pos, end = [], 8, len(data)
    while pos + 8 <= end:
        length, kind = int.from_bytes(data[pos : pos + 4], "big"), data[pos + 4 : pos + 8]
        if kind in (b"IDAT", b"fdAT", b"IEND"):
            break
        if kind == b"IHDR" and length >= 13 and pos + 16 <= end:
            sizes.append(unpack_from(">II", data, pos + 8))
        pos += 12 + length
    return sizes


def _plain_png(data: bytes) -> Image.Image | None:
    """The decoded picture of a plain PNG (see ``classifier.png.plain_png``: its pixels and nothing else, in a mode
    stored as it is) within the pixel limit and needing no reduction; None for any other file."""
    size = _png_size(data)
    if size is None or max(size) > STORED_MAX_SIDE or size[0] * size[1] > settings.UPLOAD_MAX_PIXELS:
        return None
    return plain_png(data)


def _png_holds_pixels_only(data: bytes) -> bool:
    """Whether ``data`` is a PNG's header, its picture's data and its end, and nothing else, not even after the end.

    Such a file carries no metadata, colour profile, gamma, transparency, palette or second frame: whoever
    decodes it (the worker, a browser) sees exactly the pixels validation decoded.
    """
    if _png_size(data) is None or data[8:12] != b"\x00\x00\x00\x0d":
        return False
    pos, end = 8 + 12 + 13, len(data)
    while pos + 12 <= end:
        length, kind = int.from_bytes(data[pos : pos + 4], "big"), data[pos + 4 : pos + 8]
        if kind == b"IEND":
            return length == 0 and pos + 12 == end
        if kind != b"IDAT":
            return False
        pos += 12 + length
    return False


def allowance_weight(files: list[tuple[IO[bytes], str | None]]) -> int:
    """How many images of the upload allowance these files spend, read from their headers alone.

    A picture counts one for each UPLOAD_PIXELS_PER_IMAGE it has, or part of them
    (a JPEG at the scale it is decoded at): reading an upload takes time in
    proportion to its pixels, a thousand times a digit's for 40 megapixels,
    which the allowance is there to bound. A file that validation refuses from
    its header alone (not a picture, more than UPLOAD_MAX_PIXELS, stuffed with
    padding or tiny segments) counts one, however long it is.
    """
    unit = settings.UPLOAD_PIXELS_PER_IMAGE
    if unit <= 0:
        return len(files)
    return sum(_picture_weight(file, unit=unit) for file, _ in files)


def _picture_weight(file: IO[bytes], *, unit: int) -> int:
    seekable = getattr(file, "seekable", None)
    if seekable is None or not seekable():
        return 1  # read once, by validation
    file.seek(0)
    head = file.read(HEADER_PREFIX_BYTES)
    file.seek(0)
    if _structure_excess(head) is not None:
        return 1  # refused by validation before Pillow reads it
    pixels = _header_pixels(head)
    if pixels is None:
        # A picture whose size lies beyond the prefix is read whole by validation; a file that no accepted
        # format's signature opens is refused as no picture from its first bytes, however long it is.
        unread = len(head) == HEADER_PREFIX_BYTES and _has_picture_signature(head)
        return -(-settings.UPLOAD_MAX_PIXELS // unit) if unread else 1
    return max(1, -(-pixels // unit)) if pixels <= settings.UPLOAD_MAX_PIXELS else 1


def _has_picture_signature(head: bytes) -> bool:
    """Whether one of the accepted formats' plugins would try to open a file starting with ``head``, as
    ``Image.open`` asks each of them before it reads any further."""
    Image.init()
    accepts = (Image.OPEN[name][1] for name in ALLOWED_FORMATS)
    return any(accept is None or accept(head[:16]) for accept in accepts)


def _header_pixels(head: bytes) -> int | None:
    size = _png_size(head)
    if size is not None:
        # Nearly every upload: the size is at a fixed place, and Pillow's parser costs more than the rest.
        return size[0] * size[1]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            return _draft(Image.open(io.BytesIO(head), formats=list(ALLOWED_FORMATS)))
    except Exception:  # noqa: BLE001 - no picture's header here; validation says what it is
        return None


class FilesRejectedError(ValidationError):
    """Files of one request that were refused: their errors, each item's ``file_index`` saying where its file stood
    in the request (from 0); a file may have several."""

    def __init__(self, errors: list[ValidationError], *, indexes: list[int]) -> None:
        super().__init__(errors)
        for error, index in zip(errors, indexes, strict=True):
            for item in error.error_list:
                item.file_index = index

    @property
    def file_indexes(self) -> list[int]:
        """Where each refused file stood, once each, in the order sent."""
        return list(dict.fromkeys(item.file_index for item in self.error_list))


def validate_images(files: list[tuple[IO[bytes], str | None]]) -> list[ValidatedImage]:
    """Validate every file of one request; raise one FilesRejectedError listing each rejected file."""
    validate_file_count(len(files))
    accepted: list[ValidatedImage] = []
    errors: list[ValidationError] = []
    indexes: list[int] = []
    for index, (file, name) in enumerate(files):
        try:
            accepted.append(validate_image(file, name=name))
        except ValidationError as exc:
            errors.append(exc)
            indexes.append(index)
    if errors:
        raise FilesRejectedError(errors, indexes=indexes)
    return accepted

