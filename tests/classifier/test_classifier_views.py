"""The pages and endpoints: uploads through the form, results, history, images, and isolation between users."""
import base64
import datetime as dt
import io
import re
from html import unescape
from pathlib import Path

import pytest
from django.db import connection
from django.urls import reverse
from django.utils import timezone

from classifier import services
from classifier.models import Prediction, Upload
from tests.classifier.fixtures import (
    account_deleted_just_before_the_insert,
    empty_ruled_sheet_png,
    png_bytes,
    upload_deletions_lost_in_the_second_batch,
)

pytestmark = pytest.mark.django_db


@pytest.fixture
def alice(client, user):
    client.force_login(user)
    return client


def _file(data: bytes, name: str):
    f = io.BytesIO(data)
    f.name = name
    return f


def _done_prediction(owner, digit_png, index=0):
    upload = services.upload_create(owner=owner, file=io.BytesIO(digit_png(index)), name=f"{index}.png", source="file")
    (prediction,) = services.predictions_create(uploads=[upload], publish=False)
    return services.prediction_execute(prediction_id=prediction.pk)


def test_pages_require_login(client):
    for url in ["/", "/history/", "/predictions/1/", "/predictions/1.json", "/uploads/1/image"]:
        response = client.get(url)
        assert response.status_code == 302 and response["Location"].startswith("/accounts/login/"), url


def test_there_is_no_public_media_route(alice, user, digit_png):
    upload = services.upload_create(owner=user, file=io.BytesIO(digit_png(0)), source="file")
    assert alice.get(f"/media/{upload.image.name}").status_code == 404
    assert alice.get(f"/media-not-served/{upload.image.name}").status_code == 404


def test_the_upload_page_renders_the_form_and_canvas(alice):
    html = alice.get("/").content.decode()
    assert 'type="file"' in html and "<canvas" in html and 'name="canvas"' in html


def test_the_upload_page_has_a_polite_region_to_say_how_an_upload_goes_beside_its_named_progress_bar(alice):
    html = alice.get("/").content.decode()
    assert '<p class="visually-hidden" id="upload-announcement" aria-live="polite" aria-atomic="true"></p>' in html
    assert re.search(r'<progress id="file-progress"[^>]* aria-label="Upload progress"', html)
    assert "autofocus" not in html  # a plain visit opens at the page's start


def test_an_upload_page_sent_back_with_errors_opens_on_them(alice):
    html = alice.post("/", {"files": [_file(b"nope", "bad.png")]}).content.decode()
    assert re.search(r'<div class="errors" role="alert" id="upload-errors" tabindex="-1" autofocus[ >]', html)


FORGOTTEN = "The browser does not keep chosen files when the page comes back"


def test_a_form_sent_back_without_javascript_asks_for_the_files_again_only_when_some_were_sent(
    alice, digit_png, settings
):
    # Too many files: the browser empties its file input on the page that comes back, so they must be chosen again.
    settings.UPLOAD_MAX_FILES = 2
    too_many = alice.post("/", {"files": [_file(digit_png(i), f"{i}.png") for i in range(3)]}).content.decode()
    assert FORGOTTEN in too_many and "choose the files again" in too_many
    # Of two files, one refused: the other, good on its own, is the one to choose again.
    one_of_two = alice.post("/", {"files": [_file(digit_png(0), "0.png"), _file(b"nope", "bad.png")]}).content.decode()
    assert FORGOTTEN in one_of_two and "choose the other files again" in one_of_two
    # Nothing chosen (a browser still sends the form's other fields): nothing was forgotten either.
    nothing = alice.post("/", {"csrfmiddlewaretoken": "sent-by-the-form"})
    assert nothing.status_code == 400 and FORGOTTEN not in nothing.content.decode()


