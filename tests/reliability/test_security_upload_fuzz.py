"""Random and mutated bytes, names and sizes against the upload validator: only its own rejections, never a hang."""
import contextlib
import io
import signal
import time
from collections import Counter

import numpy as np
import pytest
from django.core.exceptions import ValidationError
from hypothesis import HealthCheck, given, settings as hsettings, strategies as st
from PIL import Image

from classifier.validation import ValidatedImage, validate_image

SECONDS_PER_INPUT = 5
FORMATS = {"PNG": {}, "JPEG": {"quality": 90}, "GIF": {}, "BMP": {}, "WEBP": {"quality": 80}}


def _seeds() -> dict[str, bytes]:
    # A dark stroke on white: a real, acceptable picture in every allowed format.
    pixels = np.full((40, 40), 255, dtype=np.uint8)
    pixels[8:32, 18:23] = 0
    pixels[8:12, 12:23] = 0
    image = Image.fromarray(pixels)
    seeds = {}
    for fmt, options in FORMATS.items():
        out = io.BytesIO()
        (image.convert("RGB") if fmt == "JPEG" else image).save(out, format=fmt, **options)
        seeds[fmt] = out.getvalue()
    return seeds


SEEDS = _seeds()
HEADERS = [data[:16] for data in SEEDS.values()]


@st.composite
def mutated_files(draw) -> bytes:
    data = bytearray(SEEDS[draw(st.sampled_from(sorted(SEEDS)))])
    for _ in range(draw(st.integers(0, 4))):
        kind = draw(st.sampled_from(["flip", "truncate", "insert", "header", "overwrite"]))
        position = draw(st.integers(0, max(len(data) - 1, 0)))
        if kind == "flip" and data:
            data[position] ^= 1 << draw(st.integers(0, 7))
        elif kind == "truncate":
            del data[position:]
        elif kind == "insert":
            data[position:position] = draw(st.binary(min_size=1, max_size=64))
        elif kind == "header":
            # Another format's magic bytes on this body.
            header = draw(st.sampled_from(HEADERS))
            data[: len(header)] = header
        elif kind == "overwrite":
            # Large values where sizes live (dimensions, chunk lengths) hit the riskiest code.
            chunk = draw(st.sampled_from([b"\xff\xff\xff\xff", b"\x00\x00\x00\x00", b"\x7f\xff", b"\xff" * 8]))
            data[position:position + len(chunk)] = chunk
    return bytes(data)


files = st.one_of(mutated_files(), st.binary(max_size=2048))
names = st.one_of(
    st.none(),
    st.text(max_size=300),
    st.sampled_from(["digit.png", "x.jpg", "a.gif", "b.webp", "c.bmp", "../../etc/passwd.png", "noext", "z.svg"]),
)


class TookTooLong(Exception):
    pass


def _alarm(signum, frame):
    raise TookTooLong(f"the validator ran for more than {SECONDS_PER_INPUT}s on one input")


@pytest.fixture
def small_pixel_limit(settings):
    # A mutated header may declare millions of pixels; keep each decode cheap but still realistic.
    settings.UPLOAD_MAX_PIXELS = 4_000_000
    settings.UPLOAD_MAX_BYTES = 1_000_000


@contextlib.contextmanager
def _time_limit(seconds: float):
    """SIGALRM after ``seconds``; the alarm pending before (pytest-timeout's guard) is put back after."""
    previous_handler = signal.signal(signal.SIGALRM, _alarm)
    started = time.monotonic()
    previous_delay, _ = signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous_handler)
        if previous_delay:
            signal.setitimer(signal.ITIMER_REAL, max(previous_delay - (time.monotonic() - started), 0.001))


@hsettings(max_examples=600, deadline=None, database=None, derandomize=True,
           suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(data=files, name=names, declared_size=st.one_of(st.none(), st.integers(0, 10**9)))
def _fuzz_the_validator(tried: Counter, data: bytes, name: str, declared_size: int | None) -> None:
    upload = io.BytesIO(data)
    if declared_size is not None:
        upload.size = declared_size  # what a multipart parser claims; the validator must not trust it alone
    with _time_limit(SECONDS_PER_INPUT):
        try:
            result = validate_image(upload, name=name)
        except ValidationError as exc:
            tried["rejected"] += 1
            assert exc.code in {"not_image", "truncated", "too_many_pixels", "empty", "blank",
                                "too_large", "bloated"}, exc.code
        else:
            tried["accepted"] += 1
            assert isinstance(result, ValidatedImage)
            assert result.content.startswith(b"\x89PNG\r\n\x1a\n") and len(result.original_name) <= 255
            assert "/" not in result.original_name and "\\" not in result.original_name


def test_the_validator_answers_hundreds_of_random_and_mutated_files_with_its_own_errors_only(small_pixel_limit):
    tried: Counter = Counter()
    _fuzz_the_validator(tried)
    print(f"\nupload validator fuzzing: {dict(tried)}")
    # Not vacuous: hundreds of inputs, some accepted and some rejected.
    assert tried["accepted"] + tried["rejected"] >= 600
    assert tried["accepted"] > 0 and tried["rejected"] > 0
