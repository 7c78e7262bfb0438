"""Validation of uploaded images: every bad input is refused with a clear message, odd-but-valid ones pass."""
import io
import os
import struct
import threading
import time
import tracemalloc
import zlib

import numpy as np
import pytest
from django.core.exceptions import ValidationError
from PIL import Image, ImageDraw

from classifier.validation import (
    MAX_HEADER_PARTS,
    MAX_JPEG_SCANS,
    MAX_PNG_COMPRESSED_CHUNKS,
    FilesRejectedError,
    sanitize_filename,
    validate_file_count,
    validate_image,
    validate_images,
)
from tests.classifier.fixtures import png_bytes


def _digit(mode: str = "L", size: int = 64) -> Image.Image:
    image = Image.new("L", (size, size), 255)
    for y in range(size // 5, size - size // 5):
        for x in range(size // 2 - 4, size // 2 + 4):
            image.putpixel((x, y), 0)
    return image.convert(mode) if mode != "L" else image


def _reject(data: bytes, name: str, code: str) -> str:
    with pytest.raises(ValidationError) as info:
        validate_image(io.BytesIO(data), name=name)
    assert info.value.code == code, info.value.messages
    return " ".join(info.value.messages)


@pytest.mark.parametrize("mode", ["L", "LA", "RGB", "RGBA"])
def test_a_png_holding_its_pixels_and_nothing_else_is_stored_as_sent(mode):
    data = png_bytes(_digit(mode))
    accepted = validate_image(io.BytesIO(data), name="seven.png")
    assert accepted.format == "PNG"
    assert (accepted.width, accepted.height) == (64, 64)
    assert accepted.size == len(data)
    assert accepted.content == data


def _png_pieces(data: bytes) -> tuple[bytes, bytes, bytes]:
    """A Pillow-made PNG as its signature and header, its picture's data, and its end chunk."""
    return data[:33], data[33:-12], data[-12:]


@pytest.mark.parametrize(
    "case",
    ["gamma", "physical size", "text after the data", "bytes after the end", "a second end"],
)
def test_a_png_holding_anything_besides_its_pixels_is_stored_as_a_fresh_png_of_the_same_pixels(case):
    head, pixels, end = _png_pieces(png_bytes(_digit()))
    data = {
        "gamma": head + _png_chunk(b"gAMA", struct.pack(">I", 100000)) + pixels + end,
        "physical size": head + _png_chunk(b"pHYs", struct.pack(">IIB", 3780, 3780, 1)) + pixels + end,
        "text after the data": head + pixels + _png_chunk(b"tEXt", b"Comment\0hello") + end,
        "bytes after the end": head + pixels + end + b"<html>",
        "a second end": head + pixels + end + end,
    }[case]
    accepted = validate_image(io.BytesIO(data), name="seven.png")
    assert accepted.content != data
    assert _png_pieces(accepted.content)[0][:16] == head[:16] and accepted.content.endswith(end)
    assert b"gAMA" not in accepted.content and b"pHYs" not in accepted.content and b"tEXt" not in accepted.content
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(accepted.content))), np.asarray(_digit()))


def test_a_png_whose_pixels_are_not_stored_as_decoded_is_stored_as_a_fresh_png():
    # Sixteen-bit grey is scaled to eight bits, a palette expanded: what is stored is what the model reads.
    for image in (Image.fromarray(np.asarray(_digit(), dtype=np.uint16) * 257), _digit("P")):
        data = png_bytes(image)
        accepted = validate_image(io.BytesIO(data), name="seven.png")
        assert accepted.content != data
        assert Image.open(io.BytesIO(accepted.content)).mode in ("L", "RGB")


def test_a_text_file_is_not_an_image():
    message = _reject(b"hello, I am not an image at all", "digit.png", "not_image")
    assert "not an image" in message


def test_an_image_format_outside_the_allow_list_is_not_an_image():
    _reject(png_bytes(_digit(), "TIFF"), "digit", "not_image")


@pytest.mark.parametrize(
    ("fmt", "name"),
    [
        ("JPEG", "seven_really_jpeg.png"),  # saved from a chat app under the wrong name
        ("PNG", "digit.jpg"),
        ("GIF", "digit.webp"),
        ("JPEG", "photo.heic"),  # a phone's name for a picture it sent as JPEG
        ("BMP", "scan.tiff"),
    ],
)
def test_a_readable_image_is_accepted_as_what_it_contains_whatever_format_its_name_gives(fmt, name):
    accepted = validate_image(io.BytesIO(png_bytes(_digit("RGB"), fmt)), name=name)
    assert accepted.format == fmt
    assert accepted.original_name == name
    assert Image.open(io.BytesIO(accepted.content)).format == "PNG"


def test_content_outside_the_allowed_formats_is_refused_even_under_an_allowed_name():
    message = _reject(png_bytes(_digit(), "TIFF"), "digit.png", "not_image")
    assert message == "“digit.png” is not an image we can read. Upload a PNG, JPEG, GIF, WEBP or BMP file."


def test_a_camera_jpeg_with_an_embedded_preview_is_accepted_as_a_jpeg():
    photo = _digit("RGB", size=200)
    out = io.BytesIO()
    # Multi-Picture Format: what cameras write when they embed a large preview after the photo.
    photo.save(out, format="MPO", save_all=True, append_images=[photo.resize((100, 100))])
    accepted = validate_image(io.BytesIO(out.getvalue()), name="DSC_0001.JPG")
    assert accepted.format == "JPEG" and (accepted.width, accepted.height) == (200, 200)
    assert Image.open(io.BytesIO(accepted.content)).size == (200, 200)


