"""Uploads sent with an Idempotency-Key: a repeat stores and spends nothing and answers with the first's predictions."""
from __future__ import annotations

import contextlib
import datetime as dt
import threading
import time

import pytest
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from accounts.services import account_delete, api_token_create
from classifier import services as classifier_services
from classifier.models import IdempotencyKey, Prediction, StorageUse, Upload
from tests.api.conftest import client_for, seven_png, stored_files, upload_file
from tests.caches import UNREACHABLE_REDIS_CACHE

pytestmark = pytest.mark.django_db

LIST = "/api/v1/predictions/"
REPLAYED = "Idempotent-Replayed"


def _send(client, files: dict | None = None, *, key: str | None, query: str = ""):
    extra = {} if key is None else {"HTTP_IDEMPOTENCY_KEY": key}
    return client.post(f"{LIST}{query}", files or {"image": upload_file()}, format="multipart", **extra)


def _ids(response) -> list[int]:
    return [item["id"] for item in response.json()["predictions"]]


@pytest.fixture
def two_images_an_hour(settings):
    # Slow enough that nothing is given back by the clock while a test runs.
    settings.UPLOAD_THROTTLE_RATE = "2/hour"


def test_an_upload_sent_again_with_its_key_stores_and_spends_nothing_and_answers_with_the_same_predictions(
    user_client, two_images_an_hour
):
    first = _send(user_client, key="order-41")
    again = _send(user_client, key="order-41")

    assert first.status_code == 202 and again.status_code == 202, again.json()
    assert _ids(again) == _ids(first)
    assert again[REPLAYED] == "true" and REPLAYED not in first
    # Nothing was spent, so no allowance is reported.
    assert "RateLimit-Remaining" not in again and first["RateLimit-Remaining"] == "1"
    assert Upload.objects.count() == 1 and len(stored_files()) == 1
    # The repeat spent none of the allowance: one image of two is still there.
    assert _send(user_client, key=None).status_code == 202
    assert _send(user_client, key=None).status_code == 429


def test_a_repeat_of_several_images_answers_with_their_predictions_in_the_order_they_were_sent(user_client):
    files = {"images": [upload_file(seven_png(size=size), name=f"{size}.png") for size in (64, 40, 96)]}
    first = _send(user_client, files, key="batch")
    files = {"images": [upload_file(seven_png(size=size), name=f"{size}.png") for size in (64, 40, 96)]}
    again = _send(user_client, files, key="batch")

    assert again.status_code == 202 and again[REPLAYED] == "true"
    assert _ids(again) == _ids(first)
    assert [item["original_name"] for item in again.json()["predictions"]] == ["64.png", "40.png", "96.png"]
    assert Upload.objects.count() == 3
    assert IdempotencyKey.objects.get().prediction_ids == _ids(first)


def test_a_repeat_answers_with_the_predictions_as_they_are_now_and_200_once_they_are_finished(user_client):
    first = _send(user_client, key="k")
    Prediction.objects.filter(pk__in=_ids(first)).update(
        status=Prediction.Status.DONE, digit=7, confidence=0.9, finished_at=timezone.now()
    )

    again = _send(user_client, key="k")

    assert again.status_code == 200 and again[REPLAYED] == "true"
    (item,) = again.json()["predictions"]
    assert (item["status"], item["digit"]) == ("done", 7)


@pytest.mark.django_db(transaction=True)
def test_a_repeat_with_wait_waits_for_the_first_requests_predictions_like_the_first_would(user, active_checkpoint):
    client = client_for(user)
    first = _send(client, key="k")
    assert first.status_code == 202
    (prediction_id,) = _ids(first)

    def worker() -> None:
        try:
            time.sleep(0.5)
            classifier_services.predictions_execute(prediction_ids=[prediction_id])
        finally:
            connection.close()

    thread = threading.Thread(target=worker)
    thread.start()
    try:
        again = _send(client, key="k", query="?wait=20")
    finally:
        thread.join()

    assert again.status_code == 200, again.json()
    assert again[REPLAYED] == "true" and _ids(again) == [prediction_id]
    assert again.json()["predictions"][0]["status"] == "done"
    assert Upload.objects.count() == 1