def test_uploading_one_file_redirects_to_its_result(alice, digit_png, published, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        response = alice.post("/", {"files": [_file(digit_png(0), "seven.png")]})
    prediction = Prediction.objects.get()
    assert response.status_code == 302
    assert response["Location"] == reverse("classifier:prediction_detail", args=[prediction.pk])
    assert published.prediction_ids() == [prediction.pk]
    page = alice.get(response["Location"]).content.decode()
    assert "queued" in page


def test_the_upload_page_spends_the_same_per_user_allowance_as_the_api(alice, user, digit_png, settings):
    from django.core.cache import cache

    from rest_framework.test import APIClient

    api = APIClient()
    api.force_authenticate(user)

    def api_upload(count):
        return api.post("/api/v1/predictions/", {"images": [_file(digit_png(i), f"{i}.png") for i in range(count)]},
                        format="multipart")

    settings.UPLOAD_THROTTLE_RATE = "3/minute"
    cache.clear()
    # The page spends what the API then lacks...
    assert alice.post("/", {"files": [_file(digit_png(i), f"{i}.png") for i in range(2)]}).status_code == 302
    assert api_upload(2).status_code == 429
    refused = alice.post("/", {"files": [_file(digit_png(i), f"{i}.png") for i in range(2)]})
    assert refused.status_code == 429 and int(refused["Retry-After"]) > 0
    assert "Too many uploads" in refused.content.decode()
    too_many = alice.post("/", {"files": [_file(digit_png(i), f"{i}.png") for i in range(4)]})
    assert too_many.status_code == 400 and "At most 3 images per upload" in too_many.content.decode()
    assert Upload.objects.count() == 2
    # ...and the API spends what the page then lacks.
    cache.clear()
    assert api_upload(2).status_code == 202
    assert alice.post("/", {"files": [_file(digit_png(i), f"{i}.png") for i in range(2)]}).status_code == 429
    assert Upload.objects.count() == 4
    cache.clear()


def test_the_upload_page_counts_a_large_picture_as_several_images_of_the_allowance(alice, settings):
    from django.core.cache import cache
    from PIL import Image

    settings.UPLOAD_THROTTLE_RATE = "10/minute"
    cache.clear()
    scan = png_bytes(Image.new("L", (4000, 3000), 255))
    refused = alice.post("/", {"files": [_file(scan, "scan.png")]})
    assert refused.status_code == 400 and "these count as 12" in refused.content.decode()
    assert not Upload.objects.exists()
    cache.clear()


def test_uploading_many_files_redirects_to_the_batch_in_history(alice, digit_png):
    response = alice.post("/", {"files": [_file(digit_png(i), f"{i}.png") for i in range(3)]})
    assert response.status_code == 302 and response["Location"].startswith("/history/?batch=")
    page = alice.get(response["Location"]).content.decode()
    assert page.count('class="history-item"') == 3
    # Filtering within the batch stays within it: the filter form carries the batch along.
    batch = response["Location"].split("batch=")[1]
    assert f'<input type="hidden" name="batch" value="{batch}"' in page
    filtered = alice.get("/history/", {"batch": batch, "status": "pending"}).content.decode()
    assert "This batch" in filtered and filtered.count('class="history-item"') == 3


def test_the_page_script_sending_an_upload_is_told_where_to_go_and_the_next_page_keeps_its_message(alice, digit_png):
    script = {"HTTP_X_REQUESTED_WITH": "XMLHttpRequest"}
    one = alice.post("/", {"files": [_file(digit_png(0), "0.png")]}, **script)
    assert one.status_code == 200
    assert one.json() == {"location": reverse("classifier:prediction_detail", args=[Prediction.objects.get().pk])}
    many = alice.post("/", {"files": [_file(digit_png(i), f"{i}.png") for i in range(2)]}, **script)
    location = many.json()["location"]
    assert location.startswith("/history/?batch=")
    # Not spent on a redirect followed inside the script's request: the page it goes to shows it, in a list that
    # stays a list to screen readers (the status role on a box around it).
    page = alice.get(location).content.decode()
    assert re.search(r'<div class="messages" role="status" tabindex="-1" autofocus>\s*<ul><li class="message '
                     r'message-success">2 images uploaded', page)


def test_a_refused_upload_says_where_each_refused_file_stood_in_the_request(alice, digit_png):
    files = [_file(digit_png(0), "0.png"), _file(b"not a picture", "broken.png"), _file(digit_png(1), "1.png"),
             _file(b"", "empty.png")]
    response = alice.post("/", {"files": files}, HTTP_X_REQUESTED_WITH="XMLHttpRequest")
    assert response.status_code == 400
    page = response.content.decode()
    assert 'data-refused-files="1 3"' in page and "broken.png" in page and "empty.png" in page
    assert not Upload.objects.exists()


def test_the_status_filter_names_a_pending_prediction_queued_as_the_badges_do(alice):
    page = alice.get("/history/").content.decode()
    assert '<option value="pending">Queued</option>' in page and ">Pending<" not in page


def test_a_drawing_from_the_canvas_is_uploaded(alice, mnist_image):
    image, _ = mnist_image(0, invert=False)
    rgba = image.convert("L").point(lambda v: 255 - v).convert("RGBA")
    rgba.putalpha(image.convert("L"))
    data_url = "data:image/png;base64," + base64.b64encode(png_bytes(rgba)).decode()
    response = alice.post("/", {"canvas": data_url})
    assert response.status_code == 302
    assert Upload.objects.get().source == "canvas"


def test_files_and_a_drawing_in_one_post_are_refused_rather_than_one_dropped(alice, digit_png):
    data_url = "data:image/png;base64," + base64.b64encode(digit_png(1)).decode()
    response = alice.post("/", {"canvas": data_url, "files": [_file(digit_png(0), "a.png")]})
    assert response.status_code == 400 and "not both" in response.content.decode()
    assert not Upload.objects.exists()


def test_an_empty_canvas_shows_a_clear_message_and_stores_nothing(alice):
    from PIL import Image

    data_url = "data:image/png;base64," + base64.b64encode(png_bytes(Image.new("RGBA", (280, 280)))).decode()
    response = alice.post("/", {"canvas": data_url})
    assert response.status_code == 400
    assert "blank" in response.content.decode()
    assert not Upload.objects.exists()


def test_a_bad_file_shows_its_error_and_stores_nothing(alice, digit_png):
    response = alice.post("/", {"files": [_file(digit_png(0), "ok.png"), _file(b"nope", "bad.png")]})
    assert response.status_code == 400
    assert "bad.png" in response.content.decode() and "not an image" in response.content.decode()
    assert not Upload.objects.exists()


def test_too_many_files_in_one_request_are_refused(alice, digit_png, settings):
    files = [_file(digit_png(0), f"{i}.png") for i in range(settings.UPLOAD_MAX_FILES + 1)]
    response = alice.post("/", {"files": files})
    assert response.status_code == 400
    assert not Upload.objects.exists()


@pytest.fixture
def browser(user):
    """A browser without the page's script: the form as it is, with the security code the page gave it."""
    from django.test import Client

    client = Client(enforce_csrf_checks=True)
    client.force_login(user)
    client.csrf_token = client.get("/").cookies["csrftoken"].value
    return client


def _stored_files() -> list[Path]:
    from django.conf import settings

    return sorted(path for path in Path(settings.MEDIA_ROOT).rglob("*") if path.is_file())


def _refusal(response) -> list[str]:
    """The upload page's list of errors, which the page opens on."""
    html = response.content.decode()
    assert 'id="upload-errors"' in html and 'id="file-form"' in html, html[:500]
    items = re.findall(r"<li>(.*?)</li>", html.split('id="upload-errors"')[1].split("</div>")[0])
    return [unescape(re.sub(r"<[^>]+>", "", item)) for item in items]


def test_more_files_than_may_be_sent_at_once_get_the_upload_page_back_saying_how_many(browser, digit_png, settings):
    settings.UPLOAD_MAX_FILES = settings.DATA_UPLOAD_MAX_NUMBER_FILES = 3
    files = [_file(digit_png(0), f"{i}.png") for i in range(5)]

    response = browser.post("/", {"csrfmiddlewaretoken": browser.csrf_token, "files": files})

    assert response.status_code == 400
    assert _refusal(response) == ["You chose more than 3 files; at most 3 can be sent at once. Choose fewer and send "
                                  "them again."]
    assert not Upload.objects.exists() and _stored_files() == []


@pytest.mark.parametrize("name", ["😀" * 300 + ".png", "d" * 2000 + ".png"], ids=["300 emoji", "2,000 letters"])
def test_a_file_name_too_long_to_be_read_gets_the_upload_page_back_saying_so(browser, digit_png, name):
    files = [_file(digit_png(0), "fine.png"), _file(digit_png(1), name)]

    response = browser.post("/", {"csrfmiddlewaretoken": browser.csrf_token, "files": files})

    assert response.status_code == 400
    (error,) = _refusal(response)
    assert error.startswith("A file's name is too long: names of up to about 900 bytes can be sent")
    assert not Upload.objects.exists() and _stored_files() == []


def test_a_drawing_too_large_to_be_read_gets_the_upload_page_back_saying_so(browser, settings):
    from urllib.parse import urlencode

    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 10_000
    body = urlencode({"csrfmiddlewaretoken": browser.csrf_token,
                      "canvas": "data:image/png;base64," + base64.b64encode(bytes(20_000)).decode()})

    # The drawing's form is sent as a plain form, not as a multipart one.
    response = browser.post("/", body, content_type="application/x-www-form-urlencoded")

    assert response.status_code == 413
    assert _refusal(response) == ["The drawing is too large."]
    assert not Upload.objects.exists() and _stored_files() == []


def test_a_form_that_cannot_be_read_gets_the_upload_page_back_saying_so(browser):
    # A multipart form names the boundary between its parts; without one, none of it can be told apart.
    response = browser.post("/", b"--b\r\n", content_type="multipart/form-data")

    assert response.status_code == 400
    assert _refusal(response) == ["The upload could not be read; please send it again."]
    assert not Upload.objects.exists() and _stored_files() == []


class _ClientGoneMidBody(io.RawIOBase):
    """A request body whose sender went away after its first read."""

    def __init__(self, head: bytes) -> None:
        self.head = head

    def read(self, size: int = -1) -> bytes:
        head, self.head = self.head, None
        if head is None:
            raise OSError("connection reset by peer")
        return head

    readline = read


def test_an_upload_whose_sender_went_away_mid_body_is_answered_without_a_server_error(browser, caplog):
    head = (
        b'--b\r\nContent-Disposition: form-data; name="csrfmiddlewaretoken"\r\n\r\n' + browser.csrf_token.encode()
        + b'\r\n--b\r\nContent-Disposition: form-data; name="files"; filename="a.png"\r\n'
        b"Content-Type: image/png\r\n\r\n"
    )

    response = browser.generic(
        "POST", "/", b"x" * 5000, content_type="multipart/form-data; boundary=b", **{"wsgi.input": _ClientGoneMidBody(head)}
    )

    assert response.status_code == 400
    assert not [record for record in caplog.records if record.levelname == "ERROR"]
    assert not Upload.objects.exists() and _stored_files() == []


def test_a_long_file_name_that_can_be_read_is_kept_shortened_with_its_extension(browser, digit_png):
    # 844 bytes in UTF-8, under what the parser reads, but more characters than a name is kept with.
    name = "数" * 280 + ".png"

    response = browser.post("/", {"csrfmiddlewaretoken": browser.csrf_token, "files": [_file(digit_png(0), name)]})

    assert response.status_code == 302
    assert Upload.objects.get().original_name == "数" * 251 + ".png"


def test_the_result_page_and_json_show_a_finished_prediction(alice, user, digit_png, active_checkpoint):
    prediction = _done_prediction(user, digit_png)
    page = alice.get(f"/predictions/{prediction.pk}/").content.decode()
    assert 'id="digit">7<' in page  # the first MNIST test image is a 7
    assert page.count('class="bar-row') == 10
    assert "Wrong? The right digit is" in page
    data = alice.get(f"/predictions/{prediction.pk}.json").json()
    assert data["status"] == "done" and data["digit"] == 7 and data["finished"]
    assert data["input_image_url"] == f"/predictions/{prediction.pk}/input.png"


def test_low_confidence_is_shown_as_not_sure(alice, user, digit_png, active_checkpoint, settings):
    settings.LOW_CONFIDENCE_THRESHOLD = 1.01
    prediction = _done_prediction(user, digit_png)
    assert alice.get(f"/predictions/{prediction.pk}.json").json()["low_confidence"] is True
    assert "Not sure" in alice.get(f"/predictions/{prediction.pk}/").content.decode()


def test_a_picture_that_seemed_to_hold_several_digits_says_only_one_was_read(alice, user, digit_png, active_checkpoint):
    prediction = _done_prediction(user, digit_png)
    assert 'id="several-digits" hidden>' in alice.get(f"/predictions/{prediction.pk}/").content.decode()
    assert alice.get(f"/predictions/{prediction.pk}.json").json()["several_digits"] is False
    Prediction.objects.filter(pk=prediction.pk).update(several_digits=True)
    page = alice.get(f"/predictions/{prediction.pk}/").content.decode()
    assert 'id="several-digits" >This picture seems to hold more than one digit' in page
    assert alice.get(f"/predictions/{prediction.pk}.json").json()["several_digits"] is True


def test_an_upload_page_past_the_quota_says_how_to_make_room_and_stores_nothing(alice, user, digit_png, settings):
    from classifier.models import StorageUse

    settings.UPLOAD_QUOTA_MB = 1
    StorageUse.objects.create(owner=user, bytes=2**20 - 10)

    response = alice.post("/", {"files": [_file(digit_png(0), "0.png")]})

    assert response.status_code == 403
    assert "Delete some uploads in your history to make room." in response.content.decode()
    assert not Upload.objects.exists()


@pytest.mark.django_db(transaction=True)  # the insert commits by itself, as outside a test
def test_an_upload_page_whose_images_were_stored_but_not_read_back_does_not_say_nothing_was_stored(alice, digit_png):
    from tests.classifier.fixtures import uploads_stored_then_read_back_lost

    with uploads_stored_then_read_back_lost():
        response = alice.post("/", {"files": [_file(digit_png(i), f"{i}.png") for i in range(2)]})

    assert response.status_code == 503 and "Retry-After" not in response
    page = response.content.decode()
    assert "whether they were is not known" in page and "nothing was stored" not in page
    assert Upload.objects.count() == 2


def test_a_confidence_just_below_the_threshold_never_reads_as_the_threshold(alice, user, digit_png, active_checkpoint, settings):
    settings.LOW_CONFIDENCE_THRESHOLD = 0.7
    prediction = _done_prediction(user, digit_png)
    top = 0.6996
    Prediction.objects.filter(pk=prediction.pk).update(
        confidence=top, probabilities=[(1 - top) / 9] * prediction.digit + [top] + [(1 - top) / 9] * (9 - prediction.digit)
    )
    page = alice.get(f"/predictions/{prediction.pk}/").content.decode()
    assert "69% confident" in page and "Not sure" in page
    # The top bar beside it is rounded down too, to a tenth.
    assert '<span class="bar-value">69.9%</span>' in page and "70.0%" not in page
    assert "69% · not sure" in alice.get("/history/").content.decode()
    # Rounding down must not turn an exact percentage into the one below it through binary fractions.
    Prediction.objects.filter(pk=prediction.pk).update(confidence=0.29)
    assert "29% confident" in alice.get(f"/predictions/{prediction.pk}/").content.decode()


def test_the_spinner_says_the_image_is_queued_or_being_looked_at_as_the_status_does(alice, user, digit_png):
    upload = services.upload_create(owner=user, file=io.BytesIO(digit_png(0)), source="file")
    (prediction,) = services.predictions_create(uploads=[upload], publish=False)
    queued = alice.get(f"/predictions/{prediction.pk}/").content.decode()
    assert "waiting in the queue" in queued and "looking at your image" not in queued
    Prediction.objects.filter(pk=prediction.pk).update(status=Prediction.Status.RUNNING)
    running = alice.get(f"/predictions/{prediction.pk}/").content.decode()
    assert "looking at your image" in running and "waiting in the queue" not in running


def test_the_result_page_gives_the_size_of_a_rotated_photo_as_it_is_shown(alice, user):
    from PIL import Image

    image = Image.new("L", (40, 20), 255)
    image.paste(0, (0, 0, 10, 20))
    exif = Image.Exif()
    exif[0x0112] = 6  # taken sideways: shown turned a quarter clockwise
    data = png_bytes(image, "JPEG", exif=exif.tobytes())
    response = alice.post("/", {"files": [_file(data, "photo.jpg")]})
    assert response.status_code == 302
    assert "20×40 · JPEG" in alice.get(response["Location"]).content.decode()


def test_images_are_served_to_their_owner_as_png_with_nosniff(alice, user, digit_png, active_checkpoint):
    prediction = _done_prediction(user, digit_png)
    for url in [f"/uploads/{prediction.upload_id}/image", f"/uploads/{prediction.upload_id}/image/128px",
                f"/predictions/{prediction.pk}/input.png"]:
        response = alice.get(url)
        assert response.status_code == 200
        assert response["Content-Type"] == "image/png"
        assert response["X-Content-Type-Options"] == "nosniff"
        assert response.getvalue().startswith(b"\x89PNG")
    from PIL import Image

    assert Image.open(io.BytesIO(alice.get(f"/predictions/{prediction.pk}/input.png").getvalue())).size == (28, 28)


def test_pages_that_show_a_photo_small_are_sent_a_small_copy_and_link_to_the_whole(alice, user):
    from PIL import Image, ImageDraw

    # Paper's grain, as a camera sees it: what makes a photo's lossless stored copy megabytes.
    photo = Image.merge("RGB", [Image.effect_noise((1800, 1200), 24)] * 3)
    ImageDraw.Draw(photo).text((700, 400), "7", fill=(20, 20, 20), font_size=500)
    stored = io.BytesIO()
    photo.save(stored, "JPEG", quality=95)
    upload = services.upload_create(owner=user, file=io.BytesIO(stored.getvalue()), name="photo.jpg", source="file")
    (prediction,) = services.predictions_create(uploads=[upload], publish=False)
    whole = alice.get(f"/uploads/{upload.pk}/image").getvalue()

    for side in (128, 512):
        small = alice.get(f"/uploads/{upload.pk}/image/{side}px").getvalue()
        assert Image.open(io.BytesIO(small)).size == (side, side * 2 // 3) and len(small) < len(whole) // 10
    assert alice.get(f"/uploads/{upload.pk}/image/300px").status_code == 404
    history = alice.get("/history/").content.decode()
    assert f'src="/uploads/{upload.pk}/image/128px"' in history and f"/uploads/{upload.pk}/image\"" not in history
    result = alice.get(f"/predictions/{prediction.pk}/").content.decode()
    assert f'src="/uploads/{upload.pk}/image/512px"' in result and f'href="/uploads/{upload.pk}/image"' in result


def test_the_history_tells_screen_readers_its_counts_are_of_this_page_only_when_there_are_more(
    alice, user, digit_png, monkeypatch
):
    from classifier import views

    monkeypatch.setattr(views, "HISTORY_PAGE_SIZE", 2)
    for index in range(2):
        services.upload_create(owner=user, file=io.BytesIO(digit_png(index)), name=f"{index}.png", source="file")
    assert 'data-scope=' not in alice.get("/history/").content.decode()
    services.upload_create(owner=user, file=io.BytesIO(digit_png(2)), name="2.png", source="file")
    assert 'id="history-announcement" aria-live="polite" aria-atomic="true" data-scope=" on this page"' in (
        alice.get("/history/").content.decode()
    )


def test_a_picture_already_small_is_sent_as_stored_at_every_size(alice, user, digit_png):
    from classifier import thumbnails

    upload = services.upload_create(owner=user, file=io.BytesIO(digit_png(0)), name="0.png", source="file")
    whole = alice.get(f"/uploads/{upload.pk}/image").getvalue()

    for side in thumbnails.SIDES:
        assert alice.get(f"/uploads/{upload.pk}/image/{side}px").getvalue() == whole


def test_images_are_revalidated_before_each_use_so_a_deleted_one_is_never_shown_from_a_cache(
    alice, user, digit_png, active_checkpoint, django_capture_on_commit_callbacks
):
    prediction = _done_prediction(user, digit_png)
    urls = [f"/uploads/{prediction.upload_id}/image", f"/uploads/{prediction.upload_id}/image/512px",
            f"/predictions/{prediction.pk}/input.png"]
    etags = {}
    for url in urls:
        first = alice.get(url)
        assert first["Cache-Control"] == "private, no-cache"
        etags[url] = first["ETag"]
        again = alice.get(url, HTTP_IF_NONE_MATCH=first["ETag"])
        assert again.status_code == 304 and again.content == b""  # cheap while nothing changed
        assert again["Cache-Control"] == "private, no-cache" and again["ETag"] == first["ETag"]
        assert alice.get(url, HTTP_IF_NONE_MATCH='"something-else"').status_code == 200
    with django_capture_on_commit_callbacks(execute=True):
        alice.post(f"/uploads/{prediction.upload_id}/delete")
    for url in urls:
        assert alice.get(url, HTTP_IF_NONE_MATCH=etags[url]).status_code == 404


def test_images_asked_for_if_unmodified_since_are_served_as_they_have_no_modification_date(
    alice, user, digit_png, active_checkpoint
):
    # RFC 9110, 13.1.4: a resource without a modification date ignores the header (Django's check failed it: 412).
    prediction = _done_prediction(user, digit_png)
    for url in [f"/uploads/{prediction.upload_id}/image", f"/predictions/{prediction.pk}/input.png"]:
        response = alice.get(url, HTTP_IF_UNMODIFIED_SINCE="Sat, 01 Jan 2000 00:00:00 GMT")
        assert response.status_code == 200, url


def test_an_image_the_storage_cannot_read_is_a_503_to_retry_not_a_server_error(
    alice, user, digit_png, active_checkpoint, settings, tmp_path
):
    prediction = _done_prediction(user, digit_png)
    # MEDIA_ROOT under a regular file: every read fails, as on an unmounted volume.
    (tmp_path / "not-a-folder").write_text("")
    settings.MEDIA_ROOT = str(tmp_path / "not-a-folder" / "media")

    response = alice.get(f"/uploads/{prediction.upload_id}/image")

    assert response.status_code == 503
    assert 0 < int(response["Retry-After"]) <= 60
    assert "cannot be read" in response.content.decode()


def test_feedback_from_the_page_is_recorded(alice, user, digit_png, active_checkpoint):
    prediction = _done_prediction(user, digit_png)
    response = alice.post(f"/predictions/{prediction.pk}/feedback", {"digit": "1"})
    assert response.status_code == 302
    assert Prediction.objects.get(pk=prediction.pk).feedback == 1


def test_feedback_is_thanked_for_and_shown_with_the_article_each_digit_is_read_with(
    alice, user, digit_png, active_checkpoint
):
    prediction = _done_prediction(user, digit_png)
    for digit, said in [("8", "an 8"), ("7", "a 7")]:
        page = alice.post(f"/predictions/{prediction.pk}/feedback", {"digit": digit}, follow=True).content.decode()
        assert f"Thanks! Recorded that this is {said}." in page
        assert f"You said this is {said.split()[0]} <strong>{digit}</strong>." in page


def test_the_result_page_leads_back_to_the_history_and_offers_to_delete_its_upload(alice, user, digit_png):
    upload = services.upload_create(owner=user, file=io.BytesIO(digit_png(0)), source="file")
    (prediction,) = services.predictions_create(uploads=[upload], publish=False)
    page = alice.get(f"/predictions/{prediction.pk}/").content.decode()
    assert re.search(r'<a class="button" href="/history/"[^>]*>Back to history</a>', page)
    delete = re.search(rf'<a [^>]*href="/uploads/{upload.pk}/delete"[^>]*>Delete</a>', page)
    assert delete and 'data-confirm="Delete this upload and its images? This cannot be undone."' in delete[0]
    # Confirmed there, the deletion leads to the history, not back to the result that is gone.
    response = alice.post(f"/uploads/{upload.pk}/delete", follow=True)
    assert response.redirect_chain == [("/history/", 302)]
    assert "Deleted “upload" in response.content.decode() and not Upload.objects.exists()


def test_another_user_gets_404_for_everything_of_mine(client, user, other_user, digit_png, active_checkpoint):
    prediction = _done_prediction(user, digit_png)
    client.force_login(other_user)
    for url in [
        f"/predictions/{prediction.pk}/",
        f"/predictions/{prediction.pk}.json",
        f"/predictions/{prediction.pk}/input.png",
        f"/uploads/{prediction.upload_id}/image",
        f"/uploads/{prediction.upload_id}/",
        f"/uploads/{prediction.upload_id}/delete",
    ]:
        assert client.get(url).status_code == 404, url
    assert client.post(f"/uploads/{prediction.upload_id}/delete").status_code == 404
    assert client.post(f"/uploads/{prediction.upload_id}/").status_code == 404
    assert client.post(f"/predictions/{prediction.pk}/feedback", {"digit": "3"}).status_code == 404
    assert Upload.objects.filter(pk=prediction.upload_id).exists()
    assert Prediction.objects.get(pk=prediction.pk).feedback is None
    assert 'class="history-item"' not in client.get("/history/").content.decode()


def test_staff_may_see_images_of_anyone(client, user, staff_user, digit_png):
    upload = services.upload_create(owner=user, file=io.BytesIO(digit_png(0)), source="file")
    client.force_login(staff_user)
    assert client.get(f"/uploads/{upload.pk}/image").status_code == 200


def test_history_lists_only_my_uploads_and_filters_them(alice, user, other_user, digit_png, active_checkpoint):
    mine = [_done_prediction(user, digit_png, i) for i in range(3)]  # MNIST test digits 7, 2, 1
    _done_prediction(other_user, digit_png, 4)
    page = alice.get("/history/").content.decode()
    assert page.count('class="history-item"') == 3
    sevens = alice.get("/history/", {"digit": "7"}).content.decode()
    assert sevens.count('class="history-item"') == 1
    assert alice.get("/history/", {"status": "failed"}).content.decode().count('class="history-item"') == 0
    assert alice.get("/history/", {"date_from": "2000-01-01", "date_to": "2000-01-02"}).content.decode().count(
        'class="history-item"'
    ) == 0
    assert mine[0].digit == 7


def test_a_filter_that_is_not_understood_is_named_and_the_others_still_apply(alice, user, digit_png, active_checkpoint):
    for i in range(3):  # MNIST test digits 7, 2, 1
        _done_prediction(user, digit_png, i)

    page = alice.get("/history/", {"digit": "7", "date_from": "2026-13-45"}).content.decode()

    assert page.count('class="history-item"') == 1
    assert "“2026-13-45” is not a date, so this filter is not applied." in page


def test_each_filter_not_understood_says_what_was_sent_beside_its_own_field(alice):
    page = alice.get("/history/", {"date_from": "2026-13-45", "digit": "x", "status": "lost"}).content.decode()

    boxes = re.findall(r'<div class="filter-field">.*?</div>', page, re.S)
    said = {re.search(r'name="(\w+)"', box)[1]: unescape(re.sub(r"<[^>]+>", " ", box)) for box in boxes}
    assert "“x” is not a digit from 0 to 9, so this filter is not applied." in said["digit"]
    assert "“lost” is not a status, so this filter is not applied." in said["status"]
    assert "“2026-13-45” is not a date, so this filter is not applied." in said["date_from"]
    assert "not applied" not in said["date_to"]


def test_a_filter_that_is_not_understood_is_marked_invalid_and_described_by_its_own_error(alice):
    page = alice.get("/history/", {"digit": "11", "status": "done", "date_to": "2026-13-45"}).content.decode()

    invalid = re.findall(r'<(?:input|select)[^>]*aria-invalid="true"[^>]*>', page)
    assert [re.search(r'name="(\w+)"', field)[1] for field in invalid] == ["digit", "date_to"]
    for name, label in [("digit", "digit from 0 to 9"), ("date_to", "date")]:
        field = next(field for field in invalid if f'name="{name}"' in field)
        assert f'aria-describedby="id_{name}_error"' in field
        assert re.search(rf'<span class="field-error" id="id_{name}_error">“[^<]+” is not a {label}, so this filter is not applied.</span>', page)
    assert "aria-describedby" not in re.search(r'<select[^>]*name="status"[^>]*>', page)[0]


def test_history_shows_a_page_for_dates_at_either_end_of_the_calendar_and_a_huge_batch_id(alice, user, digit_png):
    services.upload_create(owner=user, file=io.BytesIO(digit_png(0)), source="file")
    page = alice.get("/history/", {"date_from": "0001-01-01", "date_to": "9999-12-31"})
    assert page.status_code == 200 and page.content.decode().count('class="history-item"') == 1
    # Ignored like any batch that cannot be read.
    huge = alice.get("/history/", {"batch": "99999999999999999999"})
    assert huge.status_code == 200 and huge.content.decode().count('class="history-item"') == 1


def _downloaded(response) -> bytes:
    assert response.status_code == 200 and response["Cache-Control"] == "private, no-store"
    assert response["Content-Disposition"].startswith('attachment; filename="mnistsite-history-')
    return b"".join(response.streaming_content)


def test_the_history_downloads_as_a_csv_of_every_page_with_the_pages_filters(
    alice, user, other_user, digit_png, active_checkpoint
):
    import csv

    for i in range(23):  # more than a page
        services.upload_create(owner=user, file=io.BytesIO(digit_png(i % 5)), source="file")
    sevens = [_done_prediction(user, digit_png, 0) for _ in range(2)]  # MNIST test digit 7
    _done_prediction(other_user, digit_png, 0)

    page = alice.get("/history/", {"digit": "7"}).content.decode()
    link = re.search(r'href="([^"]+)" id="export-csv"', page).group(1).replace("&amp;", "&")
    filtered = _downloaded(alice.get(link)).decode("utf-8-sig")
    everything = _downloaded(alice.get("/history/export.csv")).decode("utf-8-sig")

    assert link == "/history/export.csv?digit=7"
    assert [row["upload_id"] for row in csv.DictReader(io.StringIO(filtered))] == [
        str(p.upload_id) for p in reversed(sevens)
    ]
    assert len(list(csv.DictReader(io.StringIO(everything)))) == 25


def test_the_history_downloads_as_a_zip_with_the_images(alice, user, digit_png, active_checkpoint):
    import zipfile

    prediction = _done_prediction(user, digit_png, 0)

    archive = zipfile.ZipFile(io.BytesIO(_downloaded(alice.get("/history/export.zip"))))

    assert archive.namelist() == [f"images/upload-{prediction.upload_id}.png", "history.csv"]
    assert archive.read(f"images/upload-{prediction.upload_id}.png") == alice.get(
        f"/uploads/{prediction.upload_id}/image"
    ).getvalue()


def test_a_download_holds_nobody_elses_uploads_and_needs_a_sign_in(client, alice, other_user, digit_png):
    services.upload_create(owner=other_user, file=io.BytesIO(digit_png(0)), source="file")

    assert _downloaded(alice.get("/history/export.csv")).decode("utf-8-sig").count("\n") == 1  # the header alone
    assert alice.get("/history/export.pdf").status_code == 404
    client.logout()
    assert client.get("/history/export.zip").status_code == 302


def test_downloads_beyond_the_users_cap_are_refused_until_one_ends_and_other_users_download_meanwhile(
    alice, user, other_user, digit_png, settings
):
    from django.test import Client

    settings.HISTORY_EXPORTS_PER_USER = 1
    services.upload_create(owner=user, file=io.BytesIO(digit_png(0)), source="file")
    bob = Client()
    bob.force_login(other_user)

    streaming = alice.get("/history/export.zip")  # not read yet: still holding its thread
    refused = alice.get("/history/export.csv")
    others = bob.get("/history/export.csv")

    assert streaming.status_code == 200 and others.status_code == 200
    assert refused.status_code == 429 and refused["Retry-After"] == "10"
    assert "Too many downloads at once" in refused.content.decode()
    assert "1 download of your history is still running" in " ".join(refused.content.decode().split())
    _downloaded(streaming)  # read to its end, and closed
    assert _downloaded(alice.get("/history/export.csv")).decode("utf-8-sig").count("\n") == 2


def test_the_history_and_its_downloads_only_answer_reading(alice):
    for url in ("/history/", "/history/export.csv", "/history/export.zip"):
        assert alice.post(url).status_code == 405, url


def test_history_is_paginated(alice, user, digit_png):
    for i in range(23):
        services.upload_create(owner=user, file=io.BytesIO(digit_png(i % 5)), source="file")
    first = alice.get("/history/").content.decode()
    assert first.count('class="history-item"') == 20 and "Page 1 of 2" in first
    assert alice.get("/history/", {"page": 2}).content.decode().count('class="history-item"') == 3


def _history_ids(page: str) -> list[int]:
    return [int(pk) for pk in re.findall(r'<li class="history-item" data-upload-id="(\d+)"', page)]


def _pagination_link(page: str, label: str) -> str:
    return unescape(re.search(rf'<a class="button" href="([^"]*)">{label}</a>', page).group(1))


def test_uploads_stored_between_history_pages_neither_repeat_nor_hide_rows_on_the_next_page(alice, user, digit_png):
    older = [services.upload_create(owner=user, file=io.BytesIO(digit_png(i % 5)), source="file") for i in range(23)]
    first = alice.get("/history/").content.decode()
    # Another tab, or a script, stores more before "Older" is pressed.
    newer = [services.upload_create(owner=user, file=io.BytesIO(digit_png(0)), source="file") for _ in range(5)]

    second = alice.get("/history/" + _pagination_link(first, "Older →")).content.decode()

    assert _history_ids(first) + _history_ids(second) == [upload.pk for upload in reversed(older)]
    assert "Page 2 of 2" in second and "23 uploads." in second
    # The first page, asked for again, is the history as it is now.
    back = alice.get("/history/" + _pagination_link(second, "← Newer")).content.decode()
    assert _history_ids(back) == [upload.pk for upload in reversed(older + newer)][:20]


def test_a_history_page_past_the_first_downloads_and_deletes_the_uploads_it_counts(alice, user, digit_png):
    older = [services.upload_create(owner=user, file=io.BytesIO(digit_png(i % 5)), source="file") for i in range(23)]
    first = alice.get("/history/").content.decode()
    newer = services.upload_create(owner=user, file=io.BytesIO(digit_png(0)), source="file")
    second = alice.get("/history/" + _pagination_link(first, "Older →")).content.decode()
    export = unescape(re.search(r'href="([^"]+)" id="export-csv"', second).group(1))

    exported = _downloaded(alice.get(export)).decode("utf-8-sig").splitlines()[1:]
    newest = re.search(r'<input type="hidden" name="newest" value="(\d+)">', second).group(1)

    delete_all = unescape(re.search(r'id="delete-all" href="([^"]+)"', second).group(1))
    confirmation = alice.get(delete_all).content.decode()

    assert [int(line.split(",")[0]) for line in exported] == [upload.pk for upload in reversed(older)]
    assert int(newest) == older[-1].pk < newer.pk
    assert "Delete 23 uploads?" in confirmation


def test_a_history_page_whose_counted_uploads_were_all_deleted_shows_those_stored_since(alice, user, digit_png):
    older = [services.upload_create(owner=user, file=io.BytesIO(digit_png(i % 5)), source="file") for i in range(23)]
    first = alice.get("/history/").content.decode()
    newer = services.upload_create(owner=user, file=io.BytesIO(digit_png(0)), source="file")
    here = "/history/" + _pagination_link(first, "Older →")
    services.uploads_delete(owner=user, upload_ids=[upload.pk for upload in older])

    page = alice.get(here, follow=True).content.decode()

    assert _history_ids(page) == [newer.pk]


def test_a_page_deep_in_history_skips_rows_without_reading_their_predictions(alice, user, digit_png):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    uploads = [services.upload_create(owner=user, file=io.BytesIO(digit_png(i % 5)), source="file") for i in range(23)]
    services.predictions_create(uploads=uploads, publish=False)
    with CaptureQueriesContext(connection) as queries:
        response = alice.get("/history/", {"page": 2})
    # The three oldest, newest first, each with its newest prediction's fields read for it alone.
    assert [upload.pk for upload in response.context["uploads"]] == [u.pk for u in reversed(uploads[:3])]
    assert all(upload.latest_status == "pending" for upload in response.context["uploads"])
    skipping = [query["sql"] for query in queries.captured_queries if "OFFSET" in query["sql"].upper()]
    assert skipping and not [sql for sql in skipping if "classifier_prediction" in sql]


def _reason(page: str, upload_id: int) -> re.Match | None:
    """The failure reason in the history row of ``upload_id``, as its opening tag and text; None when hidden."""
    row = re.search(rf'<li class="history-item" data-upload-id="{upload_id}".*?</li>', page, re.S).group(0)
    found = re.search(r'(<div class="muted small history-reason js-reason"[^>]*>)(.*?)</div>', row, re.S)
    assert found, row
    return None if " hidden" in found.group(1) else found


def test_a_failed_upload_in_the_history_says_why_and_the_others_say_nothing(alice, user, digit_png, active_checkpoint):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    failed = _failed_prediction(user, digit_png)
    done = _done_prediction(user, digit_png, 1)
    with CaptureQueriesContext(connection) as one_failed:
        page = alice.get("/history/").content.decode()

    reason = _reason(page, failed.upload_id)
    assert reason and reason.group(2) == "The stored image could not be read."
    assert f'title="{failed.error}"' in reason.group(1)
    assert _reason(page, done.upload_id) is None
    # The reason comes with the row's other fields: more failed rows take no more queries.
    for _ in range(3):
        _failed_prediction(user, digit_png)
    with CaptureQueriesContext(connection) as four_failed:
        page = alice.get("/history/").content.decode()
    assert page.count("The stored image could not be read.</div>") == 4
    assert len(four_failed.captured_queries) == len(one_failed.captured_queries)


def test_a_picture_without_a_digit_in_the_history_asks_for_another_picture(alice, user, active_checkpoint):
    upload = services.upload_create(owner=user, file=io.BytesIO(empty_ruled_sheet_png()), name="sheet.png",
                                    source="file")
    (prediction,) = services.predictions_create(uploads=[upload], publish=False)
    prediction = services.prediction_execute(prediction_id=prediction.pk)
    assert prediction.error.startswith(Prediction.NO_DIGIT_ERROR)

    reason = _reason(alice.get("/history/").content.decode(), upload.pk)

    assert reason and reason.group(2) == f"{prediction.error} Try another picture."


def test_a_long_failure_reason_in_the_history_is_shortened_and_whole_in_its_title(alice, user, digit_png):
    failed = _failed_prediction(user, digit_png)
    error = "The image could not be prepared: " + "a detail from the decoder, " * 10
    Prediction.objects.filter(pk=failed.pk).update(error=error)

    reason = _reason(alice.get("/history/").content.decode(), failed.upload_id)

    assert reason and reason.group(2) == error[:99] + "…"
    assert f'title="{error}"' in reason.group(1)
    assert "Try another picture" not in reason.group(2)


def test_deleting_an_upload_removes_it_and_its_file(alice, user, digit_png, active_checkpoint, django_capture_on_commit_callbacks):
    from pathlib import Path

    prediction = _done_prediction(user, digit_png)
    files = [Path(prediction.upload.image.path)]
    assert alice.get(f"/uploads/{prediction.upload_id}/delete").status_code == 200  # the confirmation page
    with django_capture_on_commit_callbacks(execute=True):
        response = alice.post(f"/uploads/{prediction.upload_id}/delete")
    assert response.status_code == 302
    assert not Upload.objects.exists()
    assert not any(f.exists() for f in files)


def test_cancelling_a_deletion_leads_back_to_the_history_page_it_was_asked_from(alice, user, digit_png):
    upload = services.upload_create(owner=user, file=io.BytesIO(digit_png(0)), name="0.png", source="file")
    here = "/history/?digit=3&page=2"
    page = alice.get(f"/uploads/{upload.pk}/delete", {"next": here}).content.decode()
    assert re.search(r'<a class="button" href="([^"]*)">Cancel</a>', page).group(1) == "/history/?digit=3&amp;page=2"
    # Another site's address is never offered; the history is, as without one.
    for elsewhere in ("https://example.com/history/", "//example.com/"):
        page = alice.get(f"/uploads/{upload.pk}/delete", {"next": elsewhere}).content.decode()
        assert re.search(r'<a class="button" href="([^"]*)">Cancel</a>', page).group(1) == "/history/"
        assert "example.com" not in page
    assert Upload.objects.filter(pk=upload.pk).exists()


def test_the_upload_page_and_a_deletions_confirmation_answer_a_head_request_as_a_get(alice, user, digit_png):
    # static/js/site.js asks a page shown again from the browser's memory with a HEAD whether the session holds.
    upload = services.upload_create(owner=user, file=io.BytesIO(digit_png(0)), name="0.png", source="file")
    for url in ("/", f"/uploads/{upload.pk}/delete"):
        response = alice.head(url)
        assert response.status_code == 200
        assert response.content == b""
    assert Upload.objects.filter(pk=upload.pk).exists()


def test_a_missing_page_is_answered_with_the_sites_own_404_page(alice):
    response = alice.get("/predictions/999999/")
    page = response.content.decode()
    assert response.status_code == 404
    assert "Nothing here" in page and 'class="site-header"' in page and "History" in page


def test_a_forbidden_page_is_answered_with_the_sites_own_403_page(rf, user):
    from django.core.exceptions import PermissionDenied
    from django.views.defaults import permission_denied

    request = rf.get("/somewhere/")
    request.user = user
    response = permission_denied(request, PermissionDenied())
    assert response.status_code == 403
    assert "You may not see this page" in response.content.decode()


def test_the_500_page_is_the_sites_own_and_needs_neither_a_request_nor_the_database(rf, django_assert_num_queries):
    from django.views.defaults import server_error

    # Django renders it with an empty context: no context processor, no user; the database may be what failed.
    with django_assert_num_queries(0):
        response = server_error(rf.get("/"))
    page = response.content.decode()
    assert response.status_code == 500
    assert "Something went wrong on our side" in page and "/static/css/site.css" in page


def _failed_prediction(owner, digit_png):
    from django.core.files.storage import default_storage

    upload = services.upload_create(owner=owner, file=io.BytesIO(digit_png(0)), name="0.png", source="file")
    (prediction,) = services.predictions_create(uploads=[upload], publish=False)
    default_storage.delete(upload.image.name)  # a stored file gone: the worker cannot read it
    prediction = services.prediction_execute(prediction_id=prediction.pk)
    assert prediction.status == Prediction.Status.FAILED, prediction.error
    return prediction


def test_its_owner_can_try_a_failed_prediction_again_once_however_often_the_button_is_pressed(
    alice, user, digit_png, django_capture_on_commit_callbacks
):
    failed = _failed_prediction(user, digit_png)
    page = alice.get(f"/predictions/{failed.pk}/").content.decode()
    assert f'action="/predictions/{failed.pk}/retry"' in page

    with django_capture_on_commit_callbacks(execute=False):
        first = alice.post(f"/predictions/{failed.pk}/retry")
        again = alice.post(f"/predictions/{failed.pk}/retry")

    (retried,) = Prediction.objects.filter(upload=failed.upload).exclude(pk=failed.pk)
    assert retried.status == Prediction.Status.PENDING
    assert first["Location"] == again["Location"] == f"/predictions/{retried.pk}/"


def test_try_again_overtaken_by_another_tabs_try_leads_to_its_prediction_and_spends_nothing(
    transactional_db, client, user, digit_png, settings
):
    from django.db import connection

    from tests.classifier.fixtures import retry_overtaken

    if connection.vendor != "postgresql":
        pytest.skip("waiting on another transaction's row lock needs PostgreSQL")
    settings.UPLOAD_THROTTLE_RATE = "1/minute"
    client.force_login(user)
    overtaken, other = _failed_prediction(user, digit_png), _failed_prediction(user, digit_png)
    answer = retry_overtaken(upload_id=overtaken.upload_id,
                             send=lambda: client.post(f"/predictions/{overtaken.pk}/retry"))

    newest = Prediction.objects.filter(upload=overtaken.upload).latest("created_at", "id")
    assert newest.pk != overtaken.pk and answer["Location"] == f"/predictions/{newest.pk}/"
    # The one image the period allows was not spent on it.
    again = client.post(f"/predictions/{other.pk}/retry")
    assert again["Location"] != f"/predictions/{other.pk}/"
    assert Prediction.objects.filter(upload=other.upload).count() == 2


def test_a_prediction_that_did_not_fail_or_is_someone_elses_is_not_run_again(
    alice, user, other_user, digit_png, active_checkpoint
):
    done = _done_prediction(user, digit_png)
    assert alice.post(f"/predictions/{done.pk}/retry")["Location"] == f"/predictions/{done.pk}/"
    theirs = _failed_prediction(other_user, digit_png)
    assert alice.post(f"/predictions/{theirs.pk}/retry").status_code == 404
    assert Prediction.objects.count() == 2


def test_pressing_try_again_twice_spends_one_upload_of_the_allowance_for_the_one_prediction_it_makes(
    alice, user, digit_png, settings, django_capture_on_commit_callbacks
):
    from classifier import throttling

    settings.UPLOAD_THROTTLE_RATE = "3/minute"
    failed = _failed_prediction(user, digit_png)
    with django_capture_on_commit_callbacks(execute=False):
        first = alice.post(f"/predictions/{failed.pk}/retry")
        again = alice.post(f"/predictions/{failed.pk}/retry")
    assert first["Location"] == again["Location"] != f"/predictions/{failed.pk}/"
    assert Prediction.objects.filter(upload=failed.upload).count() == 2
    # Of the three images a minute, the one retry took one: two are left, and no more.
    throttling.upload_allowance_spend(user_id=user.pk, images=2)
    with pytest.raises(throttling.UploadRateError):
        throttling.upload_allowance_spend(user_id=user.pk, images=1)


def _opening_tag(page: str, element_id: str) -> str:
    import re

    found = re.search(rf'<[a-z]+ [^>]*\bid="{element_id}"[^>]*>', page)
    assert found, element_id
    return found.group(0)


def _shown(page: str, element_id: str) -> bool:
    import re

    return re.search(r"\shidden[\s>]", _opening_tag(page, element_id)) is None


def test_a_failed_prediction_says_why_offers_to_try_again_and_shows_no_empty_probability_bars(alice, user, digit_png):
    failed = _failed_prediction(user, digit_png)
    page = alice.get(f"/predictions/{failed.pk}/").content.decode()
    assert _shown(page, "error-box") and failed.error and failed.error in page
    assert _shown(page, "retry-form") and not _shown(page, "no-digit-advice")
    assert not _shown(page, "bars-section")
    # No picture went to the model: the place of the one it saw says so, not "28×28" as while it waits.
    assert '<span class="placeholder muted small" id="model-input-placeholder" >nothing</span>' in page
    assert alice.get(f"/predictions/{failed.pk}.json").json()["no_digit"] is False


def test_a_picture_without_a_digit_asks_for_another_picture_instead_of_trying_the_same_one_again(
    alice, user, active_checkpoint
):
    upload = services.upload_create(owner=user, file=io.BytesIO(empty_ruled_sheet_png()), name="sheet.png",
                                    source="file")
    (prediction,) = services.predictions_create(uploads=[upload], publish=False)
    prediction = services.prediction_execute(prediction_id=prediction.pk)
    assert prediction.status == Prediction.Status.FAILED and prediction.error.startswith("No digit was found")
    page = alice.get(f"/predictions/{prediction.pk}/").content.decode()
    assert _shown(page, "error-box") and prediction.error in page
    assert _shown(page, "no-digit-advice") and not _shown(page, "retry-form")
    assert not _shown(page, "bars-section")
    assert alice.get(f"/predictions/{prediction.pk}.json").json()["no_digit"] is True


def test_a_waiting_or_finished_prediction_shows_the_probability_bars_and_no_failure(alice, user, digit_png):
    upload = services.upload_create(owner=user, file=io.BytesIO(digit_png(0)), source="file")
    (prediction,) = services.predictions_create(uploads=[upload], publish=False)
    page = alice.get(f"/predictions/{prediction.pk}/").content.decode()
    assert _shown(page, "bars-section") and not _shown(page, "error-box")
    assert alice.get(f"/predictions/{prediction.pk}.json").json()["no_digit"] is False


def test_an_upload_without_a_prediction_is_listed_as_not_read_and_leads_to_a_page_that_reads_it(
    alice, user, digit_png, settings, django_capture_on_commit_callbacks
):
    from classifier import throttling

    settings.UPLOAD_THROTTLE_RATE = "3/minute"
    upload = services.upload_create(owner=user, file=io.BytesIO(digit_png(0)), name="0.png", source="file")
    history = alice.get("/history/").content.decode()
    assert 'href="#"' not in history
    assert history.count(f'href="/uploads/{upload.pk}/"') == 2  # the picture and the name
    assert '<span class="badge js-status">not read</span>' in history

    page = alice.get(f"/uploads/{upload.pk}/")
    assert page.status_code == 200
    html = page.content.decode()
    assert "has no prediction" in html and "Read it now" in html
    assert f'src="/uploads/{upload.pk}/image/512px"' in html

    with django_capture_on_commit_callbacks(execute=False):
        first = alice.post(f"/uploads/{upload.pk}/")
        again = alice.post(f"/uploads/{upload.pk}/")  # a double click: nothing more is made, nor spent
    (prediction,) = Prediction.objects.filter(upload=upload)
    assert prediction.status == Prediction.Status.PENDING
    assert first["Location"] == again["Location"] == f"/predictions/{prediction.pk}/"
    assert alice.get(f"/uploads/{upload.pk}/")["Location"] == f"/predictions/{prediction.pk}/"
    throttling.upload_allowance_spend(user_id=user.pk, images=2)
    with pytest.raises(throttling.UploadRateError):
        throttling.upload_allowance_spend(user_id=user.pk, images=1)


def test_reading_an_upload_without_a_prediction_is_refused_past_the_upload_allowance(alice, user, digit_png, settings):
    from django.core.cache import cache

    settings.UPLOAD_THROTTLE_RATE = "1/minute"
    cache.clear()
    upload = services.upload_create(owner=user, file=io.BytesIO(digit_png(0)), source="file")
    assert alice.post("/", {"files": [_file(digit_png(1), "1.png")]}).status_code == 302
    refused = alice.post(f"/uploads/{upload.pk}/", follow=True)
    assert "Too many uploads" in refused.content.decode() and "Read it now" in refused.content.decode()
    assert not Prediction.objects.filter(upload=upload).exists()
    cache.clear()


def test_times_on_the_result_and_history_pages_name_their_zone_and_carry_the_instant_for_the_browser(
    alice, user, digit_png, settings
):
    import datetime as dt

    upload = services.upload_create(owner=user, file=io.BytesIO(digit_png(0)), name="0.png", source="file")
    (prediction,) = services.predictions_create(uploads=[upload], publish=False)
    Upload.objects.filter(pk=upload.pk).update(created_at=dt.datetime(2026, 1, 15, 12, 10, 33, tzinfo=dt.UTC))
    instant = '<time datetime="2026-01-15T12:10:33+00:00" data-local>'
    for path in (f"/predictions/{prediction.pk}/", "/history/"):
        assert f"{instant}2026-01-15 12:10 UTC</time>" in alice.get(path).content.decode(), path
    # A server in another zone writes its own time, named, and the same instant.
    settings.TIME_ZONE = "Europe/Berlin"
    for path in (f"/predictions/{prediction.pk}/", "/history/"):
        assert f"{instant}2026-01-15 13:10 CET</time>" in alice.get(path).content.decode(), path
    # The history's date filter reads days in the server's zone, which its labels name (one without summer time).
    settings.TIME_ZONE = "Asia/Tokyo"
    assert alice.get("/history/").content.decode().count("(day in JST)") == 2


def test_the_feedback_buttons_are_a_group_named_by_their_question_and_only_the_answer_is_announced(
    alice, user, digit_png, active_checkpoint
):
    import re

    prediction = _done_prediction(user, digit_png)
    page = alice.get(f"/predictions/{prediction.pk}/").content.decode()
    assert '<p class="feedback-title" id="feedback-title">Wrong? The right digit is</p>' in page
    group = re.search(r'<div class="digit-buttons" role="group" aria-labelledby="feedback-title">(.*?)</div>', page,
                      re.S)
    assert group and group.group(1).count('class="digit-button') == 10
    # The live region is the announcement of the answer alone, not the card with its ten bars.
    assert re.findall(r"<[^>]*aria-live[^>]*>", page) == [
        '<p class="visually-hidden" id="verdict-announcement" aria-live="polite" aria-atomic="true">'
    ]


def _uploaded(owner, digit_png, index: int, **kwargs) -> Upload:
    return services.upload_create(owner=owner, file=io.BytesIO(digit_png(index)), name=f"{index}.png", source="file",
                                  **kwargs)


def _messages(response) -> list[str]:
    return [str(message) for message in response.context["messages"]]


def _hidden(page: str, name: str) -> list[str]:
    return re.findall(rf'<input type="hidden" name="{name}" value="([^"]*)">', page)


def test_history_rows_have_labelled_checkboxes_and_a_delete_all_link_that_says_how_many(alice, user, digit_png):
    uploads = [_uploaded(user, digit_png, index) for index in range(3)]
    page = alice.get("/history/").content.decode()

    form = re.search(r'<form method="post" action="/history/delete" id="bulk-delete">(.*?)</form>', page, re.S)[1]
    for upload in uploads:
        assert f'<input type="checkbox" name="upload" value="{upload.pk}" id="select-{upload.pk}">' in form
        assert (f'<label for="select-{upload.pk}" class="visually-hidden">Select upload {upload.pk}, '
                f'“{upload.original_name}”</label>') in form
    assert 'name="csrfmiddlewaretoken"' in form
    assert re.search(r'<a class="button danger small-button" id="delete-all" href="/history/delete\?next=/history/"\s+'
                     r'aria-label="Delete all 3 uploads"', form)
    assert 'data-confirm="Delete 3 uploads and their images? This cannot be undone."' in form
    # Without JavaScript "Select all on this page" is a link to the page with every row ticked.
    ticked = alice.get("/history/", {"select": "page"}).content.decode()
    assert ticked.count('name="upload" value="') == ticked.count(" checked>") == 3
    assert 'href="?page=1" id="select-all-link">Clear the selection</a>' in ticked
    # A deletion leads back to the page without the rows ticked.
    assert _hidden(ticked, "next") == ["/history/", "/history/", "/history/"]


def test_without_javascript_ticked_rows_are_deleted_after_a_confirmation_page_that_says_how_many(
    browser, user, digit_png, django_capture_on_commit_callbacks
):
    uploads = [_uploaded(user, digit_png, index) for index in range(3)]
    files = [Path(upload.image.path) for upload in uploads]
    ticked = {"upload": [uploads[0].pk, uploads[2].pk], "next": "/history/?status="}

    assert browser.post("/history/delete", ticked).status_code == 403  # no security code, nothing asked or done
    confirm = browser.post("/history/delete", {**ticked, "csrfmiddlewaretoken": browser.csrf_token})

    page = confirm.content.decode()
    assert confirm.status_code == 200 and "<h1>Delete 2 uploads?</h1>" in page
    assert "This cannot be undone." in page and "0.png" in page and "2.png" in page and "1.png" not in page
    assert sorted(_hidden(page, "upload")) == sorted(str(upload.pk) for upload in (uploads[0], uploads[2]))
    assert _hidden(page, "confirmed") == ["1"] and _hidden(page, "next") == ["/history/?status="]
    assert Upload.objects.count() == 3  # the confirmation page changes nothing

    sent = {"upload": _hidden(page, "upload"), "confirmed": "1", "next": "/history/?status="}
    assert browser.post("/history/delete", sent).status_code == 403
    assert Upload.objects.count() == 3
    with django_capture_on_commit_callbacks(execute=True):
        deleted = browser.post("/history/delete", {**sent, "csrfmiddlewaretoken": browser.csrf_token})

    assert deleted.status_code == 302 and deleted["Location"] == "/history/?status="
    assert _messages(browser.get(deleted["Location"])) == ["Deleted 2 uploads."]
    assert list(Upload.objects.all()) == [uploads[1]]
    assert [file.exists() for file in files] == [False, True, False]


def test_all_uploads_that_match_the_filters_are_deleted_after_a_confirmation_page_and_no_others(
    alice, user, other_user, digit_png, active_checkpoint
):
    sevens = [_done_prediction(user, digit_png, index) for index in (0, 17)]  # MNIST test digits 7 and 7
    others = [_done_prediction(user, digit_png, index) for index in (1, 2)]  # 2 and 1
    theirs = _done_prediction(other_user, digit_png, 0)
    assert [prediction.digit for prediction in sevens + others] == [7, 7, 2, 1]
    history = alice.get("/history/", {"digit": "7"}).content.decode()
    assert 'aria-label="Delete all 2 uploads that match the filters"' in history
    assert 'href="/history/delete?digit=7&amp;next=/history/%3Fdigit%3D7"' in history

    confirm = alice.get("/history/delete", {"digit": "7"})

    page = confirm.content.decode()
    assert confirm.status_code == 200 and "<h1>Delete 2 uploads?</h1>" in page
    assert "Every upload of yours read as a 7:" in page and "This cannot be undone." in page
    assert _hidden(page, "matching") == ["1"] and _hidden(page, "next") == ["/history/?digit=7"]
    assert Upload.objects.count() == 5
    assert _hidden(page, "count") == ["2"]
    deleted = alice.post("/history/delete?digit=7", {"matching": "1", "newest": _hidden(page, "newest")[0], "count": "2",
                                                      "confirmed": "1", "next": "/history/?digit=7"}, follow=True)

    assert deleted.redirect_chain == [("/history/?digit=7", 302)]
    assert _messages(deleted) == ["Deleted 2 uploads."]
    assert set(Upload.objects.values_list("pk", flat=True)) == {others[0].upload_id, others[1].upload_id,
                                                                 theirs.upload_id}


def test_a_deletion_of_all_uploads_keeps_those_stored_after_it_was_offered(alice, user, digit_png):
    for index in range(2):
        _uploaded(user, digit_png, index)
    history = alice.get("/history/").content.decode()
    matching = re.search(r'<form method="post" action="/history/delete" id="delete-matching" hidden>(.*?)</form>',
                         history, re.S)[1]
    later = _uploaded(user, digit_png, 2)  # in another tab, before "Delete all 2" is pressed

    fields = {name: _hidden(matching, name)[0] for name in ("matching", "newest", "count", "confirmed", "next")}
    response = alice.post("/history/delete", fields, follow=True)

    assert _messages(response) == ["Deleted 2 uploads."]
    assert list(Upload.objects.all()) == [later]


def test_the_history_offers_to_delete_up_to_the_users_own_newest_upload_whatever_others_stored_since(
    alice, user, other_user, digit_png
):
    mine = _uploaded(user, digit_png, 0)
    _uploaded(other_user, digit_png, 1)

    history = alice.get("/history/").content.decode()

    assert _hidden(history, "newest") == [str(mine.pk)]


def test_other_users_uploads_are_never_deleted_or_counted_whatever_ids_are_sent(alice, user, other_user, digit_png):
    mine = _uploaded(user, digit_png, 0)
    theirs = _uploaded(other_user, digit_png, 1)

    page = alice.post("/history/delete", {"upload": [mine.pk, theirs.pk]}).content.decode()
    assert "<h1>Delete 1 upload?</h1>" in page and _hidden(page, "upload") == [str(mine.pk)]
    only_theirs = alice.post("/history/delete", {"upload": [theirs.pk], "next": "/history/"}, follow=True)
    assert _messages(only_theirs) == ["Nothing was deleted: those uploads were already gone."]
    response = alice.post("/history/delete", {"upload": [mine.pk, theirs.pk], "confirmed": "1"}, follow=True)

    assert _messages(response) == ["Deleted 1 upload."]
    assert list(Upload.objects.all()) == [theirs]
    assert alice.post("/history/delete", {"upload": [theirs.pk], "confirmed": "1"}).status_code == 302
    assert list(Upload.objects.all()) == [theirs]


def test_uploads_already_deleted_elsewhere_are_not_counted_as_deleted(alice, user, digit_png):
    ticked = [_uploaded(user, digit_png, index).pk for index in range(2)]
    services.upload_delete(upload=Upload.objects.get(pk=ticked[0]))  # in another tab, after this one ticked it

    response = alice.post("/history/delete", {"upload": ticked, "confirmed": "1"}, follow=True)

    assert _messages(response) == ["Deleted 1 upload."]
    assert not Upload.objects.exists()


def test_a_deletion_that_names_nothing_or_cannot_be_read_deletes_nothing_and_says_why(alice, user, digit_png):
    upload = _uploaded(user, digit_png, 0)
    cases = [
        ("/history/delete", {"confirmed": "1"}, "Select the uploads to delete first."),
        ("/history/delete", {"upload": ["x"], "confirmed": "1"},
         "The selection could not be read; nothing was deleted."),
        ("/history/delete", {"upload": list(range(1, 502)), "confirmed": "1"},
         "At most 500 uploads can be selected at once; nothing was deleted."),
        ("/history/delete", {"matching": "1", "confirmed": "1"},
         "The deletion could not be read; nothing was deleted."),
        # A history page from before "Delete all" carried the number confirmed.
        ("/history/delete", {"matching": "1", "newest": str(upload.pk), "confirmed": "1"},
         "The deletion could not be read; nothing was deleted."),
        # A filter the history leaves out as not understood would widen "all that match".
        ("/history/delete?digit=11", {"matching": "1", "newest": str(upload.pk), "count": "1", "confirmed": "1"},
         "The filters could not be read, so nothing was deleted. Correct them and try again."),
    ]
    for url, data, said in cases:
        response = alice.post(url, data, follow=True)
        assert _messages(response) == [said], data
    assert _messages(alice.get("/history/delete", {"digit": "11"}, follow=True)) == [cases[-1][2]]
    # So would a batch's address not understood, read as no batch: every upload.
    assert _messages(alice.get("/history/delete", {"batch": f"{upload.pk},x"}, follow=True)) == [cases[-1][2]]
    assert list(Upload.objects.all()) == [upload]
    assert 'id="delete-all"' not in alice.get("/history/", {"digit": "11"}).content.decode()
    batch = alice.get("/history/", {"batch": f"{upload.pk},x"}).content.decode()
    assert 'id="delete-all"' not in batch and "This batch&#x27;s address was not understood" in batch


def test_a_deletion_by_filters_too_long_for_one_request_says_how_many_are_left_to_delete(
    alice, user, digit_png, monkeypatch
):
    from classifier import views

    for index in range(5):
        _uploaded(user, digit_png, index)
    monkeypatch.setattr(services.deletion, "UPLOADS_DELETE_BATCH", 2)
    monkeypatch.setattr(views, "UPLOADS_DELETE_SECONDS", 0)
    fields = {"matching": "1", "newest": str(Upload.objects.latest("pk").pk), "count": "5", "confirmed": "1"}

    response = alice.post("/history/delete", fields, follow=True)

    assert _messages(response) == [
        "Deleted 2 uploads.",
        "3 more uploads still match: there were too many to delete at once. Delete them again to go on.",
    ]
    assert Upload.objects.count() == 3
    assert 'aria-label="Delete all 3 uploads"' in response.content.decode()


def _finished_meanwhile(upload: Upload) -> None:
    """The worker finishes the upload's prediction: from now on it matches "status: done"."""
    Prediction.objects.filter(upload=upload).update(status="done", digit=1, confidence=0.9)


def test_all_that_match_deletes_no_upload_that_came_to_match_after_the_confirmation_page_and_asks_again(
    alice, user, digit_png
):
    done = [_uploaded(user, digit_png, index) for index in range(2)]
    for upload in done:
        services.predictions_create(uploads=[upload], publish=False)
        _finished_meanwhile(upload)
    waiting = _uploaded(user, digit_png, 2)
    services.predictions_create(uploads=[waiting], publish=False)
    page = alice.get("/history/delete", {"status": "done"}).content.decode()
    assert "<h1>Delete 2 uploads?</h1>" in page and _hidden(page, "count") == ["2"]
    _finished_meanwhile(waiting)  # between the confirmation page and the click

    old = {name: _hidden(page, name)[0] for name in ("matching", "newest", "count", "confirmed", "next")}
    again = alice.post("/history/delete?status=done", old)

    # Asked again on a page of its own, so that reloading it asks again instead of sending the form once more.
    assert again.status_code == 302 and again["Location"] == "/history/delete?status=done"
    assert Upload.objects.count() == 3
    shown = alice.get(again["Location"])
    text = unescape(shown.content.decode())
    assert "<h1>Delete 3 uploads?</h1>" in text and _hidden(text, "count") == ["3"]
    assert _messages(shown) == [
        "Nothing was deleted: more uploads match now than the 2 you confirmed. Look at them again before deleting."
    ]
    assert '<a href="/history/?status=done">Look at them in your history</a>' in text
    # The first form sent once more (a reload of the old page) is refused again: it agreed to 2.
    resent = alice.post("/history/delete?status=done", old, follow=True)
    assert resent.redirect_chain == [("/history/delete?status=done", 302)] and Upload.objects.count() == 3
    assert _messages(resent) == _messages(shown) and _hidden(unescape(resent.content.decode()), "count") == ["3"]
    fields = {name: _hidden(text, name)[0] for name in ("matching", "newest", "count", "confirmed", "next")}
    assert _messages(alice.post("/history/delete?status=done", fields, follow=True)) == ["Deleted 3 uploads."]
    assert not Upload.objects.exists()


def test_delete_all_from_the_history_page_deletes_no_upload_that_came_to_match_after_the_page_was_shown(
    alice, user, digit_png
):
    done = _uploaded(user, digit_png, 0)
    services.predictions_create(uploads=[done], publish=False)
    _finished_meanwhile(done)
    waiting = _uploaded(user, digit_png, 1)
    services.predictions_create(uploads=[waiting], publish=False)
    history = alice.get("/history/", {"status": "done"}).content.decode()
    matching = re.search(r'<form method="post" action="/history/delete\?status=done" id="delete-matching" hidden>'
                         r'(.*?)</form>', history, re.S)[1]
    assert _hidden(matching, "count") == ["1"]
    _finished_meanwhile(waiting)

    fields = {name: _hidden(matching, name)[0] for name in ("matching", "newest", "count", "confirmed", "next")}
    response = alice.post("/history/delete?status=done", fields, follow=True)

    assert response.redirect_chain == [("/history/delete?status=done", 302)]
    assert "<h1>Delete 2 uploads?</h1>" in response.content.decode()
    assert Upload.objects.count() == 2


def test_delete_all_asked_again_because_more_came_to_match_still_leads_back_to_the_history_page_it_came_from(
    alice, user, digit_png
):
    from classifier.views import HISTORY_PAGE_SIZE

    done = [_uploaded(user, digit_png, index) for index in range(HISTORY_PAGE_SIZE + 1)]
    services.predictions_create(uploads=done, publish=False)
    Prediction.objects.update(status="done", digit=1, confidence=0.9)
    waiting = _uploaded(user, digit_png, 0)
    services.predictions_create(uploads=[waiting], publish=False)
    history = alice.get("/history/", {"status": "done", "page": "2"}).content.decode()
    matching = re.search(r'<form method="post" action="/history/delete\?status=done" id="delete-matching" hidden>'
                         r'(.*?)</form>', history, re.S)[1]
    assert _hidden(matching, "next") == ["/history/?status=done&amp;page=2"]
    _finished_meanwhile(waiting)

    fields = {name: unescape(_hidden(matching, name)[0]) for name in ("matching", "newest", "count", "confirmed",
                                                                      "next")}
    again = alice.post("/history/delete?status=done", fields, follow=True)

    page = unescape(again.content.decode())
    assert f"<h1>Delete {HISTORY_PAGE_SIZE + 2} uploads?</h1>" in page
    assert _hidden(page, "next") == ["/history/?status=done&page=2"]
    assert '<a class="button" href="/history/?status=done&page=2">Cancel</a>' in page
    assert '<a href="/history/?status=done">Look at them in your history</a>' in page
    confirmed = {name: _hidden(page, name)[0] for name in ("matching", "newest", "count", "confirmed", "next")}
    deleted = alice.post(again.redirect_chain[-1][0], confirmed)
    assert deleted["Location"] == "/history/?status=done&page=2" and not Upload.objects.exists()


def test_delete_all_without_javascript_leads_back_to_the_history_page_it_was_asked_from(alice, user, digit_png):
    _uploaded(user, digit_png, 0)
    history = alice.get("/history/", {"digit": "", "page": "1"}).content.decode()
    link = unescape(re.search(r'id="delete-all" href="([^"]*)"', history)[1])
    assert link == "/history/delete?digit=&next=/history/%3Fdigit%3D%26page%3D1"

    page = unescape(alice.get(link).content.decode())

    assert _hidden(page, "next") == ["/history/?digit=&page=1"]
    assert '<a href="/history/?digit=">Look at it in your history</a>' in page


def test_delete_all_by_filters_that_the_uploads_no_longer_match_says_so_rather_than_that_they_are_gone(
    alice, user, digit_png
):
    queued = [_uploaded(user, digit_png, index) for index in range(2)]
    services.predictions_create(uploads=queued, publish=False)
    history = alice.get("/history/", {"status": "pending"}).content.decode()
    matching = re.search(r'<form method="post" action="/history/delete\?status=pending" id="delete-matching" hidden>'
                         r'(.*?)</form>', history, re.S)[1]
    assert _hidden(matching, "count") == ["2"]
    for upload in queued:
        _finished_meanwhile(upload)  # the worker finished them before "Delete all 2" was confirmed

    fields = {name: _hidden(matching, name)[0] for name in ("matching", "newest", "count", "confirmed", "next")}
    response = alice.post("/history/delete?status=pending", fields, follow=True)

    assert _messages(response) == [
        "Nothing was deleted: none of the uploads you confirmed match these filters any more."
    ]
    assert Upload.objects.count() == 2


def test_delete_all_without_filters_of_uploads_deleted_meanwhile_says_they_were_already_gone(alice, user, digit_png):
    uploads = [_uploaded(user, digit_png, index) for index in range(2)]
    history = alice.get("/history/").content.decode()
    matching = re.search(r'<form method="post" action="/history/delete" id="delete-matching" hidden>(.*?)</form>',
                         history, re.S)[1]
    services.uploads_delete(owner=user, upload_ids=[upload.pk for upload in uploads])  # in another tab

    fields = {name: _hidden(matching, name)[0] for name in ("matching", "newest", "count", "confirmed", "next")}
    response = alice.post("/history/delete", fields, follow=True)

    assert _messages(response) == ["Nothing was deleted: those uploads were already gone."]


def test_the_history_says_how_many_uploads_match_and_offers_to_download_it_or_them(
    alice, user, digit_png, active_checkpoint
):
    def summary(**query):
        page = alice.get("/history/", query).content.decode()
        return " ".join(re.search(r'<p class="muted small">(.*?)<a href="/history/export.csv', page, re.S)[1].split())

    _done_prediction(user, digit_png, 0)  # a 7

    assert summary() == "1 upload. Download it:"
    assert summary(digit="7") == "1 upload matches the filters. Download it:"
    _done_prediction(user, digit_png, 17)  # another 7
    assert summary() == "2 uploads. Download all:"
    assert summary(digit="7") == "2 uploads match the filters. Download them:"


def test_all_that_match_stops_at_the_number_confirmed_and_says_how_many_came_to_match_while_it_ran(
    alice, user, digit_png, monkeypatch
):
    from classifier import views

    uploads = [_uploaded(user, digit_png, index) for index in range(4)]
    for upload in uploads:
        services.predictions_create(uploads=[upload], publish=False)
    for upload in uploads[2:]:
        _finished_meanwhile(upload)
    monkeypatch.setattr(services.deletion, "UPLOADS_DELETE_BATCH", 1)
    finished_during = []

    def two_older_ones_finish_after_the_first_batch(execute, sql, params, many, context):
        result = execute(sql, params, many, context)
        if sql.startswith('DELETE FROM "classifier_upload"') and not finished_during:
            finished_during.append(sql)
            for upload in uploads[:2]:
                _finished_meanwhile(upload)
        return result

    fields = {"matching": "1", "newest": str(uploads[-1].pk), "count": "2", "confirmed": "1"}
    with connection.execute_wrapper(two_older_ones_finish_after_the_first_batch):
        response = alice.post("/history/delete?status=done", fields, follow=True)

    assert Upload.objects.count() == 2
    assert _messages(response) == [
        "Deleted 2 uploads.",
        "2 more uploads came to match while the deletion ran and were left, as you confirmed 2. "
        "Delete again to remove them too.",
    ]
    assert views.UPLOADS_DELETE_SECONDS > 1  # the deadline played no part


@pytest.mark.django_db(transaction=True)
def test_a_deletion_the_database_stops_answering_partway_through_says_how_many_went_in_a_503(
    alice, user, digit_png, monkeypatch
):
    for index in range(5):
        _uploaded(user, digit_png, index)
    monkeypatch.setattr(services.deletion, "UPLOADS_DELETE_BATCH", 2)
    fields = {"matching": "1", "newest": str(Upload.objects.latest("pk").pk), "count": "5", "confirmed": "1"}
    with connection.execute_wrapper(upload_deletions_lost_in_the_second_batch([])):
        response = alice.post("/history/delete", fields)

    assert response.status_code == 503 and response["Retry-After"]
    assert ("The database stopped answering partway through: 2 uploads were deleted, the others not."
            in response.content.decode())
    assert Upload.objects.count() == 3


@pytest.mark.django_db(transaction=True)
def test_a_deletion_the_database_cannot_answer_before_it_begins_says_nothing_was_deleted_in_a_503(
    alice, user, digit_png
):
    from django.db import OperationalError

    upload = _uploaded(user, digit_png, 0)

    def unreachable_once_counting(execute, sql, params, many, context):
        if "COUNT(" in sql:
            raise OperationalError("could not connect to server: Connection refused")
        return execute(sql, params, many, context)

    fields = {"matching": "1", "newest": str(upload.pk), "count": "1", "confirmed": "1"}
    with connection.execute_wrapper(unreachable_once_counting):
        response = alice.post("/history/delete", fields)

    assert response.status_code == 503
    assert "temporarily unavailable and nothing was deleted" in response.content.decode()
    assert list(Upload.objects.all()) == [upload]


CHOOSE_AGAIN = "choose the other files again"


def test_a_refusal_sent_to_a_browser_without_the_page_script_asks_for_the_other_files_to_be_chosen_again(
    alice, digit_png
):
    # The browser sent the form itself, and forgets a file input's files when the page comes back.
    response = alice.post("/", {"files": [_file(digit_png(0), "ok.png"), _file(b"nope", "bad.png")]})
    assert response.status_code == 400 and CHOOSE_AGAIN in response.content.decode()


def test_a_refusal_that_leaves_nothing_to_choose_again_or_keeps_the_files_chosen_does_not_ask_for_them_again(
    alice, digit_png
):
    from PIL import Image

    only_one = alice.post("/", {"files": [_file(b"nope", "bad.png")]})
    kept_by_the_script = alice.post(
        "/", {"files": [_file(digit_png(0), "ok.png"), _file(b"nope", "bad.png")]}, HTTP_X_REQUESTED_WITH="XMLHttpRequest"
    )
    blank = "data:image/png;base64," + base64.b64encode(png_bytes(Image.new("RGBA", (280, 280)))).decode()
    drawing = alice.post("/", {"canvas": blank})
    for response in (only_one, kept_by_the_script, drawing):
        assert response.status_code == 400 and CHOOSE_AGAIN not in response.content.decode()


def _pending_prediction(owner, digit_png, *, waited_seconds: float = 0) -> Prediction:
    upload = services.upload_create(owner=owner, file=io.BytesIO(digit_png(0)), source="file")
    (prediction,) = services.predictions_create(uploads=[upload], publish=False)
    if waited_seconds:
        Prediction.objects.filter(pk=prediction.pk).update(created_at=timezone.now() - dt.timedelta(seconds=waited_seconds))
    return prediction


STALLED_NOTE = "No worker is taking predictions right now. Yours is kept and will run when one is back; " \
               "this page updates by itself."


def test_a_result_page_waiting_on_a_queue_no_worker_takes_says_so_and_goes_on_updating(alice, user, digit_png, settings):
    settings.PREDICTION_WAIT_STALLED_AFTER_SECONDS = 10
    fresh = _pending_prediction(user, digit_png)
    assert alice.get(f"/predictions/{fresh.pk}.json").json()["queue_stalled"] is False
    page = alice.get(f"/predictions/{fresh.pk}/").content.decode()
    assert not _shown(page, "stalled-note") and re.search(r'id="stalled-note"[^>]*></p>', page)

    # Nothing taken for a minute: no worker is there to take it.
    Prediction.objects.filter(pk=fresh.pk).update(created_at=fresh.created_at - dt.timedelta(seconds=60))
    assert alice.get(f"/predictions/{fresh.pk}.json").json()["queue_stalled"] is True
    page = alice.get(f"/predictions/{fresh.pk}/").content.decode()
    assert _shown(page, "stalled-note") and re.search(rf'id="stalled-note"[^>]*>{re.escape(STALLED_NOTE)}</p>', page)
    # Still waiting for the answer: the page without JavaScript goes on reloading itself.
    assert '<noscript><meta http-equiv="refresh"' in page and "reloads itself" in page


@pytest.mark.parametrize("skew_hours", [-1, 1], ids=["web-clock-behind", "web-clock-ahead"])
def test_a_stall_is_judged_on_the_databases_clock_whatever_the_web_hosts_clock_says(
    alice, user, digit_png, settings, monkeypatch, skew_hours
):
    settings.PREDICTION_WAIT_STALLED_AFTER_SECONDS = 10
    stuck = _pending_prediction(user, digit_png, waited_seconds=60)  # created at the database's now
    fresh = _pending_prediction(user, digit_png)
    host_clock = timezone.now
    monkeypatch.setattr(timezone, "now", lambda: host_clock() + dt.timedelta(hours=skew_hours))

    # Waiting a minute on the database's clock, with no worker taking anything: stalled, on any host.
    assert alice.get(f"/predictions/{stuck.pk}.json").json()["queue_stalled"] is True
    Prediction.objects.filter(pk=stuck.pk).delete()
    # Just made: not stalled, however far ahead the host's clock runs.
    assert alice.get(f"/predictions/{fresh.pk}.json").json()["queue_stalled"] is False


def test_a_result_page_behind_a_backlog_that_a_worker_is_taking_says_nothing_of_a_stall(alice, user, digit_png, settings):
    settings.PREDICTION_WAIT_STALLED_AFTER_SECONDS = 10
    waiting = _pending_prediction(user, digit_png, waited_seconds=60)
    taken = _pending_prediction(user, digit_png)
    Prediction.objects.filter(pk=taken.pk).update(status=Prediction.Status.RUNNING, started_at=timezone.now())
    assert alice.get(f"/predictions/{waiting.pk}.json").json()["queue_stalled"] is False
    page = alice.get(f"/predictions/{waiting.pk}/").content.decode()
    assert not _shown(page, "stalled-note") and re.search(r'id="stalled-note"[^>]*></p>', page)
    # A prediction a worker took, or finished, waits on no queue.
    assert alice.get(f"/predictions/{taken.pk}.json").json()["queue_stalled"] is False


def test_a_failed_prediction_tried_again_leads_to_the_newer_result_instead_of_offering_another_try(
    alice, user, digit_png, django_capture_on_commit_callbacks
):
    failed = _failed_prediction(user, digit_png)
    with django_capture_on_commit_callbacks(execute=False):
        newer = alice.post(f"/predictions/{failed.pk}/retry")["Location"]

    old = alice.get(f"/predictions/{failed.pk}/").content.decode()
    assert re.search(rf'Tried again: <a href="{newer}">see the newer result</a>', old)
    assert 'id="retry-form"' not in old and "Try again</button>" not in old
    assert failed.error in old  # why this one failed is still said
    assert "Tried again" not in alice.get(newer).content.decode()


def test_a_failed_prediction_not_tried_again_says_nothing_of_a_newer_result(alice, user, digit_png):
    failed = _failed_prediction(user, digit_png)
    page = alice.get(f"/predictions/{failed.pk}/").content.decode()
    assert "Tried again" not in page and _shown(page, "retry-form")


def test_a_from_date_after_the_to_date_is_named_beside_from_and_neither_date_is_applied(
    alice, user, digit_png, active_checkpoint
):
    _done_prediction(user, digit_png)
    page = alice.get("/history/", {"date_from": "2026-12-10", "date_to": "2026-12-01"}).content.decode()

    assert re.search(r'<span class="field-error" id="id_date_from_error">“From”, 2026-12-10, is after “To”, '
                     r"2026-12-01, so neither date is applied.</span>", page)
    assert re.search(r'<input[^>]*name="date_from"[^>]*aria-invalid="true"', page)
    assert page.count('class="history-item"') == 1 and "No uploads match" not in page
    # Nor is "all that match" offered for deletion while a filter is not applied.
    assert 'id="delete-all"' not in page
    # The same day at both ends is one day, not an error.
    same_day = alice.get("/history/", {"date_from": "2026-12-01", "date_to": "2026-12-01"}).content.decode()
    assert "neither date is applied" not in same_day


def test_a_filter_sent_more_than_once_is_named_and_not_applied_while_the_others_are(
    alice, user, digit_png, active_checkpoint
):
    for i in range(3):  # MNIST test digits 7, 2, 1
        _done_prediction(user, digit_png, i)

    page = alice.get("/history/?digit=7&digit=2&status=done").content.decode()

    assert re.search(r'<span class="field-error" id="id_digit_error">“Digit” was sent twice, as “7” and “2”, '
                     r"so this filter is not applied.</span>", page)
    assert page.count('class="history-item"') == 3  # neither 7 nor 2: every done upload
    assert re.search(r'<select[^>]*name="digit"[^>]*aria-invalid="true"', page)
    assert "aria-invalid" not in re.search(r'<select[^>]*name="status"[^>]*>', page)[0]
    three = alice.get("/history/?status=done&status=failed&status=pending").content.decode()
    assert "“Status” was sent 3 times, as “done”, “failed” and “pending”, so this filter is not applied." in unescape(
        three
    )
    # Deleting "all that match" such filters deletes nothing: which upload was meant is not known.
    refused = alice.get("/history/delete?digit=7&digit=2", follow=True)
    assert "nothing was deleted" in refused.content.decode() and Upload.objects.count() == 3


def test_without_javascript_a_history_page_with_rows_still_waiting_offers_a_reload_and_never_reloads_by_itself(
    alice, user, digit_png, active_checkpoint
):
    _done_prediction(user, digit_png)
    finished = alice.get("/history/").content.decode()
    assert 'id="noscript-note"' not in finished

    waiting = _pending_prediction(user, digit_png)
    page = alice.get("/history/").content.decode()
    assert re.search(r'<noscript><p class="muted small" id="noscript-note">[^<]*reload this page\. <a href="/history/">', page)
    # A reload of its own would untick the rows ticked for deletion.
    assert 'http-equiv="refresh"' not in page
    Prediction.objects.filter(pk=waiting.pk).update(status=Prediction.Status.RUNNING)
    assert 'id="noscript-note"' in alice.get("/history/").content.decode()
    # Only the rows shown count: a page of finished rows says nothing of those on another.
    assert 'id="noscript-note"' not in alice.get("/history/", {"status": "done"}).content.decode()


@pytest.mark.django_db(transaction=True)  # the deletion commits before the insert, as another tab's would
def test_an_upload_whose_account_is_deleted_meanwhile_is_a_403_that_says_nothing_was_stored(alice, user, digit_png):
    wrapper, deleted = account_deleted_just_before_the_insert(user)
    with connection.execute_wrapper(wrapper):
        response = alice.post("/", {"files": [_file(digit_png(3), "3.png")]})
    assert deleted and response.status_code == 403
    assert services.UPLOAD_OWNER_DELETED in unescape(response.content.decode())
    assert not Upload.objects.exists()


def _logged_in_again_after(client, form_post, *, url: str, data: dict | None = None):
    """A form sent after the session ended (logged out in another tab), then the log-in it leads to: the pages that
    follow, from the log-in page's redirect on."""
    client.post(reverse("logout"), follow=True)
    sent = form_post(url, data or {})
    assert sent.status_code == 302 and sent["Location"].startswith(reverse("login") + "?next=")
    assert client.get(sent["Location"]).status_code == 200
    return client.post(sent["Location"], {"username": "alice", "password": "correct horse battery"}, follow=True)


def test_feedback_sent_after_the_session_ended_leads_back_to_its_result_once_logged_in_saying_nothing_was_recorded(
    alice, user, other_user, digit_png, active_checkpoint
):
    done = _done_prediction(user, digit_png)
    shown = _logged_in_again_after(alice, alice.post, url=f"/predictions/{done.pk}/feedback", data={"digit": "3"})
    assert shown.status_code == 200 and shown.redirect_chain[-1] == (f"/predictions/{done.pk}/", 302)
    assert _messages(shown) == ["Nothing was recorded: choose the right digit again."]
    done.refresh_from_db()
    assert done.feedback is None  # a GET records nothing
    theirs = _done_prediction(other_user, digit_png)
    assert alice.get(f"/predictions/{theirs.pk}/feedback").status_code == 404


def test_try_again_sent_after_the_session_ended_runs_nothing_and_leads_back_to_its_button_once_logged_in(
    alice, user, other_user, digit_png
):
    failed = _failed_prediction(user, digit_png)
    shown = _logged_in_again_after(alice, alice.post, url=f"/predictions/{failed.pk}/retry")
    assert shown.status_code == 200 and shown.redirect_chain[-1] == (f"/predictions/{failed.pk}/", 302)
    assert _messages(shown) == ["The model was not run again: press Try again to run it."]
    assert Prediction.objects.filter(upload=failed.upload).count() == 1
    # Tried again meanwhile, it leads to the newer result, with nothing to press again.
    newer, _ = services.prediction_retry(prediction=failed)
    again = alice.get(f"/predictions/{failed.pk}/retry", follow=True)
    assert again.redirect_chain == [(f"/predictions/{newer.pk}/", 302)] and _messages(again) == []
    theirs = _failed_prediction(other_user, digit_png)
    assert alice.get(f"/predictions/{theirs.pk}/retry").status_code == 404


def test_ticked_rows_sent_after_the_session_ended_are_not_asked_again_as_a_deletion_of_every_upload(
    alice, user, digit_png
):
    uploads = [_uploaded(user, digit_png, index) for index in range(3)]
    shown = _logged_in_again_after(
        alice, alice.post, url="/history/delete", data={"upload": [uploads[0].pk], "next": "/history/"}
    )
    text = unescape(shown.content.decode())
    assert shown.redirect_chain[-1] == ("/history/", 302) and "Delete 3 uploads?" not in text
    assert _messages(shown) == ["Nothing was deleted: tick the uploads to delete again, or use “Delete all”."]
    assert Upload.objects.count() == 3
    # "Delete all" without filters names the page it was asked from, and is still asked on its page.
    page = alice.get("/history/").content.decode()
    link = unescape(re.search(r'id="delete-all" href="([^"]+)"', page)[1])
    assert "<h1>Delete 3 uploads?</h1>" in alice.get(link).content.decode()


def test_delete_all_without_filters_asked_again_because_more_came_to_match_is_asked_on_its_page(alice, user, digit_png):
    _uploaded(user, digit_png, 0)
    page = alice.get("/history/delete", {"next": "/history/"}).content.decode()
    fields = {name: _hidden(page, name)[0] for name in ("matching", "newest", "count", "confirmed", "next")}
    # Two match within the bound sent, one more than the count confirmed: it is asked again.
    fields["newest"] = str(_uploaded(user, digit_png, 1).pk)
    again = alice.post("/history/delete", fields, follow=True)
    assert again.redirect_chain[0][0] == "/history/delete?next=/history/"
    assert "<h1>Delete 2 uploads?</h1>" in again.content.decode() and Upload.objects.count() == 2


HISTORY_STALLED_NOTE = "No worker is taking predictions right now. The uploads still queued are kept, and are read " \
                       "when one is back."


def test_a_history_page_with_uploads_queued_where_no_worker_takes_them_says_so_as_their_result_pages_do(
    alice, user, digit_png, settings
):
    settings.PREDICTION_WAIT_STALLED_AFTER_SECONDS = 10
    fresh = _pending_prediction(user, digit_png)
    page = alice.get("/history/").content.decode()
    assert not _shown(page, "history-stalled") and re.search(r'id="history-stalled"[^>]*></p>', page)

    # Nothing taken for a minute: no worker is there to take it.
    Prediction.objects.filter(pk=fresh.pk).update(created_at=fresh.created_at - dt.timedelta(seconds=60))
    page = alice.get("/history/").content.decode()
    assert _shown(page, "history-stalled")
    assert re.search(rf'id="history-stalled"[^>]*>{re.escape(HISTORY_STALLED_NOTE)}</p>', page)
    # A page whose rows wait on nothing says nothing of it.
    assert 'id="history-stalled"' not in alice.get("/history/", {"status": "done"}).content.decode()
    _uploaded(user, digit_png, 1)
    Prediction.objects.filter(pk=fresh.pk).update(status=Prediction.Status.FAILED, error="lost")
    assert not _shown(alice.get("/history/").content.decode(), "history-stalled")


def test_several_predictions_are_answered_at_once_as_each_alone_leaving_out_others_and_deleted_ones(
    alice, user, other_user, digit_png, settings
):
    settings.PREDICTION_WAIT_STALLED_AFTER_SECONDS = 10
    mine = [_pending_prediction(user, digit_png, waited_seconds=60) for _ in range(2)]
    theirs = _pending_prediction(other_user, digit_png)
    gone = _pending_prediction(user, digit_png)
    services.upload_delete(upload=gone.upload)

    answer = alice.get("/predictions.json", {"id": [mine[1].pk, theirs.pk, gone.pk, mine[0].pk]})

    assert answer.status_code == 200
    assert answer.json()["predictions"] == [alice.get(f"/predictions/{p.pk}.json").json() for p in mine]
    assert all(payload["queue_stalled"] for payload in answer.json()["predictions"])
    assert "no-store" in answer["Cache-Control"]  # as each alone: nobody's results kept by a browser or a proxy


@pytest.mark.parametrize("query", ["", "?id=x", "?id=0", f"?id={2**63}", "&".join(["?id=1"] + [f"id={n}" for n in
                                                                                             range(2, 23)])])
def test_predictions_asked_for_by_anything_but_a_pages_worth_of_ids_are_a_bad_request(alice, query):
    answer = alice.get(f"/predictions.json{query}")

    assert answer.status_code == 400
    assert "?id=1&id=2" in answer.json()["error"]


def test_the_history_page_names_its_rows_predictions_for_one_poll(alice, user, digit_png):
    prediction = _pending_prediction(user, digit_png)

    page = alice.get("/history/").content.decode()

    assert 'data-predictions-url="/predictions.json"' in page
    assert f'data-prediction-id="{prediction.pk}"' in page
