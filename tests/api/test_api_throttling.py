"""Per-user upload throttling counts images (a large one as several), answers 429 with Retry-After and spares other users.

Every test runs against the local-memory cache and against Redis (one atomic
script instead of a read and a write).
"""
from __future__ import annotations

import os
import threading
import time

import pytest
from django.core.cache import cache
from PIL import Image

from classifier.throttling import TOLERANCE_S, allowance_take
from classifier.models import Prediction, Upload
from tests.api.conftest import upload_file
from tests.caches import UNREACHABLE_REDIS_CACHE, cache_backend
from tests.classifier.fixtures import png_bytes

pytestmark = pytest.mark.django_db

LIST = "/api/v1/predictions/"


_KEY_PREFIX = f"throttling-test-{os.getpid()}"


# These replace the suite's clearing of the whole cache: throttle_cache clears only this module's keys.
@pytest.fixture(autouse=True)
def fresh_cache():
    yield


@pytest.fixture(autouse=True)
def clear_throttle_history():
    yield


@pytest.fixture(autouse=True, params=["locmem", "redis"])
def throttle_cache(request, settings):
    with cache_backend(request.param, settings, key_prefix=_KEY_PREFIX):
        yield request.param


def _stored_number(key: str, backend: str) -> float:
    if backend == "locmem":
        return cache.get(key)
    # The Redis script stores the number as text, which Django's Redis serializer does not read back.
    full_key = cache.make_and_validate_key(key)
    return float(cache._cache.get_client(full_key).get(full_key))


@pytest.fixture
def clock(monkeypatch):
    """The throttle's clock, moved only by the test: however slow a request, a short period does not run out."""

    class Clock:
        now = time.time()

        def time(self) -> float:
            return self.now

    stopped = Clock()
    monkeypatch.setattr("classifier.throttling.time", stopped)
    return stopped


@pytest.fixture
def three_uploads_a_minute(settings):
    settings.UPLOAD_THROTTLE_RATE = "3/minute"


def test_uploads_beyond_the_rate_are_429_with_retry_after(user_client, three_uploads_a_minute):
    statuses = [user_client.post(LIST, {"image": upload_file()}, format="multipart").status_code for _ in range(4)]

    assert statuses == [202, 202, 202, 429]
    response = user_client.post(LIST, {"image": upload_file()}, format="multipart")
    assert response.json()["error"]["code"] == "throttled"
    assert 0 < int(response["Retry-After"]) <= 60
    assert Upload.objects.count() == 3


def test_every_image_of_a_request_counts(user_client, three_uploads_a_minute):
    first = user_client.post(LIST, {"images": [upload_file(), upload_file()]}, format="multipart")
    second = user_client.post(LIST, {"images": [upload_file(), upload_file()]}, format="multipart")
    third = user_client.post(LIST, {"image": upload_file()}, format="multipart")

    assert (first.status_code, second.status_code, third.status_code) == (202, 429, 202)


def test_a_request_without_images_still_spends_one_image_of_the_allowance(user_client, three_uploads_a_minute):
    empty = [user_client.post(LIST, {}, format="multipart") for _ in range(3)]
    after = user_client.post(LIST, {"image": upload_file()}, format="multipart")

    assert [response.status_code for response in empty] == [400, 400, 400]
    assert after.status_code == 429
    assert Upload.objects.count() == 0


def _allowance_headers(response) -> tuple[str | None, str | None, str | None]:
    return response.get("RateLimit-Limit"), response.get("RateLimit-Remaining"), response.get("RateLimit-Reset")