def test_a_large_photo_is_stored_at_most_2048_pixels_wide_with_its_original_size_on_record():
    photo = _digit("RGB", size=100).resize((5000, 3000))
    accepted = validate_image(io.BytesIO(png_bytes(photo, "JPEG")), name="photo.jpg")
    assert (accepted.width, accepted.height) == (5000, 3000)
    stored = Image.open(io.BytesIO(accepted.content))
    assert stored.size == (1667, 1000) and stored.mode == "RGB"


def test_a_png_without_an_image_extension_is_accepted_by_content():
    assert validate_image(io.BytesIO(png_bytes(_digit())), name="digit.upload").format == "PNG"


def test_a_truncated_png_is_rejected():
    data = png_bytes(_digit("RGB", 256).effect_spread(30))
    _reject(data[: len(data) // 2], "digit.png", "truncated")


def test_a_truncated_jpeg_is_rejected():
    data = png_bytes(_digit("RGB", 256).effect_spread(30), "JPEG", quality=95)
    _reject(data[: len(data) // 3], "digit.jpg", "truncated")


def test_an_empty_file_is_rejected():
    assert "empty" in _reject(b"", "digit.png", "empty")


def test_a_file_over_the_size_limit_is_rejected_before_decoding(settings):
    settings.UPLOAD_MAX_BYTES = 1000
    noisy = Image.fromarray(np.random.default_rng(0).integers(0, 255, (100, 100), dtype=np.uint8))
    assert "too large" in _reject(png_bytes(noisy), "noise.png", "too_large")


def _bomb_png(width: int, height: int) -> bytes:
    """A tiny PNG whose header promises width x height pixels (a decompression bomb)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    row = b"\x00" + b"\x00" * ((width + 7) // 8)
    body = zlib.compress(row * 64, 9)  # only a few rows; the header is what matters
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", body) + chunk(b"IEND", b"")


def test_decompression_bomb_upload_is_rejected_from_its_header():
    data = _bomb_png(30000, 30000)
    assert len(data) < 100_000
    assert "pixels" in _reject(data, "bomb.png", "too_many_pixels")


def test_an_image_over_the_pixel_limit_is_rejected(settings):
    settings.UPLOAD_MAX_PIXELS = 100 * 100
    _reject(png_bytes(_digit(size=200)), "big.png", "too_many_pixels")


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_an_image_of_exactly_the_largest_size_and_pixel_count_accepted_is_accepted(settings, fmt):
    data = png_bytes(_digit(size=100), fmt)
    settings.UPLOAD_MAX_PIXELS = 100 * 100
    settings.UPLOAD_MAX_BYTES = len(data)

    accepted = validate_image(io.BytesIO(data), name=f"digit.{fmt.lower()}")

    assert (accepted.format, accepted.size, accepted.width, accepted.height) == (fmt, len(data), 100, 100)


def test_too_many_files_in_one_request_are_rejected(settings):
    settings.UPLOAD_MAX_FILES = 3
    with pytest.raises(ValidationError) as info:
        validate_file_count(4)
    assert info.value.code == "too_many_files"
    with pytest.raises(ValidationError):
        validate_images([(io.BytesIO(png_bytes(_digit())), f"{i}.png") for i in range(4)])


def test_each_refused_file_is_known_by_the_position_its_errors_carry_and_by_nothing_else():
    files = [(io.BytesIO(png_bytes(_digit())), "0.png"), (io.BytesIO(b"nope"), "bad.png"),
             (io.BytesIO(png_bytes(_digit())), "2.png"), (io.BytesIO(b""), "empty.png")]

    with pytest.raises(FilesRejectedError) as info:
        validate_images(files)

    assert [(item.file_index, item.code) for item in info.value.error_list] == [(1, "not_image"), (3, "empty")]
    assert info.value.file_indexes == [1, 3]
    # One record of the positions: the upload page and the API read the same one, so they cannot disagree.
    assert not hasattr(info.value, "indexes")


def test_an_empty_canvas_is_rejected():
    blank = Image.new("RGBA", (280, 280), (0, 0, 0, 0))
    assert "blank" in _reject(png_bytes(blank), "drawing.png", "blank")


def test_a_uniform_white_image_is_rejected_as_blank():
    _reject(png_bytes(Image.new("RGB", (50, 50), "white")), "white.png", "blank")


@pytest.mark.parametrize(
    ("mode", "fmt", "name"),
    [
        ("CMYK", "JPEG", "cmyk.jpg"),
        ("P", "PNG", "palette.png"),
        ("P", "GIF", "palette.gif"),
        ("RGB", "WEBP", "digit.webp"),
        ("RGB", "BMP", "digit.bmp"),
        ("LA", "PNG", "grey-alpha.png"),
        ("1", "PNG", "bilevel.png"),
    ],
)
def test_odd_but_valid_images_are_accepted(mode, fmt, name):
    accepted = validate_image(io.BytesIO(png_bytes(_digit(mode), fmt)), name=name)
    stored = Image.open(io.BytesIO(accepted.content))
    assert stored.mode in {"L", "LA", "RGB", "RGBA"}


def _bmp32(pixels: np.ndarray, *, header: int = 40, bitfields: bool = False, alpha_mask: int = 0xFF000000) -> bytes:
    """RGBA ``pixels`` as a 32-bit BMP, each pixel's fourth byte its alpha: plain (BI_RGB) or with bit fields, with
    a header of ``header`` bytes (40: BITMAPINFOHEADER, 108: V4, 124: V5; their masks name ``alpha_mask``)."""
    height, width, _ = pixels.shape
    body = np.ascontiguousarray(pixels[::-1, :, [2, 1, 0, 3]]).tobytes()  # bottom row first, blue first
    masks = struct.pack("<IIII", 0xFF0000, 0xFF00, 0xFF, alpha_mask)
    info = struct.pack("<IiiHHIIiiII", header, width, height, 1, 32, 3 if bitfields else 0, len(body), 2835, 2835, 0, 0)
    if header == 40:
        info += masks[:12] if bitfields else b""  # three masks after the header, the fourth byte reserved
    else:
        info += masks + bytes(header - 56)
    offset = 14 + len(info)
    return b"BM" + struct.pack("<IHHI", offset + len(body), 0, 0, offset) + info + body


def _drawn_in_alpha() -> np.ndarray:
    """Black pixels whose digit is in their alpha alone, as a canvas exports a drawing."""
    pixels = np.zeros((64, 64, 4), dtype=np.uint8)
    pixels[..., 3] = 255 - np.asarray(_digit())
    return pixels


def _pillows_bmp(pixels: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(pixels, "RGBA").save(out, "BMP")
    return out.getvalue()


@pytest.mark.parametrize(
    "case",
    [
        "plain",
        "bit fields in a plain header",
        "plain, V4 header",
        "plain, V5 header",
        "bit fields, V5 header",
        "Pillow's",
    ],
)
def test_a_32_bit_bmp_drawn_in_its_alpha_is_read_with_it_and_stored_and_read_by_the_worker_as_a_png_of_it(case):
    from classifier.png import open_png
    from training.ml.preprocess import preprocess

    pixels = _drawn_in_alpha()
    data = {
        "plain": lambda: _bmp32(pixels),
        "bit fields in a plain header": lambda: _bmp32(pixels, bitfields=True),
        "plain, V4 header": lambda: _bmp32(pixels, header=108),
        "plain, V5 header": lambda: _bmp32(pixels, header=124),
        "bit fields, V5 header": lambda: _bmp32(pixels, header=124, bitfields=True),
        "Pillow's": lambda: _pillows_bmp(pixels),
    }[case]()
    accepted = validate_image(io.BytesIO(data), name="digit.bmp")
    stored = open_png(accepted.content)  # as the worker reads it
    assert accepted.format == "BMP" and stored.mode == "RGBA"
    assert np.array_equal(np.asarray(stored), pixels)
    as_png = open_png(validate_image(io.BytesIO(png_bytes(Image.fromarray(pixels, "RGBA"))), name="digit.png").content)
    assert np.array_equal(preprocess(stored), preprocess(as_png))


@pytest.mark.parametrize("fourth_byte", ["left 0", "255", "bit fields that name no alpha"])
def test_a_32_bit_bmp_whose_fourth_byte_is_no_alpha_is_read_opaque(fourth_byte):
    pixels = np.dstack([np.asarray(_digit("RGB")), np.full((64, 64), 0 if fourth_byte == "left 0" else 255, np.uint8)])
    if fourth_byte == "bit fields that name no alpha":
        pixels[..., 3] = np.asarray(_digit())  # what a writer left there, which its header says is no alpha
        data = _bmp32(pixels, header=124, bitfields=True, alpha_mask=0)
    else:
        data = _bmp32(pixels)
    stored = Image.open(io.BytesIO(validate_image(io.BytesIO(data), name="digit.bmp").content))
    assert stored.mode == "RGB" and np.array_equal(np.asarray(stored), np.asarray(_digit("RGB")))


def test_a_sixteen_bit_png_is_scaled_not_clipped():
    pixels = np.full((32, 32), 65535, dtype=np.uint16)
    pixels[8:24, 14:18] = 0
    data = png_bytes(Image.fromarray(pixels))
    stored = Image.open(io.BytesIO(validate_image(io.BytesIO(data), name="deep.png").content))
    assert stored.mode == "L"
    assert stored.getextrema() == (0, 255)


def test_every_sixteen_bit_level_is_rounded_to_the_nearest_eight_bit_one():
    levels = np.arange(65536, dtype=np.uint16).reshape(256, 256)
    data = png_bytes(Image.fromarray(levels))
    stored = np.asarray(Image.open(io.BytesIO(validate_image(io.BytesIO(data), name="ramp.png").content)))
    assert np.array_equal(stored, np.floor(levels / 65535 * 255 + 0.5).astype(np.uint8))


def _large_sixteen_bit_png(side: int) -> bytes:
    pixels = np.full((side, side), 65535, dtype=np.uint16)
    pixels[side // 5 : -side // 5, side // 2 - side // 40 : side // 2 + side // 40] = 0
    return png_bytes(Image.fromarray(pixels))


def _peak_traced_bytes(work) -> int:
    tracemalloc.start()
    try:
        work()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_a_large_sixteen_bit_png_is_converted_without_a_floating_point_copy_of_it():
    side = 4000
    data = _large_sixteen_bit_png(side)

    peak = _peak_traced_bytes(lambda: validate_image(io.BytesIO(data), name="deep.png"))

    # The picture as 16-bit integers is 2 bytes a pixel and its 8-bit copy one more; in float64 it was 8.
    assert peak < 5 * side * side, f"{peak / 2**20:.0f} MB traced"


def test_large_pictures_sent_at_once_are_decoded_one_at_a_time():
    side = 3000
    data = _large_sixteen_bit_png(side)
    single = _peak_traced_bytes(lambda: validate_image(io.BytesIO(data), name="deep.png"))
    start = threading.Barrier(4)

    def validate():
        start.wait()
        validate_image(io.BytesIO(data), name="deep.png")

    def validate_at_once():
        threads = [threading.Thread(target=validate) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    together = _peak_traced_bytes(validate_at_once)

    assert together < 1.5 * single, f"{together / 2**20:.0f} MB traced at once, {single / 2**20:.0f} MB alone"


@pytest.mark.parametrize("fmt", ["JPEG", "MPO"])
def test_a_phone_photo_is_decoded_at_its_stored_size_without_waiting_for_a_large_picture_being_decoded(fmt):
    from classifier import validation

    photo = Image.new("RGB", (4000, 3000), (235, 235, 230))
    photo.paste((20, 20, 30), (1900, 800, 2100, 2200))
    extra = {"save_all": True, "append_images": [photo.resize((640, 480))]} if fmt == "MPO" else {}
    data = png_bytes(photo, fmt, quality=90, **extra)
    finished = threading.Event()
    accepted = []

    def validate():
        accepted.append(validate_image(io.BytesIO(data), name="photo.jpg"))
        finished.set()

    # As while another request decodes a picture of 40 megapixels.
    with validation._large_decode:
        threading.Thread(target=validate, daemon=True).start()
        assert finished.wait(timeout=30), "the photo waited for the large picture"
    (image,) = accepted
    assert (image.width, image.height) == (4000, 3000)
    assert Image.open(io.BytesIO(image.content)).size == (2000, 1500)


def _peak_resident_bytes() -> int:
    with open("/proc/self/status") as status:
        line = next(line for line in status if line.startswith("VmHWM:"))
    return int(line.split()[1]) * 1024


def _peak_resident_reset() -> None:
    # Linux: the peak (VmHWM) starts again from what the process holds now.
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")


@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="reads the process's peak memory from /proc")
def test_a_large_animated_png_waits_for_a_large_picture_being_decoded_before_its_frame_is_allocated():
    from classifier import validation

    # Image.open fills the first frame whole, 100 MB here, before anything is decoded.
    data = _animated_png((5000, 5000))
    finished = threading.Event()

    def validate():
        validate_image(io.BytesIO(data), name="anim.png")
        finished.set()

    # As while another request decodes a picture of 40 megapixels.
    with validation._large_decode:
        _peak_resident_reset()
        before = _peak_resident_bytes()
        threading.Thread(target=validate, daemon=True).start()
        time.sleep(3)
        grown = _peak_resident_bytes() - before
        assert not finished.is_set()
    assert finished.wait(timeout=60)
    assert grown < 40 * 2**20, f"{grown / 2**20:.0f} MB taken while a large picture was being decoded"


def test_the_allowance_weight_of_pictures_is_read_from_their_headers_one_per_million_pixels(settings):
    from classifier.validation import HEADER_PREFIX_BYTES, allowance_weight

    def weight(*pictures: bytes) -> int:
        return allowance_weight([(io.BytesIO(data), "x") for data in pictures])

    digit = png_bytes(_digit())
    assert weight(digit) == 1
    assert weight(png_bytes(Image.new("L", (1000, 1001), 255))) == 2
    assert weight(png_bytes(Image.new("RGB", (2000, 1500), "white"), "WEBP")) == 3
    # A JPEG counts as decoded: at half scale for 4000x3000 or 4001x3000, at full scale when no scale divides its
    # reduction, and whole when progressive, whose decoder keeps every coefficient at any scale.
    assert weight(png_bytes(Image.new("L", (4000, 3000), 255), "JPEG")) == 3
    assert weight(png_bytes(Image.new("L", (4001, 3000), 255), "JPEG")) == 4
    assert weight(png_bytes(Image.new("L", (5000, 3000), 255), "JPEG")) == 15
    assert weight(png_bytes(Image.new("L", (4000, 3000), 255), "JPEG", progressive=True)) == 12
    assert weight(digit, digit, png_bytes(Image.new("L", (1000, 1001), 255))) == 4
    # What validation refuses from its header counts one: no picture, or more pixels than are accepted.
    assert weight(b"not a picture", b"") == 2
    # However long: no accepted format opens it, whatever lies beyond the part read.
    assert weight(b"A" * (HEADER_PREFIX_BYTES + 1000)) == 1
    bomb = bytearray(png_bytes(Image.new("L", (1, 1))))
    bomb[16:24] = (100_000).to_bytes(4, "big") * 2
    assert weight(bytes(bomb)) == 1
    # A picture whose size lies further in than any camera's metadata counts as the largest accepted.
    padded = b"\xff\xd8" + (b"\xff\xe1\xff\xfe" + bytes(65532)) * (HEADER_PREFIX_BYTES // 65536 + 1)
    assert weight(padded) == settings.UPLOAD_MAX_PIXELS // 1_000_000
    settings.UPLOAD_PIXELS_PER_IMAGE = 0
    assert weight(png_bytes(Image.new("L", (1000, 1001), 255)), digit) == 2


def test_a_png_with_a_second_header_the_decoder_would_obey_is_refused():
    # The allowance weighs a PNG by its first header; Pillow decodes at the size of the last.
    small, large = png_bytes(Image.new("L", (1, 1))), png_bytes(_digit(size=600))
    ihdr_end = 8 + 25
    data = small[:ihdr_end] + large[8:]
    assert Image.open(io.BytesIO(data)).size == (600, 600)
    _reject(data, "digit.png", "truncated")


def _animated_png(*headers: tuple[int, int]) -> bytes:
    """A two-frame animated PNG of a few bytes whose first frame clears to the background: its header (or headers)
    claim each size given, its data holds one pixel."""
    ihdrs = b"".join(_png_chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 6, 0, 0, 0)) for w, h in headers)
    control = struct.pack(">IIIIIHHBB", 0, 1, 1, 0, 0, 1, 10, 1, 0)  # frame 0, 1 x 1, disposed to the background
    return (
        b"\x89PNG\r\n\x1a\n" + ihdrs + _png_chunk(b"acTL", struct.pack(">II", 2, 0)) + _png_chunk(b"fcTL", control)
        + _png_chunk(b"IDAT", zlib.compress(b"\x00\xff\x00\x00\xff")) + _png_chunk(b"IEND")
    )


@pytest.mark.parametrize("size", [(2**31, 1), (1, 2**32 - 1)])
def test_an_animated_png_claiming_more_pixels_than_accepted_is_refused_from_its_header_before_pillow_opens_it(size):
    # Image.open fills a frame of the header's size for such a file before it checks the size: a gigabyte and
    # seconds for a 128-byte file claiming 16000 x 16000 pixels, a MemoryError or OverflowError (a 500) past that.
    message = _reject(_animated_png(size), "anim.png", "too_many_pixels")
    assert f"{size[0]}×{size[1]} pixels" in message


def test_an_animated_png_whose_second_header_claims_another_size_is_refused_before_pillow_opens_it():
    _reject(_animated_png((28, 28), (2**31, 1)), "anim.png", "truncated")
    assert validate_image(io.BytesIO(_animated_png((28, 28))), name="anim.png").format == "PNG"


def test_a_transparent_drawing_keeps_its_alpha():
    image = Image.new("RGBA", (100, 100), (0, 0, 0, 0))
    for y in range(20, 80):
        for x in range(45, 55):
            image.putpixel((x, y), (0, 0, 0, 255))
    stored = Image.open(io.BytesIO(validate_image(io.BytesIO(png_bytes(image)), name="drawing.png").content))
    assert stored.mode == "RGBA"


def test_an_animated_gif_uses_its_first_frame():
    first = _digit("P")
    second = Image.new("P", (64, 64), 0)
    data = png_bytes(first, "GIF", save_all=True, append_images=[second], duration=100, loop=0)
    stored = Image.open(io.BytesIO(validate_image(io.BytesIO(data), name="anim.gif").content))
    assert getattr(stored, "n_frames", 1) == 1
    assert stored.convert("L").getextrema() == (0, 255)


def test_metadata_is_stripped_and_the_sha256_is_of_the_original_bytes():
    import hashlib

    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text("Author", "secret person")
    data = png_bytes(_digit(), pnginfo=info)
    accepted = validate_image(io.BytesIO(data), name="meta.png")
    assert accepted.sha256 == hashlib.sha256(data).hexdigest()
    assert b"secret person" not in accepted.content


def test_a_jpeg_with_an_exif_rotation_is_stored_upright():
    image = Image.new("L", (40, 20), 255)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees when displayed
    image.paste(0, (0, 0, 10, 20))
    data = png_bytes(image, "JPEG", exif=exif.tobytes())
    accepted = validate_image(io.BytesIO(data), name="photo.jpg")
    assert (Image.open(io.BytesIO(accepted.content)).size) == (20, 40)
    assert (accepted.width, accepted.height) == (20, 40)  # the size as shown beside it, upright


def test_a_large_jpeg_with_an_exif_rotation_reports_its_full_size_upright():
    # Decoded at a reduced scale and stored smaller: the size reported is still the full picture's, turned upright.
    image = Image.new("L", (4000, 1000), 255)
    image.paste(0, (0, 0, 1000, 1000))
    exif = Image.Exif()
    exif[0x0112] = 6
    data = png_bytes(image, "JPEG", exif=exif.tobytes())
    accepted = validate_image(io.BytesIO(data), name="photo.jpg")
    assert (accepted.width, accepted.height) == (1000, 4000)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("../../etc/passwd", "passwd"),
        ("C:\\Users\\me\\digit.png", "digit.png"),
        ("a\x00b\nc.png", "abc.png"),
        ("x" * 300 + ".png", "x" * 251 + ".png"),
    ],
)
def test_original_names_are_sanitised(raw, expected):
    assert sanitize_filename(raw) == expected


def test_every_printable_ascii_name_is_sanitised_as_the_full_steps_would():
    import random
    import re
    import unicodedata
    from pathlib import PurePosixPath, PureWindowsPath

    def by_every_step(name: str) -> str:
        name = PureWindowsPath(PurePosixPath(name).name).name
        name = unicodedata.normalize("NFC", name)
        name = "".join(ch for ch in name if unicodedata.category(ch)[0] != "C")
        return re.sub(r"\s+", " ", name).strip(" .")

    rng = random.Random(7)
    alphabet = "ab.7 -_()" + "/\\:" + "\t\x7f" + "é"
    names = [".", "..", "", " . ", "C:digit.png", "a:b", "..png", "digit.png ."]
    names += ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 12))) for _ in range(5000)]
    for name in names:
        assert sanitize_filename(name) == by_every_step(name), repr(name)


def _png_chunk(kind: bytes, body: bytes = b"") -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)


def _after_jpeg_start(data: bytes, segments: bytes) -> bytes:
    return data[:2] + segments + data[2:]


def _jpeg_segment(marker: int, body: bytes) -> bytes:
    return struct.pack(">BBH", 0xFF, marker, len(body) + 2) + body


def _gif_blocks(data: bytes) -> tuple[int, int]:
    """Where the first picture's data blocks start (after its code size) and where its empty last block lies."""
    flags = data[10]
    pos = 13 + (3 << (flags & 7) + 1 if flags & 0x80 else 0)
    while data[pos] == 0x21:
        pos += 2
        while data[pos]:
            pos += 1 + data[pos]
        pos += 1
    flags = data[pos + 9]
    start = pos = pos + 11 + (3 << (flags & 7) + 1 if flags & 0x80 else 0)
    while data[pos]:
        pos += 1 + data[pos]
    return start, pos


def _gif_in_one_byte_blocks(image: Image.Image) -> bytes:
    data = png_bytes(image, "GIF")
    start, end = _gif_blocks(data)
    picture, pos = bytearray(), start
    while pos < end:
        picture += data[pos + 1 : pos + 1 + data[pos]]
        pos += 1 + data[pos]
    return data[:start] + b"".join(b"\x01" + picture[i : i + 1] for i in range(len(picture))) + data[end:]


def _stuffed_files() -> dict[str, tuple[bytes, str, str]]:
    """Small valid pictures stuffed with what Pillow reads a byte, segment or block at a time before decoding."""
    jpeg, png, gif = png_bytes(_digit(), "JPEG"), png_bytes(_digit()), png_bytes(_digit("P"), "GIF")
    ihdr_end = 8 + 25
    comment_at = _gif_blocks(gif)[0] - 11
    noise = Image.fromarray(np.random.default_rng(0).integers(0, 255, (320, 320), dtype=np.uint8)).convert("P")
    progressive = png_bytes(_digit(), "JPEG", progressive=True)
    last_scan, end = progressive.rindex(b"\xff\xda"), progressive.rindex(b"\xff\xd9")
    return {
        # Each scan a pass of the decoder over the whole picture, however few bytes it takes.
        "JPEG scans": (
            progressive[:end] + progressive[last_scan:end] * (MAX_JPEG_SCANS + 1) + progressive[end:], "digit.jpg", "scans"
        ),
        "JPEG fill bytes": (_after_jpeg_start(jpeg, b"\xff" * 100_000), "digit.jpg", "KB of padding"),
        "JPEG junk between segments": (
            _after_jpeg_start(jpeg, _jpeg_segment(0xFE, b"") + b"\x00" * 100_000), "digit.jpg", "KB of padding"
        ),
        "JPEG empty comments": (_after_jpeg_start(jpeg, b"\xff\xfe\x00\x02" * 5000), "digit.jpg", "segments"),
        "JPEG EXIF in pieces": (
            _after_jpeg_start(jpeg, _jpeg_segment(0xE1, b"Exif\0\0" + bytes(64)) * 3000), "digit.jpg", "KB of EXIF"
        ),
        "JPEG quantization tables": (
            _after_jpeg_start(jpeg, _jpeg_segment(0xDB, (b"\x00" + bytes(range(64))) * 1000)), "digit.jpg", "tables"
        ),
        "JPEG Photoshop resources": (
            _after_jpeg_start(
                jpeg, _jpeg_segment(0xED, b"Photoshop 3.0\0" + b"8BIM\x04\x04\0\0\0\0\0\0" * 5000) * 6
            ),
            "digit.jpg",
            "KB of Photoshop data",
        ),
        "PNG empty chunks": (png[:ihdr_end] + _png_chunk(b"abCd") * 5000 + png[ihdr_end:], "digit.png", "chunks"),
        "PNG empty chunks after its data": (
            png[:-12] + _png_chunk(b"abCd") * 5000 + png[-12:], "digit.png", "chunks"
        ),
        # A frame's control chunk stops Pillow's reading only in what it takes for an animation.
        **{
            f"PNG empty chunks after a frame, {shape}": (
                png[:ihdr_end] + before + png[ihdr_end:-12] + after + _png_chunk(b"fcTL", bytes(26))
                + _png_chunk(b"abCd") * 5000 + png[-12:],
                "digit.png",
                "chunks",
            )
            for shape, before, after in (
                ("two animation controls", _png_chunk(b"acTL", struct.pack(">II", 2, 0)) * 2, b""),
                ("the animation control after the data", b"", _png_chunk(b"acTL", struct.pack(">II", 2, 0))),
                ("a frame count over 2**31", _png_chunk(b"acTL", struct.pack(">II", 2**31 + 1, 0)), b""),
            )
        },
        "PNG compressed text": (
            png[:ihdr_end] + _png_chunk(b"zTXt", b"note\0\0" + zlib.compress(bytes(1_000_000), 9)) * (MAX_PNG_COMPRESSED_CHUNKS + 1)
            + png[ihdr_end:],
            "digit.png",
            "compressed text",
        ),
        "GIF comment in one-byte blocks": (
            gif[:comment_at] + b"!\xfe" + b"\x01a" * 1000 + b"\x00" + gif[comment_at:], "digit.gif", "comment blocks"
        ),
        "GIF picture in one-byte blocks": (_gif_in_one_byte_blocks(noise), "noise.gif", "blocks of picture data"),
        # Runs a pixel long, each decoded by Pillow in Python: a second for this one, where a PNG takes 15 ms.
        "BMP one-pixel runs, RLE8": (_one_pixel_runs_bmp(1000), "digit.bmp", "runs of pixels a megapixel"),
        "BMP one-pixel runs, RLE4": (_one_pixel_runs_bmp(1000, rle4=True), "digit.bmp", "runs of pixels"),
    }


def _one_pixel_runs_bmp(side: int, *, rle4: bool = False) -> bytes:
    """Columns of black and white a pixel wide, in runs a pixel long: what ``_rle_bmp`` writes for them, made fast."""
    row = b"\x01\x00\x01\xff" * (side // 2) + b"\0\0"
    return _bmp_of_runs(row * side + b"\0\1", width=side, height=side, rle4=rle4)


def _rle_bmp(pixels: np.ndarray, *, rle4: bool = False) -> bytes:
    """``pixels`` (palette indexes, 0-255, or 0-15 for RLE4, over a palette of greys) as a run-length BMP, written
    as editors write it: each row in runs of one colour of at most 255 pixels, then the end of the row, and the end
    of the picture after the last (bottom) row."""
    height, width = pixels.shape
    body = bytearray()
    for row in pixels[::-1]:
        starts = np.flatnonzero(np.diff(row.astype(np.int16), prepend=-1))
        for start, stop in zip(starts, [*starts[1:], width], strict=True):
            for at in range(start, stop, 255):
                body += bytes((min(255, stop - at), int(row[start]) * 17 if rle4 else int(row[start])))
        body += b"\0\0"
    return _bmp_of_runs(bytes(body + b"\0\1"), width=width, height=height, rle4=rle4)


def _bmp_of_runs(body: bytes, *, width: int, height: int, rle4: bool) -> bytes:
    colours = 16 if rle4 else 256
    palette = b"".join(bytes((level, level, level, 0)) for level in range(0, 256, 255 // (colours - 1)))
    bits, compression = (4, 2) if rle4 else (8, 1)
    header = struct.pack("<IiiHHIIiiII", 40, width, height, 1, bits, compression, len(body), 2835, 2835, colours, 0)
    offset = 14 + len(header) + len(palette)
    return b"BM" + struct.pack("<IHHI", offset + len(body), 0, 0, offset) + header + palette + body


@pytest.mark.parametrize("case", sorted(_stuffed_files()))
def test_a_picture_stuffed_with_segments_chunks_blocks_or_filler_is_refused_before_it_is_read(case):
    data, name, detail = _stuffed_files()[case]
    message = _reject(data, name, "bloated")
    assert "padded or split up far more than any camera or editor" in message and detail in message
    assert "Save it again" in message


def _phone_photo(fmt: str = "JPEG", mode: str = "RGB", **save) -> bytes:
    """A photo shaped like a phone's: 60 KB of EXIF, a 400 KB ICC profile (7 segments), XMP, as sent."""
    photo = _digit(mode, size=200).resize((800, 600))
    exif = Image.Exif()
    exif[0x010F], exif[0x0110] = "Phone maker", "Phone model"
    exif[0x010E] = "m" * 60_000  # as large as a maker's notes get
    icc = np.random.default_rng(1).integers(0, 255, 400_000, dtype=np.uint8).tobytes()
    xmp = b"<x:xmpmeta>" + b" " * 30_000 + b"</x:xmpmeta>"
    return png_bytes(photo, fmt, exif=exif.tobytes(), icc_profile=icc, xmp=xmp, quality=90, **save)


def _real_world_jpegs() -> dict[str, bytes]:
    jpeg = png_bytes(_digit("RGB", size=200), "JPEG")
    thumbnail = _digit("RGB", size=160).resize((160, 120))
    jfif = b"JFIF\0\x01\x02\x01\x00\x48\x00\x48\xa0\x78" + thumbnail.tobytes()
    jfxx = b"JFXX\0\x10" + png_bytes(thumbnail, "JPEG")
    resources = (b"8BIM" + struct.pack(">HHI", code, 0, 4000) + bytes(4000) for code in range(1000, 1010))
    photoshop = b"Photoshop 3.0\0" + b"".join(resources)
    return {
        "phone photo with a preview (MPO)": _phone_photo(
            "MPO", save_all=True, append_images=[_digit("RGB", size=200).resize((320, 240))]
        ),
        "progressive photo": _phone_photo(progressive=True),
        "Adobe CMYK": _phone_photo(mode="CMYK"),
        "JFIF with thumbnails": _after_jpeg_start(jpeg, _jpeg_segment(0xE0, jfif) + _jpeg_segment(0xE0, jfxx)),
        "Photoshop resources and a few fill bytes": _after_jpeg_start(
            jpeg, _jpeg_segment(0xED, photoshop) + b"\xff" * 16 + _jpeg_segment(0xFE, b"edited")
        ),
    }


@pytest.mark.parametrize("case", sorted(_real_world_jpegs()))
def test_real_world_jpegs_with_large_metadata_segments_are_accepted(case):
    data = _real_world_jpegs()[case]
    accepted = validate_image(io.BytesIO(data), name="photo.jpg")
    assert accepted.format == "JPEG" and accepted.size == len(data)


def test_a_png_in_many_idat_chunks_with_its_text_and_a_gif_with_an_icc_profile_are_accepted():
    # libpng writes 8 KB IDAT chunks, some encoders smaller ones: here 1 KB, more of them than the limit on small
    # chunks. ImageMagick keeps a few profiles as compressed text.
    noisy = Image.fromarray(np.random.default_rng(2).integers(0, 255, (2100, 2100), dtype=np.uint8))
    png = png_bytes(noisy)
    ihdr_end, body, pos = 8 + 25, b"", 8
    while pos < len(png):
        (length,) = struct.unpack(">I", png[pos : pos + 4])
        body += png[pos + 8 : pos + 8 + length] if png[pos + 4 : pos + 8] == b"IDAT" else b""
        pos += 12 + length
    idats = b"".join(_png_chunk(b"IDAT", body[i : i + 1024]) for i in range(0, len(body), 1024))
    profiles = b"".join(
        _png_chunk(b"zTXt", b"Raw profile type %d\0\0" % i + zlib.compress(bytes(2000))) for i in range(6)
    )
    data = png[:ihdr_end] + profiles + idats + png[-12:]
    assert len(data) <= 5 * 1024 * 1024 and data.count(b"IDAT") > MAX_HEADER_PARTS
    assert validate_image(io.BytesIO(data), name="scan.png").format == "PNG"

    gif = png_bytes(_digit("P"), "GIF")
    at = _gif_blocks(gif)[0] - 11
    icc = b"".join(b"\xff" + bytes(255) for _ in range(2000))  # a 500 KB profile in full blocks
    data = gif[:at] + b"!\xff\x0bICCRGBG1012" + icc + b"\x00" + gif[at:]
    assert validate_image(io.BytesIO(data), name="digit.gif").format == "GIF"


def test_an_animated_png_of_more_small_frames_than_the_limit_on_small_chunks_is_accepted_as_its_first_frame():
    # An optimiser's APNG: each frame after the first a small change, in a control chunk and a small data chunk.
    first = _digit("RGB", 32)
    frames = [first]
    for index in range(1, MAX_HEADER_PARTS // 2 + 100):
        frame = first.copy()
        frame.putpixel((index % 32, 0), (index % 251, 128, 0))  # each frame unlike the one before it
        frames.append(frame)
    out = io.BytesIO()
    first.save(out, "PNG", save_all=True, append_images=frames[1:], duration=40, loop=0)
    data = out.getvalue()
    assert data.count(b"fcTL") > MAX_HEADER_PARTS // 2 and len(data) < 5 * 1024 * 1024
    validated = validate_image(io.BytesIO(data), name="animation.png")
    assert (validated.format, validated.width, validated.height) == ("PNG", 32, 32)


@pytest.mark.parametrize(("side", "rle4"), [(2048, False), (1000, True)])
def test_run_length_bmps_of_a_drawing_as_editors_write_them_are_accepted_with_their_pixels(side, rle4):
    drawing = Image.new("L", (side, side), 255)
    ImageDraw.Draw(drawing).ellipse((side * 0.3, side * 0.2, side * 0.7, side * 0.8), outline=0, width=side // 30)
    for row in range(0, side, 64):  # a ruled sheet: a line of grey every few rows
        ImageDraw.Draw(drawing).line((0, row, side, row), fill=136)
    pixels = np.asarray(drawing) // 17 if rle4 else np.asarray(drawing)  # 16 greys in RLE4
    accepted = validate_image(io.BytesIO(_rle_bmp(pixels, rle4=rle4)), name="digit.bmp")
    stored = Image.open(io.BytesIO(accepted.content)).convert("L")
    assert accepted.format == "BMP" and np.array_equal(np.asarray(stored), pixels * (17 if rle4 else 1))


def test_a_stuffed_picture_counts_one_image_of_the_allowance_however_large():
    from classifier.validation import HEADER_PREFIX_BYTES, allowance_weight

    stuffed = _after_jpeg_start(png_bytes(_digit(), "JPEG"), b"\xff" * (HEADER_PREFIX_BYTES + 1000))
    assert allowance_weight([(io.BytesIO(stuffed), "digit.jpg")]) == 1


@pytest.mark.django_db
def test_a_batch_with_a_stuffed_picture_stores_nothing(user, digit_png, django_capture_on_commit_callbacks, published):
    from django.conf import settings

    from classifier import services
    from classifier.models import Prediction, Upload

    stuffed = _after_jpeg_start(png_bytes(_digit(), "JPEG"), b"\xff\xfe\x00\x02" * 5000)
    files = [(io.BytesIO(digit_png(0)), "good.png"), (io.BytesIO(stuffed), "stuffed.jpg")]
    with django_capture_on_commit_callbacks(execute=True), pytest.raises(ValidationError) as info:
        services.predictions_submit(owner=user, files=files, source="file")
    assert "stuffed.jpg" in " ".join(info.value.messages)
    assert Upload.objects.count() == 0 and Prediction.objects.count() == 0
    assert [path for path in settings.MEDIA_ROOT.rglob("*") if path.is_file()] == []
    assert published.prediction_ids() == []
