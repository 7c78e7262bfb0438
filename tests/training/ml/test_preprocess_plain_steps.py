"""Preprocessing's faster steps give every picture, to the last bit, what the plainly written steps give.

The plain steps are kept here as references. With them standing in for the
faster ones, each picture of a varied set (MNIST test digits stored as the
upload store writes them, the shipped samples, canvases, photos, odd modes and
sizes) must get the same model input, bit for bit, the same several-digits
flag, and the same error.
"""

import io
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw, PngImagePlugin
from scipy import ndimage

from training.ml import preprocess
from training.ml.preprocess import EmptyImageError, Prepared, prepare_batch

REPO = Path(__file__).resolve().parents[3]
MNIST_TEST_IMAGES = REPO / "data" / "MNIST" / "raw" / "t10k-images-idx3-ubyte"
SAMPLES = REPO / "media" / "samples"


def _fit_box_plainly(crop):
    h, w = crop.shape
    scale = preprocess.BOX / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    method = Image.Resampling.LANCZOS if scale < 1 else Image.Resampling.BILINEAR
    small = np.asarray(Image.fromarray(crop.astype(np.float32, copy=False)).resize(size, method), dtype=np.float32)
    small = np.clip(small, 0.0, 1.0)
    top = float(small.max())
    return small / top if top > 0 else small


def _centre_by_mass_plainly(small):
    h, w = small.shape
    total = float(small.sum())
    cy = float((small.sum(1) * np.arange(h)).sum()) / total
    cx = float((small.sum(0) * np.arange(w)).sum()) / total
    top = min(max(int(round(preprocess.CENTRE - cy)), 0), preprocess.SIDE - h)
    left = min(max(int(round(preprocess.CENTRE - cx)), 0), preprocess.SIDE - w)
    out = np.zeros((preprocess.SIDE, preprocess.SIDE), dtype=np.float32)
    out[top : top + h, left : left + w] = small
    return out


def _model_inputs_one_by_one(crops, interrupts):
    inputs = []
    for crop in crops:
        try:
            inputs.append(_centre_by_mass_plainly(_fit_box_plainly(np.ascontiguousarray(crop))))
        except interrupts:
            raise
        except Exception as exc:
            inputs.append(exc)
    return inputs


def _digit_masks_plainly(inks):
    mask = inks > preprocess.MASK_LEVEL
    n, h, w = mask.shape
    padded = np.zeros((n, h + 2, w + 2), dtype=np.uint8)
    padded[:, 1:-1, 1:-1] = mask
    support = sum(padded[:, dy : dy + h, dx : dx + w] for dy in range(3) for dx in range(3))
    return mask & (support >= 3)


def _digit_bboxes_one_by_one(masks):
    boxes = []
    for mask in masks:
        try:
            boxes.append(preprocess._digit_bbox(mask))
        except EmptyImageError:
            boxes.append(None)
    return boxes


def _quantiles_by_partition(values, qs, axis=-1):
    n = values.shape[axis]
    results = []
    for q in qs:
        position = q * (n - 1)
        low = int(position)
        high = min(low + 1, n - 1)
        parted = np.partition(values, (low, high), axis=axis)
        below, above = np.take(parted, low, axis=axis), np.take(parted, high, axis=axis)
        weight = position - low
        results.append(below + (above - below) * weight if weight < 0.5 else above - (above - below) * (1 - weight))
    return results


