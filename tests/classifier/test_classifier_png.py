"""The plain-PNG decoder gives what Image.open then load give, pixel for pixel, error for error."""
import io
import re
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from django.conf import settings
from PIL import Image

from classifier import png
from classifier.png import open_png, plain_png
from tests.classifier.fixtures import png_bytes
from training.ml.preprocess import prepare_batch

SAMPLES = Path(settings.BASE_DIR) / "media" / "samples"
_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# (channels, colour type) of the kinds decoded here.
_KINDS = {"L": (1, 0), "RGB": (3, 2), "LA": (2, 4), "RGBA": (4, 6)}


def _pillow(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data), formats=["PNG"])
    image.load()
    return image


def _outcome(open_, data: bytes):
    """What opening ``data`` gives: the picture as it is read (mode, size, info, pixels), or the error raised."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            image = open_(data)
        except Exception as exc:  # noqa: BLE001 - the error is the outcome compared
            # Less the address of the file object Pillow names in some.
            return type(exc), re.sub(r" at 0x[0-9a-f]+", "", str(exc))
    return image.mode, image.size, image.info, image.tobytes(), image.readonly


def _assert_decoded_as_pillow_does(data: bytes, *, plain: bool) -> None:
    assert (plain_png(data) is not None) is plain
    assert _outcome(open_png, data) == _outcome(_pillow, data)


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _header(width: int, height: int, colour: int, *, depth: int = 8, interlace: int = 0, compression: int = 0) -> bytes:
    return _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, depth, colour, compression, 0, interlace))


def _filtered(pixels: np.ndarray, filters: np.ndarray) -> bytes:
    """The rows of ``pixels`` (height x width x channels, uint8), each led by its filter type and filtered by it."""
    height, width, channels = pixels.shape
    rows = pixels.reshape(height, width * channels).astype(np.int16)
    out = []
    for y in range(height):
        x = rows[y]
        a = np.concatenate([np.zeros(channels, np.int16), x[:-channels]])
        b = rows[y - 1] if y else np.zeros_like(x)
        c = np.concatenate([np.zeros(channels, np.int16), b[:-channels]])
        kind = int(filters[y])
        if kind == 0:
            predicted = np.zeros_like(x)
        elif kind == 1:
            predicted = a
        elif kind == 2:
            predicted = b
        elif kind == 3:
            predicted = (a + b) // 2
        else:
            p = a + b - c
            pa, pb, pc = np.abs(p - a), np.abs(p - b), np.abs(p - c)
            predicted = np.where((pa <= pb) & (pa <= pc), a, np.where(pb <= pc, b, c))
        out.append(bytes([kind]) + ((x - predicted) % 256).astype(np.uint8).tobytes())
    return b"".join(out)


def _encoded(pixels: np.ndarray, *, filters: np.ndarray, level: int, cuts: list[int] = ()) -> bytes:
    """A plain PNG of ``pixels`` written here, not by Pillow: every row filtered as ``filters`` say, compressed at
    ``level``, its data split into IDAT chunks at ``cuts``."""
    height, width, channels = pixels.shape
    colour = _KINDS[{1: "L", 3: "RGB", 2: "LA", 4: "RGBA"}[channels]][1]
    stream = zlib.compress(_filtered(pixels, filters), level)
    bounds = [0, *sorted(min(cut, len(stream)) for cut in cuts), len(stream)]
    idats = b"".join(_chunk(b"IDAT", stream[start:stop]) for start, stop in zip(bounds, bounds[1:]))
    return _SIGNATURE + _header(width, height, colour) + idats + _chunk(b"IEND", b"")


def _random_pixels(rng: np.random.Generator, mode: str, width: int, height: int) -> np.ndarray:
    channels = _KINDS[mode][0]
    kind = rng.integers(4)
    if kind == 0:  # noise
        return rng.integers(0, 256, (height, width, channels), dtype=np.uint8)
    if kind == 1:  # flat
        return np.broadcast_to(rng.integers(0, 256, channels, dtype=np.uint8), (height, width, channels)).copy()
    ys, xs = np.mgrid[0:height, 0:width]
    if kind == 2:  # smooth gradients, which the predictors guess well
        planes = [(ys * rng.integers(1, 5) + xs * rng.integers(1, 5) + rng.integers(256)) % 256 for _ in range(channels)]
        return np.stack(planes, axis=-1).astype(np.uint8)
    # strokes on paper, like a digit
    pixels = np.full((height, width, channels), 255, dtype=np.uint8)
    pixels[(ys * 3 + xs * 2) % 17 < 3] = rng.integers(0, 80, channels, dtype=np.uint8)
    return pixels


def _mnist_pngs(mnist_test_split, count: int) -> list[bytes]:
    images = mnist_test_split.images[:count].numpy()
    # As the site stores them (fastest level, run-length strategy), and as Pillow and browsers write them.
    saves = [{"compress_level": 1, "compress_type": zlib.Z_RLE}, {}, {"compress_level": 9}, {"optimize": True}]
    return [png_bytes(Image.fromarray(pixels), **saves[index % len(saves)]) for index, pixels in enumerate(images)]


def test_fast_decode_gives_the_same_pixels_as_pillow_for_mnist_digits(mnist_test_split):
    for data in _mnist_pngs(mnist_test_split, 2000):
        _assert_decoded_as_pillow_does(data, plain=True)


def test_fast_decode_gives_the_same_result_as_pillow_for_every_shipped_sample():
    paths = sorted(SAMPLES.rglob("*.png"))
    assert len(paths) > 50
    for path in paths:
        data = path.read_bytes()
        assert _outcome(open_png, data) == _outcome(_pillow, data), path
        # The same picture written as the site stores it is plain, whatever the sample's own chunks.
        stored = png_bytes(_pillow(data).convert("RGBA"), compress_level=1, compress_type=zlib.Z_RLE)
        _assert_decoded_as_pillow_does(stored, plain=True)


@pytest.mark.parametrize("mode", ["L", "RGB", "LA", "RGBA"])
def test_fast_decode_gives_the_same_pixels_as_pillow_for_every_mode_size_and_compress_level(mode):
    rng = np.random.default_rng(sum(map(ord, mode)))
    sizes = [(1, 1), (1, 7), (7, 1), (2, 2), (28, 28), (3, 300), (300, 3), (257, 129), (400, 300)]
    sizes += [tuple(int(side) for side in rng.integers(1, 200, 2)) for _ in range(20)]
    for index, (width, height) in enumerate(sizes):
        pixels = _random_pixels(rng, mode, width, height)
        image = Image.fromarray(pixels[..., 0] if mode == "L" else pixels, mode)
        _assert_decoded_as_pillow_does(png_bytes(image, compress_level=index % 10), plain=True)


@pytest.mark.parametrize("mode", ["L", "RGB", "LA", "RGBA"])
def test_fast_decode_gives_the_same_pixels_as_pillow_for_every_filter_mix_and_split_of_the_data(mode):
    rng = np.random.default_rng(7 + sum(map(ord, mode)))
    for index in range(60):
        width, height = (int(side) for side in rng.integers(1, 120, 2))
        pixels = _random_pixels(rng, mode, width, height)
        filters = np.full(height, index % 5) if index < 10 else rng.integers(0, 5, height)
        # Cut anywhere, twice at the same place at times (an empty IDAT), or not at all.
        cuts = [int(cut) for cut in rng.integers(0, width * height + 2, rng.integers(0, 6))]
        if index % 7 == 0:
            cuts += [0, 0]
        data = _encoded(pixels, filters=filters, level=index % 10, cuts=cuts)
        _assert_decoded_as_pillow_does(data, plain=True)
        decoded = np.asarray(plain_png(data)).reshape(pixels.shape)
        assert np.array_equal(decoded, pixels)


def test_data_that_ends_the_stream_early_or_carries_extra_is_decoded_as_pillow_decodes_it():
    rows = b"".join(b"\x00" + bytes([y * 20] * 6) for y in range(5))
    for stream in (
        zlib.compress(rows[:14]),  # two rows, then the stream ends: the rest stays black in both
        zlib.compress(rows + b"\x00" * 100),  # more rows than the picture holds
        zlib.compress(rows) + b"trailing",
    ):
        data = _SIGNATURE + _header(6, 5, 0) + _chunk(b"IDAT", stream) + _chunk(b"IEND", b"")
        _assert_decoded_as_pillow_does(data, plain=True)


def _plain_digit(mnist_test_split) -> bytes:
    return png_bytes(Image.fromarray(mnist_test_split.images[0].numpy()))


def _with_crc_broken(data: bytes, kind: bytes) -> bytes:
    at = data.index(kind)
    length = int.from_bytes(data[at - 4 : at], "big")
    crc = at + 4 + length
    return data[:crc] + bytes([data[crc] ^ 1]) + data[crc + 1 :]


def test_damaged_or_unusual_pngs_fall_through_to_pillow_and_give_what_it_gives(mnist_test_split):
    data = _plain_digit(mnist_test_split)
    end = data.index(b"IEND") - 4
    stream_at = data.index(b"IDAT") + 4
    digit = mnist_test_split.images[0].numpy()
    rgb = Image.fromarray(np.stack([digit, 255 - digit, digit // 2], axis=-1))
    cases = {
        "bad header CRC": _with_crc_broken(data, b"IHDR"),
        "bad data CRC": _with_crc_broken(data, b"IDAT"),
        "bad end CRC": _with_crc_broken(data, b"IEND"),
        "bytes after the end": data + b"\0",
        "a chunk after the end": data + _chunk(b"tEXt", b"a\0b"),
        "no end": data[:end],
        "text before the data": data[:33] + _chunk(b"tEXt", b"Comment\0hi") + data[33:],
        "text after the data": data[:end] + _chunk(b"tEXt", b"Comment\0hi") + data[end:],
        "gamma": data[:33] + _chunk(b"gAMA", struct.pack(">I", 45455)) + data[33:],
        "turned by EXIF": png_bytes(Image.fromarray(digit), exif=_orientation(6)),
        "16 bits": png_bytes(Image.fromarray(digit.astype(np.uint16) * 257)),
        "palette": png_bytes(rgb.convert("P")),
        "palette with transparency": png_bytes(rgb.convert("P"), transparency=0),
        "grey with transparency": png_bytes(Image.fromarray(digit), transparency=0),
        "1 bit": png_bytes(Image.fromarray(digit).convert("1")),
        "interlaced": _interlaced(data),
        "no data": data[:33] + _chunk(b"IEND", b""),
        "an empty data chunk": data[:33] + _chunk(b"IDAT", b"") + _chunk(b"IEND", b""),
        "compression method 1": data[:8] + _header(28, 28, 0, compression=1) + data[33:],
        "zero width": data[:8] + _header(0, 28, 0) + data[33:],
        "a bad filter type": _SIGNATURE + _header(2, 1, 0) + _chunk(b"IDAT", zlib.compress(b"\x09ab")) + _chunk(b"IEND", b""),
        "corrupt data": data[:stream_at] + b"\xff" * 8 + data[stream_at + 8 :],
        "not a PNG": b"GIF89a" + data[6:],
    }
    for length in (8, 20, 33, 40, stream_at + 5, end - 2, end, len(data) - 1):
        cases[f"cut at {length}"] = data[:length]
    for name, case in cases.items():
        assert plain_png(case) is None, name
        assert _outcome(open_png, case) == _outcome(_pillow, case), name
    # Data the decoder reads in part: Pillow's errors, not a half-read picture.
    assert _outcome(open_png, cases[f"cut at {stream_at + 5}"])[0] is OSError
    assert _outcome(open_png, cases["corrupt data"])[0] is OSError


def _orientation(value: int) -> Image.Exif:
    exif = Image.Exif()
    exif[0x0112] = value
    return exif


def _interlaced(data: bytes) -> bytes:
    """The same digit written with Adam7 interlacing (Pillow writes none)."""
    pixels = np.asarray(_pillow(data))
    passes = ((0, 0, 8, 8), (0, 4, 8, 8), (4, 0, 8, 4), (0, 2, 4, 4), (2, 0, 4, 2), (0, 1, 2, 2), (1, 0, 2, 1))
    raw = b"".join(
        b"".join(b"\x00" + row.tobytes() for row in pixels[top::dy, left::dx])
        for top, left, dy, dx in passes
        if pixels[top::dy, left::dx].size
    )
    height, width = pixels.shape
    return _SIGNATURE + _header(width, height, 0, interlace=1) + _chunk(b"IDAT", zlib.compress(raw)) + _chunk(b"IEND", b"")


def test_a_picture_over_pillows_pixel_limit_is_left_to_pillow_to_warn_about_or_refuse(mnist_test_split, monkeypatch):
    data = _plain_digit(mnist_test_split)
    for limit in (28 * 28 - 1, 28 * 14):  # a warning, then a refusal (over twice the limit)
        monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", limit)
        assert plain_png(data) is None
        assert _outcome(open_png, data) == _outcome(_pillow, data)
        assert _outcome(open_png, data)[0] in (Image.DecompressionBombWarning, Image.DecompressionBombError)


def test_without_pillows_decoder_lookup_every_png_is_opened_by_pillow(mnist_test_split, monkeypatch):
    data = _plain_digit(mnist_test_split)
    monkeypatch.setattr(png, "_getdecoder", None)
    assert plain_png(data) is None
    assert _outcome(open_png, data) == _outcome(_pillow, data)


def test_prepared_model_inputs_are_the_same_to_the_last_bit_from_either_decoder(mnist_test_split):
    rng = np.random.default_rng(3)
    pngs = _mnist_pngs(mnist_test_split, 300)
    for mode in _KINDS:
        for _ in range(10):
            width, height = (int(side) for side in rng.integers(1, 160, 2))
            pixels = _random_pixels(rng, mode, width, height)
            pngs.append(png_bytes(Image.fromarray(pixels[..., 0] if mode == "L" else pixels, mode)))
    for path in sorted(SAMPLES.rglob("*.png")):
        pngs.append(png_bytes(_pillow(path.read_bytes()).convert("RGB")))
    assert all(plain_png(data) is not None for data in pngs)
    fast = prepare_batch(open_png(data) for data in pngs)
    plain = prepare_batch(_pillow(data) for data in pngs)
    for ours, theirs in zip(fast, plain, strict=True):
        if isinstance(theirs, Exception):
            assert (type(ours), str(ours)) == (type(theirs), str(theirs))
        else:
            assert ours.pixels.dtype == theirs.pixels.dtype
            assert ours.pixels.tobytes() == theirs.pixels.tobytes()
            assert ours.several_digits == theirs.several_digits
    assert sum(isinstance(result, Exception) for result in plain) < len(plain)