@pytest.mark.parametrize(
    "other",
    [
        pytest.param({"image": upload_file(seven_png(size=40))}, id="other-bytes"),
        pytest.param({"image": upload_file(name="renamed.png")}, id="other-name"),
        pytest.param({"images": upload_file()}, id="other-field"),
        pytest.param({"images": [upload_file(), upload_file()]}, id="one-more-file"),
    ],
)
def test_the_same_key_with_another_request_is_422_and_stores_and_spends_nothing(
    user_client, two_images_an_hour, other
):
    first = _send(user_client, key="k")

    reused = _send(user_client, other, key="k")

    assert first.status_code == 202
    assert reused.status_code == 422, reused.json()
    error = reused.json()["error"]
    assert error["code"] == "idempotency_key_reused" and "new key" in error["message"]
    assert REPLAYED not in reused and "RateLimit-Remaining" not in reused
    assert Upload.objects.count() == 1
    # The refused request spent nothing: one image of two is left.
    assert _send(user_client, key=None).status_code == 202
    assert _send(user_client, key=None).status_code == 429


@pytest.mark.parametrize(
    "key",
    ["", " ", "x" * 256, " leading", "trailing ", "caf\u00e9", "tab\tinside", "new\nline"],
    ids=["empty", "space", "too-long", "leading-space", "trailing-space", "not-ascii", "tab", "newline"],
)
def test_a_malformed_key_is_400_naming_the_header_and_stores_and_spends_nothing(user_client, settings, key):
    settings.UPLOAD_THROTTLE_RATE = "1/hour"

    response = _send(user_client, key=key)

    assert response.status_code == 400, response.json()
    error = response.json()["error"]
    assert (error["code"], error["field"]) == ("idempotency_key_invalid", "Idempotency-Key")
    assert Upload.objects.count() == 0 and IdempotencyKey.objects.count() == 0
    assert _send(user_client, key=None).status_code == 202


def test_a_key_of_255_printable_characters_with_inner_spaces_is_accepted(user_client):
    key = ("a b~!" * 51)[:254] + "z"

    first, again = _send(user_client, key=key), _send(user_client, key=key)

    assert (first.status_code, again.status_code) == (202, 202)
    assert again[REPLAYED] == "true"
    assert IdempotencyKey.objects.get().key == key


def test_a_request_refused_for_a_bad_image_stores_no_key_so_the_retry_with_it_is_processed_anew(user_client):
    refused = _send(user_client, {"image": upload_file(b"not an image", name="bad.png")}, key="k")
    retried = _send(user_client, key="k")

    assert refused.status_code == 400 and refused.json()["error"]["code"] == "not_image"
    assert retried.status_code == 202 and REPLAYED not in retried
    assert Upload.objects.count() == 1 and IdempotencyKey.objects.count() == 1


def test_a_request_refused_for_the_quota_stores_no_key_so_the_same_request_is_stored_once_there_is_room(
    user_client, user, settings
):
    settings.UPLOAD_QUOTA_MB = 1
    StorageUse.objects.create(owner=user, bytes=2**20 - 10)

    refused = _send(user_client, key="k")
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "quota_exceeded"
    assert IdempotencyKey.objects.count() == 0 and stored_files() == []

    StorageUse.objects.filter(owner=user).update(bytes=0)
    retried = _send(user_client, key="k")

    assert retried.status_code == 202 and REPLAYED not in retried
    assert Upload.objects.count() == 1
    assert IdempotencyKey.objects.get().prediction_ids == _ids(retried)


def test_a_repeat_after_the_predictions_were_deleted_is_409_and_stores_nothing_again(user_client):
    first = _send(user_client, key="k")
    (prediction_id,) = _ids(first)
    assert user_client.delete(f"{LIST}{prediction_id}/").status_code == 204
    # The image file goes once the deletion commits, which a test inside a transaction never sees.
    files_left = stored_files()

    again = _send(user_client, key="k")

    assert again.status_code == 409, again.json()
    error = again.json()["error"]
    assert error["code"] == "idempotency_key_predictions_deleted" and "new key" in error["message"]
    assert Upload.objects.count() == 0 and stored_files() == files_left


def _staff_deletes_the_predictions_of(prediction_ids: list[int]) -> None:
    # As the admin's prediction deletion does: the predictions go, their uploads stay.
    Prediction.objects.filter(pk__in=prediction_ids).delete()


