"""Fixtures for the API tests: authenticated clients, digit images and predictions in known states."""
from __future__ import annotations

import io
from pathlib import Path

import pytest
from django.conf import settings
from django.core.cache import cache
from PIL import Image, ImageDraw
from rest_framework.test import APIClient

from classifier import services as classifier_services
from classifier.models import Prediction, Upload
from accounts.services import api_token_create
from tests.training.conftest import make_checkpoint  # noqa: F401


def seven_png(*, size: int = 64, fmt: str = "PNG") -> bytes:
    """A white "7" on black, roughly as people draw it."""
    image = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(image)
    s = size / 64
    draw.line([(16 * s, 14 * s), (48 * s, 14 * s), (28 * s, 52 * s)], fill=255, width=int(6 * s))
    out = io.BytesIO()
    image.save(out, format=fmt)
    return out.getvalue()


def upload_file(data: bytes | None = None, *, name: str = "digit.png", content_type: str = "image/png"):
    from django.core.files.uploadedfile import SimpleUploadedFile

    return SimpleUploadedFile(name, seven_png() if data is None else data, content_type=content_type)


def stored_files() -> list[Path]:
    return sorted(path for path in Path(settings.MEDIA_ROOT).rglob("*") if path.is_file())


def assert_envelope(body: dict) -> dict:
    """``body``'s error, once it is checked to be the API's envelope."""
    assert set(body) == {"error"}
    error = body["error"]
    assert set(error) == {"code", "message", "field", "details", "request_id"}
    # The request's X-Request-ID, which every log line of it names.
    assert isinstance(error["request_id"], str) and error["request_id"]
    assert isinstance(error["code"], str) and isinstance(error["message"], str) and error["message"]
    assert error["details"][0] == {key: error[key] for key in ("code", "message", "field")}
    return error


@pytest.fixture(autouse=True)
def clear_throttle_history():
    # Throttle counters live in the cache, which outlives a single test.
    cache.clear()
    yield
    cache.clear()


@pytest.fixture
def api_client() -> APIClient:
    return APIClient()


def client_for(user) -> APIClient:
    client = APIClient()
    _, key = api_token_create(user=user)
    client.credentials(HTTP_AUTHORIZATION=f"Token {key}")
    return client


@pytest.fixture
def user_client(user) -> APIClient:
    return client_for(user)


@pytest.fixture
def other_client(other_user) -> APIClient:
    return client_for(other_user)


@pytest.fixture
def staff_client(staff_user) -> APIClient:
    return client_for(staff_user)


@pytest.fixture
def make_prediction(db):
    """A stored upload with one prediction, optionally already done (as a worker would leave it)."""

    def make(*, owner, done: bool = False, digit: int = 7, confidence: float = 0.9) -> Prediction:
        upload = classifier_services.upload_create(
            owner=owner, file=io.BytesIO(seven_png()), name="digit.png", source=Upload.Source.API
        )
        prediction = Prediction.objects.create(upload=upload)
        if done:
            rest = (1 - confidence) / 9
            # Only the result's fields, as a worker writes them: a whole-row save would write created_at back as
            # Python prints it, which SQLite (timestamps as text) sorts after the database's own default of the same
            # millisecond, making a re-run made in that millisecond look older than this one.
            Prediction.objects.filter(pk=prediction.pk).update(
                status=Prediction.Status.DONE,
                digit=digit,
                confidence=confidence,
                probabilities=[confidence if d == digit else rest for d in range(10)],
                queue_ms=12.5,
                compute_ms=3.0,
                input_pixels=Image.open(io.BytesIO(seven_png(size=28))).convert("L").tobytes(),
            )
            prediction.refresh_from_db()
        return prediction

    return make