def test_every_upload_answer_says_what_is_left_of_the_allowance_and_when_it_is_whole_again(
    user_client, three_uploads_a_minute, clock
):
    one = user_client.post(LIST, {"image": upload_file()}, format="multipart")
    clock.now += 5
    two = user_client.post(LIST, {"images": [upload_file(), upload_file()]}, format="multipart")
    refused = user_client.post(LIST, {"image": upload_file()}, format="multipart")

    assert (one.status_code, two.status_code, refused.status_code) == (202, 202, 429)
    # An image refills in 20 s: after the first, two are left and the third comes back in 20 s.
    assert _allowance_headers(one) == ("3", "2", "20")
    # Five seconds later a quarter of that image is back, not a whole one: none left, whole in 55 s.
    assert _allowance_headers(two) == ("3", "0", "55")
    # Refused, it spent nothing: still none left and whole in 55 s, and one image is back in 15.
    assert _allowance_headers(refused) == ("3", "0", "55") and refused["Retry-After"] == "15"


def test_a_refused_upload_says_how_many_images_could_still_go_at_once(user_client, settings, clock):
    settings.UPLOAD_THROTTLE_RATE = "10/minute"
    sent = user_client.post(LIST, {"images": [upload_file() for _ in range(8)]}, format="multipart")
    refused = user_client.post(LIST, {"images": [upload_file() for _ in range(3)]}, format="multipart")
    fewer = user_client.post(LIST, {"images": [upload_file() for _ in range(2)]}, format="multipart")

    assert (sent.status_code, refused.status_code, fewer.status_code) == (202, 429, 202)
    assert _allowance_headers(refused) == ("10", "2", "48")
    assert _allowance_headers(fewer) == ("10", "0", "60")


def test_the_images_left_are_not_undercounted_when_an_images_share_of_the_period_is_not_exact_in_binary(
    user_client, settings, clock
):
    # A fifth of a second added to today's clock rounds up (the clock's last bit is 2**-22 s until 2038): the
    # allowance then seems whole in a hair over 0.2 s, and four images left would come to 3.99999976.
    settings.UPLOAD_THROTTLE_RATE = "5/second"

    one = user_client.post(LIST, {"image": upload_file()}, format="multipart")

    assert one.status_code == 202
    assert one["RateLimit-Remaining"] == "4"


def test_a_retry_answer_says_what_is_left_of_the_allowance_it_spent(user_client, user, three_uploads_a_minute, clock):
    from classifier import services

    upload = services.upload_create(owner=user, file=upload_file(), source="api")
    (prediction,) = services.predictions_create(uploads=[upload], publish=False)
    Prediction.objects.filter(pk=prediction.pk).update(status=Prediction.Status.FAILED, error="the worker failed")

    response = user_client.post(f"{LIST}{prediction.pk}/retry/")

    assert response.status_code == 201 and _allowance_headers(response) == ("3", "2", "20")


def test_the_schema_declares_the_allowance_headers_and_retry_after_on_the_answers_that_carry_them(
    user_client, api_client, user, settings
):
    settings.UPLOAD_THROTTLE_RATE = "2/minute"
    paths = api_client.get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json").json()["paths"]
    upload = user_client.post(LIST, {"image": upload_file()}, format="multipart")
    refused = user_client.post(LIST, {"images": [upload_file(), upload_file()]}, format="multipart")
    failed = Prediction.objects.get()
    Prediction.objects.filter(pk=failed.pk).update(status=Prediction.Status.FAILED)
    retried = user_client.post(f"{LIST}{failed.pk}/retry/")

    sent = [("/api/v1/predictions/", upload), ("/api/v1/predictions/", refused),
            ("/api/v1/predictions/{prediction_id}/retry/", retried)]
    assert [response.status_code for _, response in sent] == [202, 429, 201]
    for path, response in sent:
        declared = paths[path]["post"]["responses"][str(response.status_code)].get("headers", {})
        carried = {name for name in ("RateLimit-Limit", "RateLimit-Remaining", "RateLimit-Reset", "Retry-After")
                   if name in response}
        assert carried and carried <= set(declared), (path, response.status_code)
        assert all(declared[name]["schema"]["type"] == "integer" for name in carried)


