"""Requests Django refuses before any view runs still get a readable page."""
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