def test_a_repeat_after_staff_deleted_the_predictions_but_not_the_uploads_answers_with_the_uploads_predictions(
    user_client, settings
):
    settings.UPLOAD_THROTTLE_RATE = "3/hour"
    files = {"images": [upload_file(seven_png(size=size), name=f"{size}.png") for size in (64, 40)]}
    first = _send(user_client, files, key="k")
    made = _ids(first)
    uploads = list(Upload.objects.order_by("id"))
    # The second upload was tried again, and that newer prediction finished, before staff deleted the first ones.
    newer = classifier_services.predictions_rerun(uploads=[uploads[1]], publish=False)[0]
    Prediction.objects.filter(pk=newer.pk).update(
        status=Prediction.Status.DONE, digit=7, confidence=0.9, finished_at=timezone.now()
    )
    _staff_deletes_the_predictions_of(made)
    files_before = stored_files()

    files = {"images": [upload_file(seven_png(size=size), name=f"{size}.png") for size in (64, 40)]}
    again = _send(user_client, files, key="k")

    assert again.status_code == 202, again.json()
    assert again[REPLAYED] == "true" and "RateLimit-Remaining" not in again
    answered = again.json()["predictions"]
    assert [item["original_name"] for item in answered] == ["64.png", "40.png"]
    # The first upload had none left, so it got a new one, as reading it does; the second answers with its newest.
    (remade,) = Prediction.objects.filter(upload=uploads[0])
    assert _ids(again) == [remade.pk, newer.pk] and answered[1]["status"] == "done"
    assert list(Upload.objects.order_by("id")) == uploads and stored_files() == files_before
    # Sent once more, it answers with the same predictions: the new one was made once.
    files = {"images": [upload_file(seven_png(size=size), name=f"{size}.png") for size in (64, 40)]}
    assert _ids(_send(user_client, files, key="k")) == [remade.pk, newer.pk]
    assert Prediction.objects.count() == 2
    # The repeats spent none of the allowance: one image of three is still there.
    assert _send(user_client, key=None).status_code == 202
    assert _send(user_client, key=None).status_code == 429


def test_a_repeat_whose_predictions_were_deleted_and_remade_finished_answers_200(user_client):
    first = _send(user_client, key="k")
    (upload,) = Upload.objects.all()
    _staff_deletes_the_predictions_of(_ids(first))
    remade = classifier_services.upload_read(upload=upload)
    Prediction.objects.filter(pk=remade.pk).update(
        status=Prediction.Status.DONE, digit=7, confidence=0.9, finished_at=timezone.now()
    )

    again = _send(user_client, key="k")

    assert again.status_code == 200, again.json()
    assert again[REPLAYED] == "true" and _ids(again) == [remade.pk]


def test_a_repeat_of_the_same_image_sent_twice_whose_predictions_were_deleted_answers_for_both_uploads(user_client):
    first = _send(user_client, {"images": [upload_file(), upload_file()]}, key="k")
    _staff_deletes_the_predictions_of(_ids(first))

    again = _send(user_client, {"images": [upload_file(), upload_file()]}, key="k")

    assert again.status_code == 202, again.json()
    answered = Prediction.objects.order_by("upload_id")
    assert _ids(again) == [prediction.pk for prediction in answered]
    assert sorted(p.upload_id for p in answered) == sorted(Upload.objects.values_list("id", flat=True))
    assert Upload.objects.count() == 2


def test_a_repeat_answers_409_naming_the_uploads_deleted_among_several_and_makes_nothing_for_the_rest(user_client):
    files = {"images": [upload_file(seven_png(size=size), name=f"{size}.png") for size in (64, 40, 96)]}
    first = _send(user_client, files, key="k")
    made = _ids(first)
    # Of three: one upload deleted with its prediction, one upload left with its predictions deleted, one untouched.
    classifier_services.upload_delete(upload=Prediction.objects.get(pk=made[0]).upload)
    _staff_deletes_the_predictions_of(made[1:2])

    files = {"images": [upload_file(seven_png(size=size), name=f"{size}.png") for size in (64, 40, 96)]}
    again = _send(user_client, files, key="k")

    assert again.status_code == 409, again.json()
    error = again.json()["error"]
    assert error["code"] == "idempotency_key_predictions_deleted"
    assert "1 of the 3 images" in error["message"] and "new key" in error["message"]
    assert REPLAYED not in again
    assert Upload.objects.count() == 2 and list(Prediction.objects.values_list("pk", flat=True)) == [made[2]]


