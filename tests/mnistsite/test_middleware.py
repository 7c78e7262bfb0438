"""The request size limit: a body larger than any valid upload is refused unread, on every route."""
import pytest


@pytest.mark.parametrize("path", ["/", "/accounts/login/", "/admin/login/"])
def test_an_anonymous_page_post_larger_than_any_valid_upload_is_413_before_it_is_read(client, settings, path):
    settings.UPLOAD_MAX_BYTES, settings.UPLOAD_MAX_FILES = 1000, 1
    response = client.generic(
        "POST", path, b"x" * 10, content_type="multipart/form-data; boundary=zzz", CONTENT_LENGTH=str(3 * 1024 * 1024)
    )
    assert response.status_code == 413
    assert "at most 1 images of at most 1,000 bytes" in response.content.decode()
