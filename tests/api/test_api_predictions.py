"""Prediction endpoints: upload, list with filters, detail, feedback, delete and their images."""
from __future__ import annotations

import datetime as dt
import hashlib
import http.client
import io
import json
import re
import sys

import pytest
from django.test import TestCase
from django.test.client import BOUNDARY, MULTIPART_CONTENT, encode_multipart
from django.utils import timezone
from PIL import Image
from rest_framework.test import APIClient

from classifier.models import Prediction, Upload
from classifier.views import IMAGE_UNREADABLE_RETRY_AFTER_S
from tests.api.conftest import seven_png, stored_files, upload_file
from tests.processes import child_env, start_process

pytestmark = pytest.mark.django_db

LIST = "/api/v1/predictions/"


def detail(prediction) -> str:
    return f"/api/v1/predictions/{prediction.pk}/"


# --- upload --------------------------------------------------------------------------------------------------------


def test_uploading_one_image_answers_202_with_a_pending_prediction(user_client, user):
    response = user_client.post(LIST, {"image": upload_file()}, format="multipart")

    assert response.status_code == 202, response.json()
    (item,) = response.json()["predictions"]
    prediction = Prediction.objects.get(pk=item["id"])
    assert item["status"] == "pending"
    assert item["url"] == f"http://testserver/api/v1/predictions/{prediction.pk}/"
    assert prediction.upload.owner == user
    assert prediction.upload.source == Upload.Source.API


def test_uploading_several_images_answers_one_prediction_each_in_order(user_client):
    # Different pictures, so that a prediction paired with the wrong upload would show.
    pictures = [_png(_stroke(width)) for width in (1, 2, 3)]
    files = [upload_file(picture, name=f"d{i}.png") for i, picture in enumerate(pictures)]

    response = user_client.post(LIST, {"images": files}, format="multipart")

    assert response.status_code == 202
    items = response.json()["predictions"]
    assert [item["original_name"] for item in items] == ["d0.png", "d1.png", "d2.png"]
    for item, picture in zip(items, pictures, strict=True):
        prediction = Prediction.objects.select_related("upload").get(pk=item["id"])
        assert prediction.upload_id == item["upload"]
        assert prediction.upload.original_name == item["original_name"]
        assert prediction.upload.sha256 == hashlib.sha256(picture).hexdigest()
        assert item["url"] == f"http://testserver/api/v1/predictions/{prediction.pk}/"
        assert item["image_url"] == f"http://testserver/api/v1/predictions/{prediction.pk}/image/"


def test_an_uploads_answer_is_written_byte_for_byte_as_the_serializer_writes_its_predictions(user_client, settings):
    from rest_framework.renderers import JSONRenderer
    from rest_framework.request import Request
    from rest_framework.test import APIRequestFactory

    from api.serializers import PredictionSerializer

    settings.TIME_ZONE = "America/St_Johns"
    files = [upload_file(_png(_stroke(width)), name=f"d{width}.png") for width in (1, 2, 3)]

    response = user_client.post(LIST, {"images": files}, format="multipart")

    ids = [item["id"] for item in response.json()["predictions"]]
    stored = Prediction.objects.select_related("upload").in_bulk(ids)
    request = Request(APIRequestFactory().get(LIST))
    expected = PredictionSerializer([stored[pk] for pk in ids], many=True, context={"request": request}).data
    assert response.content == JSONRenderer().render({"predictions": expected})


def test_image_and_images_fields_are_submitted_together(user_client):
    response = user_client.post(LIST, {"image": upload_file(), "images": [upload_file()]}, format="multipart")

    assert response.status_code == 202
    assert len(response.json()["predictions"]) == 2


def _stroke(width: int) -> Image.Image:
    image = Image.new("L", (28, 28), 0)
    image.paste(255, (10, 4, 10 + width * 3, 24))
    return image