def test_a_repeat_is_not_answered_with_a_later_upload_of_the_same_image(user_client):
    first = _send(user_client, key="k")
    classifier_services.upload_delete(upload=Upload.objects.get())
    IdempotencyKey.objects.update(created_at=timezone.now() - dt.timedelta(minutes=5))
    later = _send(user_client, key=None)

    again = _send(user_client, key="k")

    assert again.status_code == 409, again.json()
    assert Upload.objects.count() == 1 and _ids(later) != _ids(first)
    assert list(Prediction.objects.values_list("pk", flat=True)) == _ids(later)


def test_keys_are_each_users_own(user_client, other_client, user, other_user):
    mine = _send(user_client, key="k")
    theirs = _send(other_client, key="k")

    assert (mine.status_code, theirs.status_code) == (202, 202)
    assert REPLAYED not in theirs and _ids(theirs) != _ids(mine)
    assert Upload.objects.filter(owner=user).count() == 1 and Upload.objects.filter(owner=other_user).count() == 1
    assert IdempotencyKey.objects.get(owner=other_user).prediction_ids == _ids(theirs)


def test_an_expired_key_counts_as_new(user_client, settings):
    settings.IDEMPOTENCY_KEY_TTL_HOURS = 24
    first = _send(user_client, key="k")
    IdempotencyKey.objects.update(created_at=timezone.now() - dt.timedelta(hours=24, seconds=1))

    again = _send(user_client, key="k")

    assert again.status_code == 202 and REPLAYED not in again
    assert _ids(again) != _ids(first) and Upload.objects.count() == 2
    assert IdempotencyKey.objects.get().prediction_ids == _ids(again)


def test_deleting_the_user_deletes_their_keys(user_client, user):
    _send(user_client, key="k")
    assert IdempotencyKey.objects.filter(owner=user).count() == 1

    account_delete(user=user)

    assert IdempotencyKey.objects.count() == 0 and Upload.objects.count() == 0


def test_an_upload_without_the_header_never_touches_the_keys_table(user_client):
    table = IdempotencyKey._meta.db_table
    with CaptureQueriesContext(connection) as plain:
        assert _send(user_client, key=None).status_code == 202
    with CaptureQueriesContext(connection) as keyed:
        assert _send(user_client, key="k").status_code == 202

    assert not [query for query in plain.captured_queries if table in query["sql"]]
    # The same capture does see the table when a key is sent.
    assert [query for query in keyed.captured_queries if table in query["sql"]]


def test_the_schema_documents_the_header_the_replay_header_and_the_409_and_422(api_client):
    schema = api_client.get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json").json()
    upload = schema["paths"]["/api/v1/predictions/"]["post"]

    (header,) = [p for p in upload["parameters"] if p["in"] == "header" and p["name"] == "Idempotency-Key"]
    assert header.get("required", False) is False and "IDEMPOTENCY_KEY_TTL_HOURS" in header["description"]
    assert {"409", "422"} <= set(upload["responses"])
    for code in ("200", "202"):
        assert REPLAYED in upload["responses"][code]["headers"]


def _backends_waiting_for_a_lock() -> int:
    with connection.cursor() as cursor:
        # Inside a transaction the statistics views would otherwise answer from the first look, again and again.
        cursor.execute("SELECT pg_stat_clear_snapshot()")
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
        )
        return cursor.fetchone()[0]


def _two_sent_at_once(user, *, key: str, while_sent=contextlib.nullcontext) -> list:
    """Two uploads with ``key`` from two threads, held together at their insert; their answers.

    ``while_sent`` is entered from before they are sent until both wait at the insert.
    """
    _, token = api_token_create(user=user)
    answers: list = [None, None]

    def send(index: int) -> None:
        from rest_framework.test import APIClient

        try:
            client = APIClient()
            client.credentials(HTTP_AUTHORIZATION=f"Token {token}")
            answers[index] = _send(client, key=key)
        finally:
            connection.close()

    threads = [threading.Thread(target=send, args=(index,)) for index in range(2)]
    # Every upload takes its owner's StorageUse row lock as it inserts: held here, both requests get past every
    # check and then wait at the insert, together.
    try:
        with transaction.atomic():
            StorageUse.objects.select_for_update().get(owner=user)
            with while_sent():
                for thread in threads:
                    thread.start()
                deadline = time.monotonic() + 30
                while _backends_waiting_for_a_lock() < 2:
                    assert time.monotonic() < deadline, "the two requests never reached their insert together"
                    time.sleep(0.02)
    finally:
        for thread in threads:
            thread.join(60)
    return answers