def _ink_maps_plainly(grays):
    n = grays.shape[0]
    dark = preprocess._dark_ink(grays)[:, None, None]
    grays = np.where(dark, np.float32(1.0) - grays, grays)
    background = preprocess._background(grays)
    ink = grays - background
    ink /= np.where(dark, np.maximum(np.float32(1.0) - background, preprocess.MIN_PAPER), np.float32(1.0))
    flat = ink.reshape(n, -1)
    sample = flat[:, :: max(1, flat.shape[1] // 8192)]
    centre = preprocess._quantile(sample, 0.5, axis=1)
    noise = 1.4826 * preprocess._quantile(np.abs(sample - centre[:, None]), 0.5, axis=1)
    ink -= np.maximum(3.0 * noise, 0.02).astype(np.float32)[:, None, None]
    np.clip(ink, 0.0, None, out=ink)
    peak = ink.reshape(n, -1).max(axis=1)
    inked = peak >= preprocess.MIN_CONTRAST
    ink /= np.where(inked, peak, 1.0).astype(np.float32)[:, None, None]
    return ink, inked, dark[:, 0, 0]


PLAIN_STEPS = {
    "_model_inputs": _model_inputs_one_by_one,
    "_centre_by_mass": _centre_by_mass_plainly,
    "_ink_maps": _ink_maps_plainly,
    "_digit_masks": _digit_masks_plainly,
    "_digit_bboxes": _digit_bboxes_one_by_one,
    "_quantiles": _quantiles_by_partition,
    "_grey_opening": lambda grays, size: ndimage.grey_opening(grays, size=(1, size, size)),
    "_pixels": np.asarray,
    # Every picture's EXIF read, as for a photo.
    "_decoded_png_without_orientation": lambda image: False,
}


def _assert_the_plain_steps_give_the_same(make_images, monkeypatch):
    fast = prepare_batch(make_images())
    with monkeypatch.context() as plain:
        for name, step in PLAIN_STEPS.items():
            assert hasattr(preprocess, name), name
            plain.setattr(preprocess, name, step)
        reference = prepare_batch(make_images())
    assert len(fast) == len(reference)
    for index, (got, expected) in enumerate(zip(fast, reference, strict=True)):
        assert type(got) is type(expected), index
        if isinstance(expected, Prepared):
            assert got.pixels.dtype == expected.pixels.dtype == np.float32, index
            # Bit for bit, the sign of a zero included.
            assert got.pixels.tobytes() == expected.pixels.tobytes(), index
            assert got.several_digits is expected.several_digits, index
        else:
            assert str(got) == str(expected), index
    return fast


def _stored(image):
    """``image`` as the upload store keeps it (an 8-bit PNG, written fast) and the worker opens it: from bytes."""
    if image.mode not in ("L", "LA", "RGB", "RGBA"):
        image = image.convert("RGBA" if "A" in image.getbands() or "transparency" in image.info else "RGB")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=1, compress_type=zlib.Z_RLE)
    return buffer.getvalue()


def _opened(data):
    image = Image.open(io.BytesIO(data), formats=["PNG"])
    image.load()
    return image


@pytest.mark.skipif(not MNIST_TEST_IMAGES.exists(), reason="MNIST not fetched")
def test_mnist_test_digits_stored_as_uploads_get_the_same_inputs_from_the_faster_steps(monkeypatch):
    from training.ml.data import load_split

    digits = load_split(MNIST_TEST_IMAGES.parent.parent.parent, split="test").images.numpy()[:1024]
    stored = [_stored(Image.fromarray(digit)) for digit in digits]
    results = []
    for start in range(0, len(stored), 32):  # the worker's batches
        batch = stored[start : start + 32]
        results += _assert_the_plain_steps_give_the_same(lambda batch=batch: (_opened(data) for data in batch),
                                                         monkeypatch)
    # Nearly all are read, a few refused or taken for several: both ways are compared.
    assert sum(isinstance(result, Prepared) for result in results) > 1000


def _samples():
    return sorted(path for path in SAMPLES.glob("*/*") if path.suffix != ".json")


@pytest.mark.skipif(not SAMPLES.exists(), reason="no shipped samples")
def test_the_shipped_samples_get_the_same_inputs_from_the_faster_steps(monkeypatch):
    paths = _samples()
    assert {path.suffix for path in paths} >= {".png", ".jpg", ".webp", ".gif", ".bmp"}
    _assert_the_plain_steps_give_the_same(lambda: (Image.open(path) for path in paths), monkeypatch)
    stored = [_stored(Image.open(path)) for path in paths]
    _assert_the_plain_steps_give_the_same(lambda: (_opened(data) for data in stored), monkeypatch)


def _sheet(size=(400, 400), *, paper=235, ink=30, seed=0, draw=None):
    """A dark "7" on paper with a photo's noise, and whatever ``draw`` adds."""
    image = Image.new("L", size, paper)
    pen = ImageDraw.Draw(image)
    w, h = size
    pen.line([(0.3 * w, 0.15 * h), (0.7 * w, 0.15 * h), (0.5 * w, 0.85 * h)], fill=ink, width=max(1, w // 20))
    if draw:
        draw(pen, w, h)
    noise = np.random.default_rng(seed).normal(0, 2, (h, w))
    return Image.fromarray((np.asarray(image, dtype=np.float64) + noise).clip(0, 255).astype(np.uint8))


def _canvas(*, light):
    """Strokes on a transparent canvas, as a drawing page exports them."""
    image = Image.new("RGBA", (280, 280), (255, 255, 255, 0) if light else (0, 0, 0, 0))
    ink = (255, 255, 255, 255) if light else (20, 20, 20, 255)
    ImageDraw.Draw(image).line([(90, 40), (190, 40), (140, 240)], fill=ink, width=18)
    return image


def _photo(size, *, seed):
    """A phone photo's worth of pixels: colour, noise, light falling off across the sheet."""
    w, h = size
    gray = np.asarray(_sheet((w, h), seed=seed), dtype=np.float64) * np.linspace(0.7, 1.0, w)[None, :]
    rgb = np.stack([gray, gray * 0.97, gray * 0.9], axis=-1)
    return Image.fromarray(rgb.clip(0, 255).astype(np.uint8))


def _jpeg(image):
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    return Image.open(io.BytesIO(buffer.getvalue()))


def _with_orientation(image, *, xmp):
    """A stored PNG stored turned, carrying the orientation that turns it upright (EXIF, or XMP), opened and decoded."""
    buffer = io.BytesIO()
    turned = image.transpose(Image.Transpose.ROTATE_90)
    if xmp:
        info = PngImagePlugin.PngInfo()
        info.add_itxt("XML:com.adobe.xmp", '<x:xmpmeta><rdf:Description tiff:Orientation="6"/></x:xmpmeta>')
        turned.save(buffer, format="PNG", pnginfo=info)
    else:
        exif = Image.Exif()
        exif[0x0112] = 6
        turned.save(buffer, format="PNG", exif=exif)
    return _opened(buffer.getvalue())


def _synthetic():
    """Every kind of picture the faster steps treat apart: modes, sizes each side of the NumPy opening's limit, photos."""
    digit = _sheet((120, 120))
    dark = np.asarray(digit)
    with_nan = (255.0 - dark).astype(np.float32) / 255
    with_nan[5, 5] = np.nan
    pictures = [
        _canvas(light=False),
        _canvas(light=True),
        digit.convert("P"),
        _canvas(light=False).convert("P"),
        Image.fromarray(dark.astype(np.uint16) * 257),
        Image.fromarray(dark.astype(np.int32) * 100),
        Image.fromarray((255.0 - dark).astype(np.float32) / 255),
        Image.fromarray(with_nan),
        digit.convert("1"),
        digit.convert("CMYK"),
        Image.merge("LA", (digit, Image.new("L", digit.size, 255))),
        _jpeg(_photo((2400, 1800), seed=1)),
        _photo((1600, 1200), seed=2),
        _sheet((400, 400), draw=lambda pen, w, h: [pen.line([(0, y), (w, y)], fill=190, width=2)
                                                   for y in range(15, h, 40)]),
        _sheet((400, 400), draw=lambda pen, w, h: pen.rectangle([8, 8, w - 8, h - 8], outline=30, width=8)),
        _sheet((400, 400), draw=lambda pen, w, h: pen.rectangle([0, 0, 55, h], fill=50)),
        _sheet((400, 400), draw=lambda pen, w, h: pen.line([(320, 60), (320, 340)], fill=30, width=20)),
        _with_orientation(_sheet((90, 120)), xmp=False),
        _with_orientation(_sheet((90, 120)), xmp=True),
        Image.new("L", (28, 28), 0),
        Image.new("RGBA", (64, 64), (0, 0, 0, 0)),
    ]
    # Around the largest window the opening takes with NumPy (pictures of about 90 pixels), and too narrow to mirror.
    for size in [(91, 91), (92, 60), (93, 93), (94, 30), (47, 200), (3, 90), (100, 2), (12, 40), (1, 1), (29, 27)]:
        pictures.append(_sheet(size, seed=sum(size)))
    return pictures


def test_canvases_photos_and_every_mode_and_size_get_the_same_inputs_from_the_faster_steps(monkeypatch):
    results = _assert_the_plain_steps_give_the_same(lambda: iter(_synthetic()), monkeypatch)
    assert any(isinstance(result, EmptyImageError) for result in results)
    assert sum(isinstance(result, Prepared) for result in results) > 20
    stored = [_stored(picture) for picture in _synthetic() if picture.mode not in ("I", "F", "I;16")]
    _assert_the_plain_steps_give_the_same(lambda: (_opened(data) for data in stored), monkeypatch)
    # One by one, as a single upload is.
    for picture in _synthetic()[:12]:
        _assert_the_plain_steps_give_the_same(lambda picture=picture: iter([picture]), monkeypatch)


@pytest.mark.parametrize("xmp", [False, True], ids=["exif", "xmp"])
def test_a_decoded_png_carrying_an_orientation_is_still_turned_upright(xmp):
    upright = _sheet((90, 120))
    (turned,) = preprocess.preprocess_batch([_with_orientation(upright, xmp=xmp)])
    np.testing.assert_array_equal(turned, preprocess.preprocess(upright))


@pytest.mark.parametrize("xmp", [False, True], ids=["exif", "xmp"])
def test_a_plain_image_carrying_an_orientation_in_its_info_is_still_turned_upright(xmp):
    upright = _sheet((90, 120))
    decoded = _with_orientation(upright, xmp=xmp)
    # Not a PngImageFile: what a PNG decoded without Image.open is, here with the decoded file's info entries.
    plain = Image.frombytes(decoded.mode, decoded.size, decoded.tobytes())
    plain.info.update(decoded.info)
    (turned,) = preprocess.preprocess_batch([plain])
    np.testing.assert_array_equal(turned, preprocess.preprocess(upright))


@pytest.mark.parametrize("size", range(3, 36))
def test_the_grey_opening_is_scipys_for_every_window(size):
    rng = np.random.default_rng(size)
    for shape in [(4, 28, 28), (2, 31, 17), (3, size // 2, 40), (1, 90, size // 2 + 1), (2, 5, 5), (1, 64, 200)]:
        for grays in (rng.random(shape, dtype=np.float32), np.round(rng.random(shape, dtype=np.float32) * 3) / 3):
            expected = ndimage.grey_opening(grays, size=(1, size, size))
            opened = preprocess._grey_opening(grays, size)
            assert opened.dtype == expected.dtype and opened.tobytes() == expected.tobytes(), (size, shape)


@pytest.mark.parametrize("qs", [(0.5,), (0.001, 0.999), (0.0, 0.25, 1.0), (0.99,)])
def test_quantiles_from_one_sort_match_numpy_to_the_last_bit_with_many_equal_values(qs):
    rng = np.random.default_rng(len(qs))
    # Mostly black, as MNIST's digits are.
    values = np.where(rng.random((32, 784)) < 0.8, 0.0, rng.random((32, 784))).astype(np.float32)
    for axis, data in ((1, values), (-1, values[0])):
        for q, quantile in zip(qs, preprocess._quantiles(data, qs, axis=axis), strict=True):
            np.testing.assert_array_equal(quantile, np.quantile(data, q, axis=axis))



def _crops(seed):
    """Digits' crops of their ink as the model's inputs are made from: every size, odd values, and symmetric ones."""
    rng = np.random.default_rng(seed)
    crops = []
    for _ in range(400):
        h, w = (int(side) for side in rng.integers(1, 45, size=2))
        crop = np.where(rng.random((h, w)) < 0.6, 0.0, rng.random((h, w))).astype(np.float32)
        kind = rng.integers(6)
        if kind == 1:
            # Symmetric ink puts the centre of mass on a half pixel, where float32 sums decide the rounding.
            crop = crop + crop[::-1] + crop[:, ::-1] + crop[::-1, ::-1]
        elif kind == 2:
            crop[rng.random((h, w)) < 0.3] = -0.0
        elif kind == 3:
            # Above the peak of 1, as a ruled line's level can leave a stroke crossing it.
            crop *= np.float32(3.0)
        elif kind == 4:
            crop[:] = 0.0
        elif kind == 5:
            # A bar of even ink, its middle on a half pixel, in a box of each parity.
            crop[:] = 0.0
            crop[int(rng.integers(h)) :, int(rng.integers(w)) :] = np.float32(rng.random())
        crops.append(crop)
    # As the batch step meets them: views of a larger picture.
    return [np.pad(crop, 2)[2:-2, 2:-2] for crop in crops]


@pytest.mark.parametrize("seed", range(5))
def test_the_model_inputs_made_for_a_whole_batch_are_the_plain_steps_ones_to_the_last_bit(seed):
    crops = _crops(seed)
    inputs = preprocess._model_inputs(crops, ())
    expected = _model_inputs_one_by_one(crops, ())
    for index, (got, want) in enumerate(zip(inputs, expected, strict=True)):
        assert type(got) is type(want), index
        if isinstance(want, Exception):
            assert str(got) == str(want), index
        else:
            assert got.shape == want.shape and got.dtype == want.dtype == np.float32, index
            assert got.tobytes() == want.tobytes(), index


@pytest.mark.parametrize("mode", ["L", "F"])
def test_the_pixels_read_from_the_encoder_are_numpys_for_every_size(mode):
    rng = np.random.default_rng(len(mode))
    # Up to and past the largest picture that comes out in one block (ImageFile.MAXBLOCK bytes), and empty ones.
    for size in [(1, 1), (28, 28), (3, 90), (256, 256), (128, 128), (129, 128), (256, 257), (700, 500), (0, 5)]:
        values = rng.random(size[::-1]) * (255 if mode == "L" else 1)
        picture = Image.fromarray(values.astype(np.uint8 if mode == "L" else np.float32))
        assert picture.mode == mode
        for image in (picture, Image.open(io.BytesIO(_stored(picture))) if mode == "L" and 0 not in size else picture):
            expected = np.asarray(image)
            pixels = preprocess._pixels(image)
            assert pixels.dtype == expected.dtype and pixels.shape == expected.shape, size
            assert pixels.tobytes() == expected.tobytes(), size