def _png(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


BAD_FILES = {
    "not an image": (b"hello, I am text", "digit.png", 400, "not_image"),
    "truncated": (seven_png(size=256)[:300], "digit.png", 400, "truncated"),
    "empty file": (b"", "digit.png", 400, "empty"),
    "blank image": (_png(Image.new("L", (40, 40), 0)), "blank.png", 400, "blank"),
}


@pytest.mark.parametrize("case", BAD_FILES, ids=list(BAD_FILES))
def test_a_bad_file_is_rejected_and_nothing_is_stored(user_client, case):
    data, name, status, code = BAD_FILES[case]

    response = user_client.post(LIST, {"image": upload_file(data, name=name)}, format="multipart")

    assert response.status_code == status, response.json()
    error = response.json()["error"]
    assert error["code"] == code
    assert error["field"] == "image"
    assert Upload.objects.count() == 0
    assert stored_files() == []


def test_a_jpeg_named_and_typed_as_a_png_is_accepted_as_the_jpeg_it_is(user_client):
    file = upload_file(seven_png(fmt="JPEG"), name="seven_really_jpeg.png", content_type="image/png")

    response = user_client.post(LIST, {"image": file}, format="multipart")

    assert response.status_code == 202, response.json()
    (item,) = response.json()["predictions"]
    assert item["original_name"] == "seven_really_jpeg.png"
    upload = Upload.objects.get()
    assert upload.format == "JPEG"
    assert Image.open(upload.image).format == "PNG"


def test_one_bad_file_among_several_rejects_them_all_saying_which_it_was(user_client):
    files = [upload_file(name="ok.png"), upload_file(b"nope", name="bad.png"), upload_file(name="ok2.png"),
             upload_file(b"", name="empty.png")]

    response = user_client.post(LIST, {"images": files}, format="multipart")

    assert response.status_code == 400
    assert response.json()["error"]["field"] == "images"
    details = response.json()["error"]["details"]
    assert [(item["index"], item["code"]) for item in details] == [(1, "not_image"), (3, "empty")]
    assert Upload.objects.count() == 0 and Prediction.objects.count() == 0
    assert stored_files() == []


def test_a_file_over_the_size_limit_is_413_and_nothing_is_stored(user_client, settings):
    settings.UPLOAD_MAX_BYTES = 1000
    big = seven_png(size=512, fmt="BMP")

    response = user_client.post(LIST, {"image": upload_file(big, name="big.bmp")}, format="multipart")

    assert response.status_code == 413
    assert response.json()["error"]["code"] == "too_large"
    assert Upload.objects.count() == 0 and stored_files() == []


def test_an_upload_past_the_owners_quota_is_403_and_nothing_is_stored(user_client, user, settings):
    from classifier.models import StorageUse

    settings.UPLOAD_QUOTA_MB = 1
    StorageUse.objects.create(owner=user, bytes=2**20 - 10)

    response = user_client.post(LIST, {"image": upload_file(name="one.png")}, format="multipart")

    assert response.status_code == 403
    error = response.json()["error"]
    assert error["code"] == "quota_exceeded" and "Delete some uploads" in error["message"]
    assert Upload.objects.count() == 0 and stored_files() == []


def test_a_body_larger_than_any_valid_upload_is_413_before_it_is_read(user_client, settings):
    settings.UPLOAD_MAX_BYTES = 1000
    settings.UPLOAD_MAX_FILES = 1

    response = user_client.generic(
        "POST", LIST, b"x" * 10, content_type="multipart/form-data; boundary=zzz", CONTENT_LENGTH=str(3 * 1024 * 1024)
    )

    assert response.status_code == 413
    assert response.json()["error"]["code"] == "too_large"


@pytest.mark.django_db(transaction=True)
def test_an_upload_sent_chunked_to_gunicorn_is_411_and_spends_none_of_the_allowance(user, tmp_path):
    from accounts.services import api_token_create

    _, key = api_token_create(user=user)
    headers = {"Authorization": f"Token {key}", "Content-Type": MULTIPART_CONTENT}
    body = encode_multipart(BOUNDARY, {"image": upload_file()})
    server = start_process(
        name="gunicorn", log_dir=tmp_path, env=child_env(UPLOAD_THROTTLE_RATE="1/minute"),
        args=[sys.executable, "-m", "gunicorn", "--bind", "127.0.0.1:0", "--workers", "1",
              "mnistsite.wsgi:application"],
    )
    try:
        server.wait_for_output("Booting worker", timeout=60)
        port = int(re.search(r"Listening at: http://127\.0\.0\.1:(\d+)", server.log())[1])
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        # Gunicorn hands Django a chunked body without CONTENT_LENGTH; Django reads no byte of it.
        connection.request("POST", LIST, body=iter([body]), headers={**headers, "Transfer-Encoding": "chunked"},
                           encode_chunked=True)
        chunked = connection.getresponse()
        refused = json.loads(chunked.read())
        connection.request("POST", LIST, body=body, headers=headers)
        sized = connection.getresponse()
        sized.read()
    finally:
        server.stop()

    assert chunked.status == 411, refused
    assert refused["error"]["code"] == "length_required" and "Content-Length" in refused["error"]["message"]
    # The allowance of one image a minute was still whole for the same image sent with its length.
    assert sized.status == 202
    assert Upload.objects.count() == 1


def test_a_decompression_bomb_is_rejected_without_decoding_it(user_client, settings):
    settings.UPLOAD_MAX_PIXELS = 10_000
    bomb = _png(Image.new("1", (4000, 4000), 0))

    response = user_client.post(LIST, {"image": upload_file(bomb)}, format="multipart")

    assert response.status_code == 400
    assert response.json()["error"]["code"] == "too_many_pixels"
    assert Upload.objects.count() == 0 and stored_files() == []


def test_too_many_files_is_400_and_nothing_is_stored(user_client, settings):
    settings.UPLOAD_MAX_FILES = 2
    settings.DATA_UPLOAD_MAX_NUMBER_FILES = 2
    files = [upload_file(name=f"d{i}.png") for i in range(3)]

    response = user_client.post(LIST, {"images": files}, format="multipart")

    assert response.status_code == 400
    assert response.json()["error"]["code"] == "too_many_files"
    assert Upload.objects.count() == 0 and stored_files() == []


def test_form_fields_beyond_the_memory_limit_are_413(user_client, settings):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1000

    response = user_client.post(LIST, {"image": upload_file(), "note": "x" * 2000}, format="multipart")

    assert response.status_code == 413
    assert response.json()["error"]["code"] == "too_large"
    assert Upload.objects.count() == 0


def test_too_many_form_fields_are_400(user_client, settings):
    settings.DATA_UPLOAD_MAX_NUMBER_FIELDS = 5

    response = user_client.post(LIST, {f"f{i}": "x" for i in range(10)}, format="multipart")

    assert response.status_code == 400
    assert response.json()["error"]["code"] == "too_many_fields"


def test_no_file_at_all_is_400(user_client):
    response = user_client.post(LIST, {}, format="multipart")

    assert response.status_code == 400
    error = response.json()["error"]
    # The API has no canvas: the message names its two fields instead.
    assert error["code"] == "no_files" and "`image` or `images`" in error["message"] and "draw" not in error["message"]


def test_text_in_the_image_field_is_400_naming_the_field(user_client):
    response = user_client.post(LIST, {"image": "not a file"}, format="multipart")

    assert response.status_code == 400
    assert response.json()["error"] == {
        "code": "not_a_file", "message": "Send a file, not text.", "field": "image",
        "details": [{"code": "not_a_file", "message": "Send a file, not text.", "field": "image"}],
        "request_id": response["X-Request-ID"],
    }


def test_several_files_under_image_are_refused_pointing_to_images_and_nothing_is_stored(user_client):
    response = user_client.post(
        LIST, {"image": [upload_file(name="a.png"), upload_file(name="b.png")]}, format="multipart"
    )

    assert response.status_code == 400
    error = response.json()["error"]
    assert (error["code"], error["field"]) == ("too_many_files", "image")
    assert "send several as `images`" in error["message"]
    # Refused before the allowance was looked at, as every too_many_files is: it spent none, and says nothing of it.
    assert "RateLimit-Remaining" not in response
    assert Upload.objects.count() == 0 and stored_files() == []


def test_a_json_body_is_415(user_client):
    response = user_client.post(LIST, {"image": "x"}, format="json")

    assert response.status_code == 415
    assert response.json()["error"]["code"] == "unsupported_media_type"


@pytest.mark.parametrize(
    "wait", ["abc", "-1", "31", "30.5", "nan", "inf", "1e999", "1&wait=2", "%203", "1_0", "0x1", "1.5%20"]
)
def test_an_invalid_wait_is_400_and_nothing_is_stored(user_client, wait):
    response = user_client.post(f"{LIST}?wait={wait}", {"image": upload_file()}, format="multipart")

    assert response.status_code == 400, response.json()
    assert response.json()["error"]["field"] == "wait"
    assert Upload.objects.count() == 0


def test_waiting_inside_a_transaction_returns_at_once_with_what_is_known(user_client):
    # The test database wraps each test in a transaction, where a worker's writes could never be seen.
    response = user_client.post(f"{LIST}?wait=2.5", {"image": upload_file()}, format="multipart")

    assert response.status_code == 202
    assert response.json()["predictions"][0]["status"] == "pending"


def test_the_prediction_list_opens_in_the_browsable_api_with_its_upload_form(user_client):
    user_client.post(LIST, {"image": upload_file()}, format="multipart")
    page = user_client.get(LIST, HTTP_ACCEPT="text/html")
    assert page.status_code == 200 and page["Content-Type"].startswith("text/html")
    assert "digit.png" in page.content.decode()


def test_uploading_anonymously_is_401_with_www_authenticate(api_client):
    response = api_client.post(LIST, {"image": upload_file()}, format="multipart")

    assert response.status_code == 401
    assert response["WWW-Authenticate"] == "Token"
    assert response.json()["error"]["code"] == "not_authenticated"
    assert Upload.objects.count() == 0


def test_a_wrong_token_is_401(api_client):
    api_client.credentials(HTTP_AUTHORIZATION="Token not-a-real-token")

    response = api_client.get(LIST)

    assert response.status_code == 401
    assert response.json()["error"]["code"] == "authentication_failed"


def test_a_session_upload_without_csrf_token_is_403(user):
    client = APIClient(enforce_csrf_checks=True)
    client.force_login(user)

    response = client.post(LIST, {"image": upload_file()}, format="multipart")

    assert response.status_code == 403
    assert "CSRF" in response.json()["error"]["message"]


def test_a_session_upload_with_csrf_token_is_accepted(user):
    client = APIClient(enforce_csrf_checks=True)
    token = client.get("/accounts/login/").cookies["csrftoken"]
    client.force_login(user)

    response = client.post(
        LIST, {"image": upload_file()}, format="multipart", HTTP_X_CSRFTOKEN=token.value
    )

    assert response.status_code == 202


# --- list ------------------------------------------------------------------------------------------------------------


def test_the_list_holds_only_the_callers_predictions(user_client, user, other_user, make_prediction):
    mine = make_prediction(owner=user)
    make_prediction(owner=other_user)

    response = user_client.get(LIST)

    assert response.status_code == 200
    body = response.json()
    assert body["count"] == 1
    assert [item["id"] for item in body["results"]] == [mine.pk]


def test_the_list_filters_by_digit_and_status(user_client, user, make_prediction):
    seven = make_prediction(owner=user, done=True, digit=7)
    make_prediction(owner=user, done=True, digit=3)
    pending = make_prediction(owner=user)

    by_digit = user_client.get(LIST, {"digit": 7}).json()["results"]
    by_status = user_client.get(LIST, {"status": "pending"}).json()["results"]

    assert [item["id"] for item in by_digit] == [seven.pk]
    assert [item["id"] for item in by_status] == [pending.pk]


def test_the_list_filters_by_an_inclusive_date_range(user_client, user, make_prediction):
    old, new = make_prediction(owner=user), make_prediction(owner=user)
    Prediction.objects.filter(pk=old.pk).update(created_at=timezone.now() - dt.timedelta(days=10))
    today = timezone.localdate()

    recent = user_client.get(LIST, {"created_after": str(today - dt.timedelta(days=1))}).json()["results"]
    older = user_client.get(LIST, {"created_before": str(today - dt.timedelta(days=10))}).json()["results"]

    assert [item["id"] for item in recent] == [new.pk]
    assert [item["id"] for item in older] == [old.pk]


@pytest.mark.parametrize("zone", ["Pacific/Kiritimati", "Pacific/Pago_Pago"])
def test_dates_at_either_end_of_the_calendar_bound_nothing_instead_of_overflowing(user_client, user, make_prediction, settings, zone):
    settings.TIME_ZONE = zone  # fourteen hours east of UTC, eleven hours west
    prediction = make_prediction(owner=user)
    everything = user_client.get(LIST, {"created_after": "0001-01-01", "created_before": "9999-12-31"})
    assert everything.status_code == 200 and [item["id"] for item in everything.json()["results"]] == [prediction.pk]
    assert user_client.get(LIST, {"created_after": "9999-12-30"}).json()["results"] == []
    assert user_client.get(LIST, {"created_before": "0001-01-02"}).json()["results"] == []


@pytest.mark.parametrize(
    "query",
    [{"digit": 10}, {"digit": "x"}, {"digit": "3.0"}, {"digit": " 3"}, {"status": "nope"},
     {"created_after": "yesterday"}, {"created_after": "20261206"}, {"created_before": "2026-1-5"},
     {"created_before": "2026-12-06T10:00"}, {"latest": "maybe"}, {"latest": "0"}, {"latest": "1"}, {"latest": "yes"},
     {"latest": "y"}, {"latest": "null"}, {"latest": " true"}],
)
def test_an_invalid_filter_is_400_naming_the_parameter(user_client, query):
    response = user_client.get(LIST, query)

    assert response.status_code == 400
    assert response.json()["error"]["field"] == next(iter(query))


def test_a_date_range_whose_start_is_after_its_end_is_400_naming_both_days(user_client, user, make_prediction):
    make_prediction(owner=user)

    response = user_client.get(LIST, {"created_after": "2027-01-01", "created_before": "2026-01-01"})
    one_day = user_client.get(LIST, {"created_after": "2026-01-01", "created_before": "2026-01-01"})

    assert response.status_code == 400
    error = response.json()["error"]
    assert (error["field"], error["message"]) == (
        "created_after", "2027-01-01 is after created_before, 2026-01-01: no day is in such a range."
    )
    assert one_day.status_code == 200


def test_a_day_the_calendar_lacks_is_refused_as_such_not_as_a_wrong_format(user_client):
    response = user_client.get(LIST, {"created_after": "1900-02-29"})

    assert response.status_code == 400
    error = response.json()["error"]
    assert (error["field"], error["message"]) == ("created_after", "There is no day 1900-02-29 in the calendar.")


def test_a_digit_written_as_a_fraction_is_refused_saying_how_to_write_it(user_client, user, make_prediction):
    make_prediction(owner=user, done=True, digit=3)

    response = user_client.get(LIST, {"digit": "3.0"})

    assert response.status_code == 400
    assert response.json()["error"] == {
        "code": "invalid", "message": "A whole number is required, written with digits only (3, not 3.0).",
        "field": "digit", "details": [{"code": "invalid", "field": "digit",
                                       "message": "A whole number is required, written with digits only (3, not 3.0)."}],
        "request_id": response["X-Request-ID"],
    }


@pytest.mark.parametrize("query", ["status=done&status=failed", "digit=3&digit=3", "page=1&page=2",
                                   "page_size=5&page_size=10", "latest=true&latest=false", "newest=1&newest=2"])
def test_a_query_parameter_sent_twice_is_400_naming_it_since_which_was_meant_is_not_known(
    user_client, user, make_prediction, query
):
    make_prediction(owner=user, done=True, digit=3)

    response = user_client.get(f"{LIST}?{query}")

    assert response.status_code == 400
    error = response.json()["error"]
    name = query.split("=")[0]
    assert (error["code"], error["field"]) == ("repeated", name)
    assert error["message"] == f"`{name}` was sent 2 times; send it once."


def test_page_size_chooses_how_many_predictions_a_page_holds_and_the_next_page_keeps_it(
    user_client, user, make_prediction
):
    made = [make_prediction(owner=user).pk for _ in range(3)]

    first = user_client.get(LIST, {"page_size": 2}).json()
    second = user_client.get(first["next"]).json()

    assert first["count"] == 3 and len(first["results"]) == 2
    assert "page_size=2" in first["next"] and second["next"] is None
    assert [item["id"] for item in first["results"] + second["results"]] == made[::-1]


def test_following_next_lists_each_prediction_once_with_one_count_while_new_ones_are_stored(
    user_client, user, make_prediction
):
    made = [make_prediction(owner=user).pk for _ in range(3)]

    first = user_client.get(LIST, {"page_size": 2}).json()
    # Stored meanwhile by another program of the user's, or their browser: newer than every prediction listed.
    make_prediction(owner=user)
    second = user_client.get(first["next"]).json()

    assert first["count"] == second["count"] == 3 and second["next"] is None
    assert [item["id"] for item in first["results"] + second["results"]] == made[::-1]


def test_a_page_asked_for_without_newest_lists_the_predictions_there_are_and_its_links_keep_to_them(
    user_client, user, make_prediction
):
    made = [make_prediction(owner=user).pk for _ in range(3)]

    second = user_client.get(LIST, {"page_size": 1, "page": 2}).json()
    make_prediction(owner=user)

    assert [item["id"] for item in second["results"]] == [made[1]]
    assert _ids(user_client.get(second["previous"])) == [made[2]]
    assert _ids(user_client.get(second["next"])) == [made[0]]


def test_newest_lists_only_the_predictions_stored_up_to_it(user_client, user, make_prediction):
    made = [make_prediction(owner=user).pk for _ in range(3)]

    body = user_client.get(LIST, {"newest": made[1]}).json()

    assert body["count"] == 2 and [item["id"] for item in body["results"]] == [made[1], made[0]]


@pytest.mark.parametrize(
    "newest", ["-1", "abc", "2.0", " 2", str(2**63), pytest.param("9" * 5000, id="5000 digits")]
)
def test_a_newest_that_is_not_a_whole_number_a_row_could_have_is_400_naming_it(user_client, user, make_prediction,
                                                                               newest):
    make_prediction(owner=user)

    response = user_client.get(LIST, {"newest": newest})

    assert response.status_code == 400
    assert response.json()["error"]["field"] == "newest"


@pytest.mark.parametrize(
    "page_size", ["101", "0", "-1", "2.0", "abc", " 2", pytest.param("9" * 5000, id="5000 digits")]
)
def test_a_page_size_outside_1_to_100_or_not_a_whole_number_is_400_naming_it(user_client, user, make_prediction,
                                                                               page_size):
    make_prediction(owner=user)

    response = user_client.get(LIST, {"page_size": page_size})

    assert response.status_code == 400
    error = response.json()["error"]
    assert error["field"] == "page_size" and "from 1 to 100" in error["message"]


def test_the_largest_page_size_is_accepted_and_an_empty_one_means_the_default(user_client, user, make_prediction):
    make_prediction(owner=user)

    assert user_client.get(LIST, {"page_size": 100}).status_code == 200
    assert user_client.get(LIST, {"page_size": ""}).status_code == 200


@pytest.mark.parametrize("page", ["9", "9" * 30, "9" * 3000])
def test_a_page_past_the_end_is_404_in_the_envelope(user_client, page):
    response = user_client.get(LIST, {"page": page})

    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"


def test_listing_anonymously_is_401(api_client):
    assert api_client.get(LIST).status_code == 401


@pytest.mark.parametrize("scheme", ["Bearer", "Basic"])
def test_credentials_sent_with_another_scheme_are_401_saying_how_to_send_the_token(api_client, scheme):
    response = api_client.get(LIST, HTTP_AUTHORIZATION=f"{scheme} c2VjcmV0")

    assert response.status_code == 401 and response["WWW-Authenticate"] == "Token"
    assert response.json()["error"]["message"] == (
        f"Credentials were sent with the scheme “{scheme}”, which this API does not read: send the API token as "
        "`Authorization: Token <key>`."
    )


def _ids(response) -> list[int]:
    assert response.status_code == 200, response.json()
    return [item["id"] for item in response.json()["results"]]


def _rerun(prediction: Prediction, **fields) -> Prediction:
    """A newer prediction of the same upload, as a re-run of it leaves."""
    return Prediction.objects.create(upload=prediction.upload, **fields)


def test_latest_lists_each_uploads_newest_prediction_and_none_a_retry_replaced(user_client, user, make_prediction):
    failed = _failed(make_prediction, user)
    retried = user_client.post(f"{detail(failed)}retry/").json()["id"]
    done = make_prediction(owner=user, done=True)

    assert _ids(user_client.get(LIST, {"latest": "true"})) == [done.pk, retried]
    # Without it, as before: every prediction, the replaced one included.
    assert _ids(user_client.get(LIST)) == [done.pk, retried, failed.pk]
    assert _ids(user_client.get(LIST, {"latest": "false"})) == [done.pk, retried, failed.pk]


@pytest.mark.parametrize(("word", "newest_only"), [("true", True), ("True", True), ("on", True), ("FALSE", False)])
def test_a_flag_is_a_word_in_any_case_as_python_and_html_forms_write_it(
    user_client, user, make_prediction, word, newest_only
):
    first = make_prediction(owner=user, done=True)
    second = _rerun(first, status=Prediction.Status.DONE, digit=1)

    assert _ids(user_client.get(LIST, {"latest": word})) == ([second.pk] if newest_only else [second.pk, first.pk])


def test_latest_tells_predictions_made_in_the_same_instant_apart_by_id(user_client, user, make_prediction):
    first = make_prediction(owner=user, done=True)
    second = _rerun(first, status=Prediction.Status.DONE, digit=1)
    Prediction.objects.filter(pk=second.pk).update(created_at=first.created_at)

    assert _ids(user_client.get(LIST, {"latest": "true"})) == [second.pk]


def test_latest_applies_the_other_filters_to_each_uploads_newest_prediction_only(user_client, user, make_prediction):
    # Read as 3 first, then read again as 7: its current result is a 7.
    reread = make_prediction(owner=user, done=True, digit=3)
    reread_seven = _rerun(reread, status=Prediction.Status.DONE, digit=7)
    seven = make_prediction(owner=user, done=True, digit=7)
    failed = _failed(make_prediction, user)
    retried = user_client.post(f"{detail(failed)}retry/").json()["id"]

    assert _ids(user_client.get(LIST, {"latest": "true", "digit": 3})) == []
    assert _ids(user_client.get(LIST, {"digit": 3})) == [reread.pk]
    assert _ids(user_client.get(LIST, {"latest": "true", "digit": 7})) == [seven.pk, reread_seven.pk]
    assert _ids(user_client.get(LIST, {"latest": "true", "status": "failed"})) == []
    assert _ids(user_client.get(LIST, {"latest": "true", "status": "pending"})) == [retried]
    today = str(timezone.localdate())
    assert _ids(user_client.get(LIST, {"latest": "true", "status": "done", "created_after": today})) == [
        seven.pk, reread_seven.pk,
    ]


def test_latest_is_paginated_and_counts_only_the_newest_predictions(user_client, user, make_prediction):
    newest = []
    for _ in range(3):
        first = make_prediction(owner=user, done=True)
        newest.insert(0, _rerun(first, status=Prediction.Status.DONE, digit=1).pk)

    first_page = user_client.get(LIST, {"latest": "true", "page_size": 2}).json()
    second_page = user_client.get(first_page["next"]).json()

    assert first_page["count"] == 3 and second_page["count"] == 3
    assert "latest=true" in first_page["next"] and second_page["next"] is None
    assert [item["id"] for item in first_page["results"] + second_page["results"]] == newest


def test_following_next_under_latest_lists_each_uploads_result_as_it_was_when_the_first_page_was_read(
    user_client, user, make_prediction
):
    made = [make_prediction(owner=user, done=True).pk for _ in range(3)]

    first = user_client.get(LIST, {"latest": "true", "page_size": 2}).json()
    # The oldest upload, not listed yet, is read again meanwhile: its new prediction is newer than the first page.
    _rerun(Prediction.objects.get(pk=made[0]))
    second = user_client.get(first["next"]).json()

    assert first["count"] == second["count"] == 3
    assert [item["id"] for item in first["results"] + second["results"]] == made[::-1]


# --- detail ----------------------------------------------------------------------------------------------------------


def test_a_done_prediction_shows_everything_about_it(user_client, user, make_prediction, make_checkpoint):
    checkpoint, _ = make_checkpoint(activate=True)
    prediction = make_prediction(owner=user, done=True, digit=7, confidence=0.55)
    Prediction.objects.filter(pk=prediction.pk).update(checkpoint=checkpoint, finished_at=timezone.now())

    body = user_client.get(detail(prediction)).json()

    assert body["status"] == "done" and body["finished"] is True
    assert body["digit"] == 7
    assert body["confidence"] == pytest.approx(0.55)
    assert len(body["probabilities"]) == 10 and sum(body["probabilities"]) == pytest.approx(1)
    assert body["low_confidence"] is True
    assert body["checkpoint"] == checkpoint.pk
    assert body["latency"] == {"queue_ms": 12.5, "compute_ms": 3.0}
    assert body["finished_at"] is not None
    assert body["image_url"] == f"http://testserver/api/v1/predictions/{prediction.pk}/image/"
    assert body["input_image_url"] == f"http://testserver/api/v1/predictions/{prediction.pk}/input/"


def test_a_pending_prediction_has_no_digit_and_no_input_image(user_client, user, make_prediction):
    body = user_client.get(detail(make_prediction(owner=user))).json()

    assert body["digit"] is None and body["probabilities"] is None and body["input_image_url"] is None
    assert body["low_confidence"] is False


def test_another_users_prediction_is_404(other_client, user, make_prediction):
    prediction = make_prediction(owner=user, done=True)

    for response in (
        other_client.get(detail(prediction)),
        other_client.patch(detail(prediction), {"feedback": 1}, format="json"),
        other_client.delete(detail(prediction)),
        other_client.get(f"{detail(prediction)}image/"),
        other_client.get(f"{detail(prediction)}input/"),
    ):
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "not_found"
    assert Prediction.objects.filter(pk=prediction.pk, feedback=None).exists()


def test_staff_cannot_see_other_peoples_predictions_through_the_api_either(staff_client, user, make_prediction):
    assert staff_client.get(detail(make_prediction(owner=user))).status_code == 404


def test_a_missing_prediction_is_404(user_client):
    assert user_client.get("/api/v1/predictions/999999/").status_code == 404


def test_a_huge_id_is_404_not_a_database_error(user_client):
    assert user_client.get(f"/api/v1/predictions/{10**30}/").status_code == 404


def test_the_uploaded_and_input_images_are_served_as_png_with_a_token(user_client, user, make_prediction):
    prediction = make_prediction(owner=user, done=True)

    for suffix in ("image/", "input/"):
        # What the schema documents, and what generated clients and the API docs' "Try it out" send.
        response = user_client.get(f"{detail(prediction)}{suffix}", HTTP_ACCEPT="image/png")
        assert response.status_code == 200
        assert response["Content-Type"] == "image/png"
        assert response.getvalue().startswith(b"\x89PNG")


def test_options_on_an_image_says_it_answers_a_png_and_reads_no_body(user_client, user, make_prediction):
    prediction = make_prediction(owner=user, done=True)

    for suffix in ("image/", "input/"):
        described = user_client.options(f"{detail(prediction)}{suffix}").json()
        assert described["renders"] == ["image/png", "application/json"], suffix
        assert described["parses"] == [], suffix


def test_an_image_whose_etag_if_match_does_not_name_is_a_412_in_the_envelope_and_one_it_names_is_served(
    user_client, api_client, user, make_prediction
):
    prediction = make_prediction(owner=user, done=True)
    declared = api_client.get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json").json()["paths"]

    for suffix in ("image/", "input/"):
        etag = user_client.get(f"{detail(prediction)}{suffix}")["ETag"]
        refused = user_client.get(f"{detail(prediction)}{suffix}", HTTP_IF_MATCH='"0123456789abcdef"')
        assert refused.status_code == 412, suffix
        assert refused["Content-Type"] == "application/json"
        assert refused.json()["error"]["code"] == "precondition_failed"
        assert user_client.get(f"{detail(prediction)}{suffix}", HTTP_IF_MATCH=etag).status_code == 200
        assert "412" in declared[f"/api/v1/predictions/{{prediction_id}}/{suffix}"]["get"]["responses"], suffix


def test_an_image_asked_for_if_unmodified_since_is_served_as_it_has_no_modification_date(
    user_client, user, make_prediction
):
    prediction = make_prediction(owner=user, done=True)

    for suffix in ("image/", "input/"):
        # RFC 9110, 13.1.4: ignored when the representation has no modification date, as these have none.
        response = user_client.get(
            f"{detail(prediction)}{suffix}", HTTP_IF_UNMODIFIED_SINCE="Sun, 06 Nov 1994 08:49:37 GMT"
        )
        assert response.status_code == 200, suffix
        assert response["Content-Type"] == "image/png"


def test_an_image_the_storage_cannot_read_is_503_with_retry_after_not_a_server_error(
    user_client, user, make_prediction, settings, tmp_path
):
    prediction = make_prediction(owner=user, done=True)
    # MEDIA_ROOT under a regular file: every read fails, as on an unmounted volume.
    (tmp_path / "not-a-folder").write_text("")
    settings.MEDIA_ROOT = str(tmp_path / "not-a-folder" / "media")

    response = user_client.get(f"{detail(prediction)}image/", HTTP_ACCEPT="image/png")

    assert response.status_code == 503
    assert response.json()["error"]["code"] == "service_unavailable"
    assert "The image cannot be read at the moment" in response.json()["error"]["message"]
    # The pages' wait for the same outage.
    assert response["Retry-After"] == str(IMAGE_UNREADABLE_RETRY_AFTER_S)


def test_the_input_image_of_a_pending_prediction_is_404(user_client, user, make_prediction):
    response = user_client.get(f"{detail(make_prediction(owner=user))}input/", HTTP_ACCEPT="image/png")

    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"


# --- feedback --------------------------------------------------------------------------------------------------------


def test_feedback_is_recorded_and_can_be_cleared(user_client, user, make_prediction):
    prediction = make_prediction(owner=user, done=True)

    set_response = user_client.patch(detail(prediction), {"feedback": 1}, format="json")
    assert set_response.status_code == 200 and set_response.json()["feedback"] == 1
    clear_response = user_client.patch(detail(prediction), {"feedback": None}, format="json")
    assert clear_response.status_code == 200 and clear_response.json()["feedback"] is None
    prediction.refresh_from_db()
    assert prediction.feedback is None


def test_feedback_in_form_data_is_written_in_digits(user_client, user, make_prediction):
    prediction = make_prediction(owner=user, done=True)

    response = user_client.patch(detail(prediction), "feedback=7", content_type="application/x-www-form-urlencoded")

    assert response.status_code == 200, response.json()
    assert response.json()["feedback"] == 7


@pytest.mark.parametrize(
    "body",
    [{"feedback": 10}, {"feedback": -1}, {"feedback": "seven"}, {"feedback": 7.0}, {"feedback": "7.0"}, {},
     {"feedback": "7"}, {"feedback": True}],
    ids=str,
)
def test_invalid_feedback_is_400(user_client, user, make_prediction, body):
    prediction = make_prediction(owner=user, done=True)

    response = user_client.patch(detail(prediction), body, format="json")

    assert response.status_code == 400
    assert response.json()["error"]["field"] == "feedback"


def test_put_is_405_in_the_envelope(user_client, user, make_prediction):
    response = user_client.put(detail(make_prediction(owner=user)), {"feedback": 1}, format="json")

    assert response.status_code == 405
    assert response.json()["error"]["code"] == "method_not_allowed"


# --- delete ----------------------------------------------------------------------------------------------------------


def test_deleting_removes_the_upload_its_predictions_and_its_file(user_client, user, make_prediction):
    prediction = make_prediction(owner=user, done=True)
    assert len(stored_files()) == 1

    # Files go on commit, which the test transaction only simulates.
    with TestCase.captureOnCommitCallbacks(execute=True):
        response = user_client.delete(detail(prediction))

    assert response.status_code == 204
    assert not Upload.objects.exists() and not Prediction.objects.exists()
    assert stored_files() == []


# --- retry ---------------------------------------------------------------------------------------------------------


def _failed(make_prediction, owner) -> Prediction:
    prediction = make_prediction(owner=owner)
    prediction.status, prediction.error = Prediction.Status.FAILED, "The stored image could not be read."
    prediction.save()
    return prediction


def test_a_failed_prediction_is_run_again_once_however_often_the_retry_is_sent(user_client, user, make_prediction):
    failed = _failed(make_prediction, user)

    first = user_client.post(f"{detail(failed)}retry/")
    again = user_client.post(f"{detail(failed)}retry/")

    assert first.status_code == 201 and first.json()["status"] == "pending" and first.json()["id"] != failed.pk
    assert again.status_code == 200 and again.json()["id"] == first.json()["id"]
    assert Prediction.objects.filter(upload=failed.upload).count() == 2


def test_a_retry_that_made_a_prediction_locates_it_and_one_that_made_none_does_not(
    user_client, api_client, user, make_prediction
):
    failed = _failed(make_prediction, user)

    made = user_client.post(f"{detail(failed)}retry/")
    again = user_client.post(f"{detail(failed)}retry/")

    # A 201 without Location says the request's own URL is what was created.
    assert made.status_code == 201 and made["Location"] == made.json()["url"]
    assert user_client.get(made["Location"]).json()["id"] == made.json()["id"]
    assert again.status_code == 200 and "Location" not in again
    declared = api_client.get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json").json()
    retry = declared["paths"]["/api/v1/predictions/{prediction_id}/retry/"]["post"]["responses"]
    assert "Location" in retry["201"]["headers"] and "headers" not in retry["200"]


def test_retrying_a_prediction_that_did_not_fail_makes_nothing(user_client, user, make_prediction):
    done = make_prediction(owner=user, done=True)

    response = user_client.post(f"{detail(done)}retry/")

    assert response.status_code == 200 and response.json()["id"] == done.pk
    assert Prediction.objects.count() == 1


def test_a_retry_is_counted_as_an_upload(user_client, user, make_prediction, settings):
    settings.UPLOAD_THROTTLE_RATE = "1/minute"
    first, second = _failed(make_prediction, user), _failed(make_prediction, user)

    assert user_client.post(f"{detail(first)}retry/").status_code == 201
    refused = user_client.post(f"{detail(second)}retry/")

    assert refused.status_code == 429 and int(refused["Retry-After"]) > 0
    assert Prediction.objects.filter(upload=second.upload).count() == 1


def test_retrying_another_users_prediction_is_404(other_client, user, make_prediction):
    failed = _failed(make_prediction, user)

    assert other_client.post(f"{detail(failed)}retry/").status_code == 404
    assert Prediction.objects.count() == 1


def test_a_retry_that_another_one_overtook_makes_nothing_and_spends_nothing(
    transactional_db, user, make_prediction, settings
):
    from django.db import connection

    from tests.api.conftest import client_for
    from tests.classifier.fixtures import retry_overtaken

    if connection.vendor != "postgresql":
        pytest.skip("waiting on another transaction's row lock needs PostgreSQL")
    settings.UPLOAD_THROTTLE_RATE = "1/minute"
    overtaken, other = _failed(make_prediction, user), _failed(make_prediction, user)
    client = client_for(user)
    answer = retry_overtaken(upload_id=overtaken.upload_id, send=lambda: client.post(f"{detail(overtaken)}retry/"))

    newest = Prediction.objects.filter(upload=overtaken.upload).latest("created_at", "id")
    assert answer.status_code == 200 and answer.json()["id"] == newest.pk != overtaken.pk
    assert "RateLimit-Remaining" not in answer
    # The one image the period allows was not spent on it.
    assert client.post(f"{detail(other)}retry/").status_code == 201
