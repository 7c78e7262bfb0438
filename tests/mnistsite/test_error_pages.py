"""Error pages: requests Django refuses before any view runs, and server errors, still get a readable page."""
import io

import pytest
from django.test import override_settings
from PIL import Image


def _png() -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (8, 8), 255).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.django_db
@override_settings(DATA_UPLOAD_MAX_NUMBER_FILES=2)
def test_too_many_files_sent_to_another_page_get_the_bad_request_page_and_change_nothing(user):
    from django.core.files.uploadedfile import SimpleUploadedFile
    from django.test import Client
    from django.urls import reverse

    from classifier.models import Upload

    # The CSRF check reads the body before any view runs (the upload page answers such a body itself).
    browser = Client(enforce_csrf_checks=True)
    browser.force_login(user)
    browser.get("/")  # the CSRF cookie, without which the body is not even read
    files = [SimpleUploadedFile(f"d{i}.png", _png(), content_type="image/png") for i in range(3)]
    response = browser.post(reverse("logout"), {"files": files})
    assert response.status_code == 400
    assert b"Nothing was stored" in response.content
    assert Upload.objects.count() == 0
    assert browser.get("/").status_code == 200  # still signed in


@pytest.mark.django_db
def test_the_server_error_page_gives_the_reference_its_log_line_names(client, user):
    from tests.mnistsite.test_request_id import console_log, damaged_prediction

    prediction = damaged_prediction(owner=user)
    client.force_login(user)
    client.raise_request_exception = False

    with console_log() as log:
        response = client.get(f"/predictions/{prediction.pk}/", HTTP_X_REQUEST_ID="page-500")

    assert response.status_code == 500
    assert response["X-Request-ID"] == "page-500"
    assert '<code class="request-id">page-500</code>' in response.content.decode()
    assert " ERROR [page-500] django.request Internal Server Error: " in log.getvalue()
