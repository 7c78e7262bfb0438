"""The request size limit: a body too large for any valid upload, or of unknown length, is refused unread."""
import pytest


@pytest.mark.parametrize("path", ["/", "/accounts/login/", "/admin/login/"])
def test_an_anonymous_page_post_larger_than_any_valid_upload_is_413_before_it_is_read(client, settings, path):
    settings.UPLOAD_MAX_BYTES, settings.UPLOAD_MAX_FILES = 1000, 1
    response = client.generic(
        "POST", path, b"x" * 10, content_type="multipart/form-data; boundary=zzz", CONTENT_LENGTH=str(3 * 1024 * 1024)
    )
    assert response.status_code == 413
    assert "at most 1 images of at most 1,000 bytes" in response.content.decode()


@pytest.mark.django_db
def test_a_page_upload_sent_chunked_is_411_saying_to_send_a_content_length_and_stores_nothing(client, user):
    from django.core.files.uploadedfile import SimpleUploadedFile
    from django.test.client import BOUNDARY, MULTIPART_CONTENT, encode_multipart

    from classifier.models import Upload
    from tests.api.conftest import seven_png

    client.force_login(user)
    body = encode_multipart(BOUNDARY, {"files": SimpleUploadedFile("seven.png", seven_png(), "image/png")})

    # As gunicorn passes a chunked body: no CONTENT_LENGTH, so Django would read nothing of it.
    response = client.generic("POST", "/", body, content_type=MULTIPART_CONTENT, CONTENT_LENGTH="",
                              HTTP_TRANSFER_ENCODING="chunked")

    assert response.status_code == 411
    assert response["Content-Type"] == "text/plain; charset=utf-8"
    assert "Content-Length" in response.content.decode()
    assert Upload.objects.count() == 0


def test_a_get_or_delete_sent_with_an_oversized_or_chunked_body_is_refused_saying_to_send_it_without_one(
    client, settings
):
    settings.UPLOAD_MAX_BYTES, settings.UPLOAD_MAX_FILES = 1000, 1

    oversized = client.generic("GET", "/api/v1/predictions/", b"{}", content_type="application/json",
                               CONTENT_LENGTH=str(3 * 1024 * 1024))
    chunked = client.generic("DELETE", "/api/v1/predictions/1/", b"{}", content_type="application/json",
                             CONTENT_LENGTH="", HTTP_TRANSFER_ENCODING="chunked")
    page = client.generic("GET", "/", b"x", content_type="text/plain", CONTENT_LENGTH=str(3 * 1024 * 1024))

    assert oversized.status_code == 413 and oversized.json()["error"]["code"] == "too_large"
    assert "A GET request needs no body" in oversized.json()["error"]["message"]
    assert chunked.status_code == 411 and chunked.json()["error"]["code"] == "length_required"
    assert "A DELETE request needs no body" in chunked.json()["error"]["message"]
    assert page.status_code == 413 and "send it without one" in page.content.decode()
