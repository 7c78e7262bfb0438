"""Decoding a plain PNG (its header, picture data and end, nothing else) at a third of the cost of Image.open."""
from __future__ import annotations

import io
from struct import unpack_from
from zlib import crc32

from PIL import Image

_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# The signature, then the header's length (always 13) and type.
PNG_HEADER = _SIGNATURE + b"\x00\x00\x00\x0dIHDR"
# Where the header's CRC ends, and with it the header.
_HEADER_END = len(_SIGNATURE) + 12 + 13
# (bit depth, colour type) -> (mode, rawmode) as PngImagePlugin gives them; only the 8-bit kinds whose mode holds the
# pixels as stored (no palette, no 16-bit samples, no packed pixels), which the zip decoder reads straight into place.
_PLAIN_MODES = {
    (8, 0): ("L", "L"),
    (8, 2): ("RGB", "RGB"),
    (8, 4): ("LA", "LA"),
    (8, 6): ("RGBA", "RGBA"),
}

# Pillow's own zip decoder, the one ImageFile.load runs on a PNG's data: Image.open's parsing and ImageFile.load's
# bookkeeping cost twice the decoding itself on a 28x28 digit. It is reached through Image._getdecoder, not a public
# name, so only here: without it every PNG takes Image.open.
_getdecoder = getattr(Image, "_getdecoder", None)


def open_png(data: bytes) -> Image.Image:
    """The picture of the PNG ``data``, loaded: what ``Image.open(..., formats=["PNG"])`` then ``load()`` give.

    A plain PNG is decoded here, to the same mode, size and pixels (its info is
    empty in both). Anything else, or anything Pillow would refuse or warn
    about, is opened by Pillow itself, which raises its own errors.
    """
    image = plain_png(data)
    if image is None:
        image = Image.open(io.BytesIO(data), formats=["PNG"])
        image.load()
    return image


def plain_png(data: bytes) -> Image.Image | None:
    """The picture of a plain PNG, decoded as ``Image.open`` then ``load`` would decode it; None for any other data.

    Plain: its header (8 bits a sample, grey, RGB, grey and alpha or RGBA, not
    interlaced), its picture's data in one or more IDAT chunks and its end,
    nothing else, not even after the end; every chunk's CRC right; a picture
    Pillow would not warn about for its size; data the decoder ends on as
    ImageFile.load requires. Such a file carries no metadata, so the result's
    ``info`` is empty, as Pillow's is.
    """
    if _getdecoder is None or not data.startswith(PNG_HEADER) or len(data) < _HEADER_END:
        return None
    if crc32(data[12:29]) != int.from_bytes(data[29:33], "big"):
        return None
    width, height, depth, colour, compression, filtering, interlace = unpack_from(">IIBBBBB", data, 16)
    modes = _PLAIN_MODES.get((depth, colour))
    if modes is None or compression or filtering or interlace or not width or not height:
        return None
    limit = Image.MAX_IMAGE_PIXELS
    if limit is not None and width * height > limit:
        return None  # Image.open warns or refuses
    view = memoryview(data)
    pieces = []
    pos, end = _HEADER_END, len(data)
    while True:
        if pos + 12 > end:
            return None
        length = int.from_bytes(data[pos : pos + 4], "big")
        stop = pos + 8 + length
        if stop + 4 > end or crc32(view[pos + 4 : stop]) != int.from_bytes(data[stop : stop + 4], "big"):
            return None
        kind = data[pos + 4 : pos + 8]
        if kind == b"IEND":
            if length or stop + 4 != end or not pieces:
                return None
            break
        if kind != b"IDAT":
            return None
        pieces.append(view[pos + 8 : stop])
        pos = stop + 4
    mode, rawmode = modes
    # Allocated as ImageFile.load allocates it (core.new), so rows the data leaves out read the same.
    image = Image.new(mode, (width, height), None)
    try:
        decoder = _getdecoder(mode, "zip", (rawmode,))
    except OSError:
        return None  # Pillow built without zlib: Image.open says so
    try:
        decoder.setimage(image.im, (0, 0, width, height))
        consumed, error = decoder.decode(pieces[0] if len(pieces) == 1 else b"".join(pieces))
    finally:
        decoder.cleanup()
    # The decoder reports the picture done with a negative count; a count of bytes means it wanted more data, which
    # ImageFile.load calls truncated, and a negative error is its OSError.
    if consumed >= 0 or error < 0:
        return None
    return image
