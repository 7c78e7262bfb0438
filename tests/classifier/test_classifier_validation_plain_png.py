"""Validating a PNG that holds its pixels alone gives what decoding it with Image.open gives: the same acceptance,
the same stored content and size, the same refusal."""
import dataclasses
import io
import struct
import zlib

import numpy as np
import pytest
from django.core.exceptions import ValidationError
from PIL import Image

from classifier import validation
from tests.classifier.fixtures import png_bytes
from tests.classifier.test_classifier_png import _chunk, _encoded, _interlaced, _random_pixels


def _outcome(data: bytes):
    try:
        return dataclasses.asdict(validation.validate_image(io.BytesIO(data), name="digit.png"))
    except ValidationError as exc:
        return exc.code, exc.messages


def _outcome_through_pillow(data: bytes, monkeypatch):
    with monkeypatch.context() as patched:
        patched.setattr(validation, "_plain_png", lambda data: None)
        return _outcome(data)


def _assert_validated_as_through_pillow(data: bytes, monkeypatch, *, plain: bool):
    assert (validation._plain_png(data) is not None) is plain
    assert _outcome(data) == _outcome_through_pillow(data, monkeypatch)


def test_plain_pngs_of_mnist_digits_are_accepted_as_through_pillow(mnist_test_split, monkeypatch):
    images = mnist_test_split.images[:500].numpy()
    for index, pixels in enumerate(images):
        image = Image.fromarray(pixels if index % 2 else 255 - pixels)
        data = png_bytes(image, compress_level=index % 10)
        _assert_validated_as_through_pillow(data, monkeypatch, plain=True)
        assert _outcome(data)["content"] == data


@pytest.mark.parametrize("mode", ["L", "RGB", "LA", "RGBA"])
def test_plain_pngs_of_every_mode_size_and_filter_are_accepted_or_refused_as_through_pillow(mode, monkeypatch):
    rng = np.random.default_rng(11 + sum(map(ord, mode)))
    outcomes = set()
    for index in range(40):
        width, height = (int(side) for side in rng.integers(1, 200, 2))
        pixels = _random_pixels(rng, mode, width, height)
        cuts = [int(cut) for cut in rng.integers(0, width * height, rng.integers(0, 4))]
        data = _encoded(pixels, filters=rng.integers(0, 5, height), level=index % 10, cuts=cuts)
        _assert_validated_as_through_pillow(data, monkeypatch, plain=True)
        outcomes.add(isinstance(_outcome(data), dict))
    assert outcomes == {True, False}  # blank pictures among them, refused


def test_plain_pngs_over_a_limit_are_refused_as_through_pillow(monkeypatch, settings):
    stripes = np.tile(np.arange(0, 256, 16, dtype=np.uint8), (8, 2))
    wide = png_bytes(Image.fromarray(np.tile(stripes, (1, 80))[:, : validation.STORED_MAX_SIDE + 1]))
    _assert_validated_as_through_pillow(wide, monkeypatch, plain=False)
    assert _outcome(wide)["content"] != wide  # reduced, then stored afresh
    settings.UPLOAD_MAX_PIXELS = 28 * 28 - 1
    digit = png_bytes(Image.fromarray(stripes).resize((28, 28)))
    _assert_validated_as_through_pillow(digit, monkeypatch, plain=False)
    assert _outcome(digit)[0] == "too_many_pixels"


def test_other_pngs_take_the_steps_they_took_with_the_same_outcome(mnist_test_split, monkeypatch):
    digit = mnist_test_split.images[7].numpy()
    data = png_bytes(Image.fromarray(255 - digit))
    end = data.index(b"IEND") - 4
    small_chunks = data[:33] + b"".join(_chunk(b"IDAT", data[at : at + 1]) for at in range(33, 33 + 5000)) + data[end:]
    cases = {
        "text": data[:33] + _chunk(b"tEXt", b"Comment\0hi") + data[33:],
        "bytes after the end": data + b"\0",
        "bad CRC": data[:29] + bytes([data[29] ^ 1]) + data[30:],
        "cut": data[:-20],
        "16 bits": png_bytes(Image.fromarray(digit.astype(np.uint16) * 257)),
        "palette": png_bytes(Image.fromarray(digit).convert("P")),
        "interlaced": _interlaced(data),
        "turned by EXIF": png_bytes(Image.fromarray(digit), exif=_turned()),
        "many small chunks": small_chunks,
        "blank with a gamma": png_bytes(Image.new("L", (28, 28), 200))[:33] + _chunk(b"gAMA", struct.pack(">I", 45455))
        + png_bytes(Image.new("L", (28, 28), 200))[33:],
        "corrupt": data[:45] + b"\xff" * 8 + data[53:],
        "a bad filter type": data[:8] + _chunk(b"IHDR", struct.pack(">IIBBBBB", 2, 1, 8, 0, 0, 0, 0))
        + _chunk(b"IDAT", zlib.compress(b"\x09ab")) + _chunk(b"IEND", b""),
    }
    for name, case in cases.items():
        assert validation._plain_png(case) is None, name
        assert _outcome(case) == _outcome_through_pillow(case, monkeypatch), name


def _turned() -> Image.Exif:
    exif = Image.Exif()
    exif[0x0112] = 6
    return exif