def test_unthrottled_uploads_carry_no_allowance_headers(user_client, settings):
    settings.UPLOAD_THROTTLE_RATE = ""

    response = user_client.post(LIST, {"image": upload_file()}, format="multipart")

    assert response.status_code == 202 and _allowance_headers(response) == (None, None, None)


def test_an_upload_refused_for_its_wait_parameter_spends_none_of_the_allowance(user_client, three_uploads_a_minute):
    refused = [user_client.post(f"{LIST}?wait=soon", {"image": upload_file()}, format="multipart") for _ in range(3)]
    accepted = user_client.post(LIST, {"images": [upload_file(), upload_file(), upload_file()]}, format="multipart")

    assert [response.status_code for response in refused] == [400, 400, 400]
    assert refused[0].json()["error"]["field"] == "wait"
    assert accepted.status_code == 202


def _picture(width: int, height: int, fmt: str = "PNG") -> bytes:
    picture = Image.new("L", (width, height), 255)
    picture.paste(0, (width // 2 - 20, height // 4, width // 2 + 20, 3 * height // 4))
    return png_bytes(picture, fmt)


def test_a_large_picture_counts_one_image_for_each_million_pixels_it_has(user_client, settings):
    settings.UPLOAD_THROTTLE_RATE = "10/minute"
    four_megapixels = upload_file(_picture(2000, 2000), name="scan.png")

    first = user_client.post(LIST, {"image": four_megapixels}, format="multipart")
    four_megapixels.seek(0)
    second = user_client.post(LIST, {"image": four_megapixels}, format="multipart")
    four_megapixels.seek(0)
    third = user_client.post(LIST, {"image": four_megapixels}, format="multipart")

    assert (first.status_code, second.status_code, third.status_code) == (202, 202, 429)
    # Two of the ten are left: two small pictures still go through.
    assert user_client.post(LIST, {"images": [upload_file(), upload_file()]}, format="multipart").status_code == 202


def test_a_picture_larger_than_the_whole_allowance_is_refused_saying_what_it_counts_as(user_client, settings):
    settings.UPLOAD_THROTTLE_RATE = "10/minute"

    response = user_client.post(LIST, {"image": upload_file(_picture(4000, 3000), name="scan.png")}, format="multipart")

    assert response.status_code == 400
    assert response.json()["error"]["code"] == "too_many_files"
    assert "these count as 12" in response.json()["error"]["message"]
    # A phone's JPEG of that size is decoded at half scale, and counts as what is decoded.
    jpeg = upload_file(_picture(4000, 3000, "JPEG"), name="photo.jpg", content_type="image/jpeg")
    assert user_client.post(LIST, {"image": jpeg}, format="multipart").status_code == 202
    assert Upload.objects.count() == 1


def test_one_users_uploads_do_not_throttle_another(user_client, other_client, three_uploads_a_minute):
    assert user_client.post(LIST, {"images": [upload_file() for _ in range(3)]}, format="multipart").status_code == 202

    assert user_client.post(LIST, {"image": upload_file()}, format="multipart").status_code == 429
    assert other_client.post(LIST, {"image": upload_file()}, format="multipart").status_code == 202


def test_reading_is_not_throttled(user_client, three_uploads_a_minute):
    assert all(user_client.get(LIST).status_code == 200 for _ in range(5))


def test_the_throttle_keeps_one_number_per_user_however_many_images_were_sent(
    user, user_client, settings, throttle_cache, clock
):
    settings.UPLOAD_THROTTLE_RATE = "600/minute"
    for _ in range(3):
        assert user_client.post(LIST, {"images": [upload_file() for _ in range(4)]}, format="multipart").status_code == 202

    # Twelve images used a fiftieth of the allowance: it is whole again in 1.2 s, not in a minute.
    assert _stored_number(f"throttle_uploads_{user.pk}", throttle_cache) - clock.now == pytest.approx(1.2, abs=1e-3)


def test_the_allowance_refills_continuously_at_the_rate():
    # The clock is passed in, so a slow machine cannot blur the half-period; a period of 100 s keeps the keys alive.
    def take(now: float) -> float:
        return allowance_take(key="throttle_refill", now=now, cost=50.0, period=100.0)

    start = time.time()
    assert take(start) <= TOLERANCE_S and take(start) <= TOLERANCE_S  # two of two
    assert take(start) == pytest.approx(50.0)  # refused: half a period to wait
    # Half the period later one image's worth is back, not the whole allowance.
    assert take(start + 50.0) <= TOLERANCE_S
    assert take(start + 50.0) == pytest.approx(50.0)


def test_an_upload_refused_by_the_rate_is_allowed_again_once_its_share_has_refilled(user_client, settings, clock):
    settings.UPLOAD_THROTTLE_RATE = "2/second"
    assert user_client.post(LIST, {"images": [upload_file() for _ in range(2)]}, format="multipart").status_code == 202
    assert user_client.post(LIST, {"image": upload_file()}, format="multipart").status_code == 429
    clock.now += 0.6
    assert user_client.post(LIST, {"image": upload_file()}, format="multipart").status_code == 202


def test_concurrent_requests_in_redis_never_spend_more_than_the_allowance(throttle_cache):
    if throttle_cache != "redis":
        pytest.skip("only the Redis script is atomic; the local-memory cache lives in one process anyway")
    allowed = []
    start = threading.Barrier(16)
    # One moment for all: a clock read per call would refill the allowance if the calls took over a second.
    now = time.time()

    def spend() -> None:
        start.wait()
        for _ in range(5):
            # Ten seconds of allowance, one second a request: exactly ten fit, whoever comes first.
            if allowance_take(key="throttle_race", now=now, cost=1.0, period=10.0) <= TOLERANCE_S:
                allowed.append(1)

    threads = [threading.Thread(target=spend) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert len(allowed) == 10


def test_a_request_with_more_images_than_a_whole_periods_allowance_is_400_not_a_429_that_never_ends(
    user_client, three_uploads_a_minute
):
    response = user_client.post(LIST, {"images": [upload_file() for _ in range(4)]}, format="multipart")
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "too_many_files" and "At most 3 images per upload" in response.content.decode()
    assert not Upload.objects.exists()
    # The allowance is untouched: the same images in requests the rate allows go through.
    assert user_client.post(LIST, {"images": [upload_file() for _ in range(3)]}, format="multipart").status_code == 202


def test_uploads_go_on_unthrottled_while_the_cache_is_unreachable(user_client, settings, throttle_cache):
    if throttle_cache != "redis":
        pytest.skip("the local-memory cache cannot become unreachable")
    from django.test import override_settings

    settings.UPLOAD_THROTTLE_RATE = "3/minute"
    unreachable = UNREACHABLE_REDIS_CACHE
    with override_settings(CACHES={"default": unreachable}):
        statuses = [user_client.post(LIST, {"image": upload_file()}, format="multipart").status_code for _ in range(4)]
    assert statuses == [202] * 4
    assert Upload.objects.count() == 4


def test_the_allowance_still_counts_after_redis_forgets_its_scripts(throttle_cache):
    # The script is sent by its hash; a restarted or flushed Redis no longer knows it, and must be sent it again.
    if throttle_cache != "redis":
        pytest.skip("only the Redis cache runs a script")
    now = time.time()
    assert allowance_take(key="throttle_flushed", now=now, cost=5.0, period=10.0) <= TOLERANCE_S
    cache._cache.get_client(write=True).script_flush()
    assert allowance_take(key="throttle_flushed", now=now, cost=5.0, period=10.0) <= TOLERANCE_S
    assert allowance_take(key="throttle_flushed", now=now, cost=5.0, period=10.0) == pytest.approx(5.0)