@pytest.mark.django_db(transaction=True)
def test_two_requests_sent_at_once_with_one_key_store_once_and_both_answer_with_those_predictions(
    user, settings
):
    if connection.vendor != "postgresql":
        pytest.skip("holding both requests at their insert takes a row lock, which SQLite does not have (its one "
                    "writer at a time stores them one after the other anyway)")
    settings.UPLOAD_THROTTLE_RATE = "2/hour"
    StorageUse.objects.create(owner=user)
    answers = _two_sent_at_once(user, key="race")

    assert [answer.status_code for answer in answers] == [202, 202], [answer.content for answer in answers]
    assert _ids(answers[0]) == _ids(answers[1])
    assert sorted(answer.get(REPLAYED) for answer in answers if answer.has_header(REPLAYED)) == ["true"]
    assert Upload.objects.count() == 1 and len(stored_files()) == 1
    assert StorageUse.objects.get(owner=user).bytes == Upload.objects.get().stored_bytes
    assert IdempotencyKey.objects.get().prediction_ids == _ids(answers[0])
    # The request that lost spent nothing in the end: one image of two is left.
    client = client_for(user)
    assert _send(client, key=None).status_code == 202
    assert _send(client, key=None).status_code == 429


@pytest.mark.django_db(transaction=True)
def test_the_request_that_lost_the_race_for_its_key_gives_back_none_of_the_allowance_it_did_not_spend(user, settings):
    if connection.vendor != "postgresql":
        pytest.skip("holding both requests at their insert takes a row lock, which SQLite does not have")
    from django.test import override_settings

    settings.UPLOAD_THROTTLE_RATE = "2/hour"
    StorageUse.objects.create(owner=user)
    client = client_for(user)
    assert _send(client, key=None).status_code == 202  # one image of two is left
    # Out of reach while the two are sent, the allowance lets both through unspent; back when the loser gives back.
    unreachable = UNREACHABLE_REDIS_CACHE
    answers = _two_sent_at_once(user, key="race", while_sent=lambda: override_settings(CACHES={"default": unreachable}))

    assert [answer.status_code for answer in answers] == [202, 202], [answer.content for answer in answers]
    assert sorted(answer.get(REPLAYED) for answer in answers if answer.has_header(REPLAYED)) == ["true"]
    # Neither spent any: the one image left before is all that is left.
    assert _send(client, key=None).status_code == 202
    assert _send(client, key=None).status_code == 429


@pytest.fixture
def three_requests_an_hour(monkeypatch):
    """The API's per-request throttle, as REST_FRAMEWORK's DEFAULT_THROTTLE_CLASSES sets it for every view."""
    from rest_framework.throttling import UserRateThrottle
    from rest_framework.views import APIView

    class ThreeAnHour(UserRateThrottle):
        rate = "3/hour"

    monkeypatch.setattr(APIView, "throttle_classes", [ThreeAnHour])


def test_repeats_spend_no_upload_allowance_but_pass_the_apis_per_request_throttle(user_client, three_requests_an_hour):
    answers = [_send(user_client, key="k") for _ in range(4)]

    assert [answer.status_code for answer in answers] == [202, 202, 202, 429]
    assert answers[1][REPLAYED] == "true" and "RateLimit-Remaining" not in answers[1]
    assert Upload.objects.count() == 1


def test_a_repeat_of_a_key_stored_before_it_named_its_uploads_answers_409_when_its_predictions_were_deleted(
    user_client,
):
    files = {"image": upload_file(seven_png(size=64), name="64.png")}
    made = _ids(_send(user_client, files, key="k"))
    # Stored by the earlier code, which kept the predictions' ids alone: the upload cannot be told apart.
    IdempotencyKey.objects.update(upload_ids=None)
    _staff_deletes_the_predictions_of(made)

    again = _send(user_client, {"image": upload_file(seven_png(size=64), name="64.png")}, key="k")

    assert again.status_code == 409 and again.json()["error"]["code"] == "idempotency_key_predictions_deleted"
    assert Upload.objects.count() == 1 and not Prediction.objects.exists()
