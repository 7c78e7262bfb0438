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
def test_too_many_files_get_the_bad_request_page_and_store_nothing(client, user):
    from django.core.files.uploadedfile import SimpleUploadedFile

    from classifier.models import Upload

    client.force_login(user)
    files = [SimpleUploadedFile(f"d{i}.png", _png(), content_type="image/png") for i in range(3)]
    response = client.post("/", {"files": files})
    assert response.status_code == 400
    assert b"Nothing was stored" in response.content
    assert Upload.objects.count() == 0
