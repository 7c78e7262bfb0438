"""The storage failing under an upload: a clear 503, and nothing half-stored."""
import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from classifier.models import Prediction, Upload


@pytest.fixture
def storage_unwritable(settings, tmp_path):
    """MEDIA_ROOT under a regular file: every write fails as on an unmounted or broken volume."""
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    settings.MEDIA_ROOT = str(blocker / "media")


@pytest.mark.django_db
def test_an_upload_the_storage_cannot_take_answers_503_and_stores_no_row(client, user, digit_png, storage_unwritable):
    from accounts.services import api_token_create

    client.force_login(user)
    page = client.post("/", {"files": [SimpleUploadedFile("a.png", digit_png(1), content_type="image/png")]})
    assert page.status_code == 503 and b"nothing was stored" in page.content

    _, key = api_token_create(user=user)
    api = client.post(
        "/api/v1/predictions/",
        {"image": SimpleUploadedFile("a.png", digit_png(1), content_type="image/png")},
        headers={"Authorization": f"Token {key}"},
    )
    assert api.status_code == 503 and api.json()["error"]["code"] == "service_unavailable"
    assert Upload.objects.count() == 0 and Prediction.objects.count() == 0
