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


def _uploaded_by_page_and_api(client, *, key: str, png: bytes):
    """One image sent through the upload page and one through the API: their two answers."""
    page = client.post("/", {"files": [SimpleUploadedFile("a.png", png, content_type="image/png")]})
    api = client.post(
        "/api/v1/predictions/", {"image": SimpleUploadedFile("a.png", png, content_type="image/png")},
        headers={"Authorization": f"Token {key}"},
    )
    return page, api


@pytest.mark.django_db
def test_an_upload_the_storage_cannot_take_is_logged_as_one_error_with_the_storages_traceback(
    client, user, digit_png, storage_unwritable, caplog
):
    from accounts.services import api_token_create

    client.force_login(user)
    _, key = api_token_create(user=user)
    with caplog.at_level("INFO"):
        page, api = _uploaded_by_page_and_api(client, key=key, png=digit_png(1))

    assert page.status_code == api.status_code == 503
    # One error a failed upload, the one that says what the storage said; not a second, bare "Service Unavailable".
    errors = [record for record in caplog.records if record.levelname == "ERROR"]
    assert [record.getMessage() for record in errors] == ["could not write uploaded images"] * 2
    assert all(isinstance(record.exc_info[1], OSError) for record in errors)


@pytest.mark.django_db
def test_an_upload_that_would_leave_too_little_free_space_answers_503_and_writes_nothing(
    client, user, digit_png, settings, isolated_storage
):
    from pathlib import Path

    from accounts.services import api_token_create
    from mnistsite.storage import MediaStorage

    free_mb = MediaStorage(location=settings.MEDIA_ROOT).free_bytes() // 2**20
    settings.UPLOAD_MIN_FREE_MB = free_mb + 1024  # whatever else writes to this disk meanwhile
    client.force_login(user)

    page = client.post("/", {"files": [SimpleUploadedFile("a.png", digit_png(1), content_type="image/png")]})
    _, key = api_token_create(user=user)
    api = client.post(
        "/api/v1/predictions/",
        {"image": SimpleUploadedFile("a.png", digit_png(1), content_type="image/png")},
        headers={"Authorization": f"Token {key}"},
    )

    assert page.status_code == 503 and b"short of storage space and nothing was stored" in page.content
    assert api.status_code == 503 and api.json()["error"]["code"] == "storage_full"
    # Room is made by a person, not in the seconds of a passing outage: clients are told to come back in minutes.
    assert api["Retry-After"] == "300"
    assert Upload.objects.count() == 0 and Prediction.objects.count() == 0
    assert not [path for path in Path(settings.MEDIA_ROOT).rglob("*") if path.is_file()]

    settings.UPLOAD_MIN_FREE_MB = 0
    assert client.post("/", {"files": [SimpleUploadedFile("a.png", digit_png(1), content_type="image/png")]}).status_code == 302


@pytest.mark.django_db
def test_an_upload_that_would_leave_too_few_files_free_answers_503_and_writes_nothing(client, user, digit_png, settings):
    # Each upload is a small file: an ext4 volume runs out of files (inodes) with space to spare, and then every write
    # fails. The floor is refused like the space's, with the same clear answer.
    from pathlib import Path

    from mnistsite.storage import MediaStorage

    free_files = MediaStorage(location=settings.MEDIA_ROOT).free_files()
    assert free_files is not None  # this machine's volumes count their files
    settings.UPLOAD_MIN_FREE_FILES = free_files + 100_000  # whatever else creates files on this disk meanwhile
    client.force_login(user)

    page = client.post("/", {"files": [SimpleUploadedFile("a.png", digit_png(1), content_type="image/png")]})

    assert page.status_code == 503 and b"short of storage space and nothing was stored" in page.content
    assert Upload.objects.count() == 0 and Prediction.objects.count() == 0
    assert not [path for path in Path(settings.MEDIA_ROOT).rglob("*") if path.is_file()]
    settings.UPLOAD_MIN_FREE_FILES = 0
    assert client.post("/", {"files": [SimpleUploadedFile("a.png", digit_png(1), content_type="image/png")]}).status_code == 302


@pytest.mark.django_db
def test_an_upload_is_refused_when_the_space_free_now_is_enough_but_storing_it_would_leave_too_little(
    client, user, settings
):
    import io
    from pathlib import Path

    import numpy as np
    from PIL import Image

    from mnistsite.storage import MediaStorage

    def noise_png(seed: int) -> bytes:
        # Noise does not compress: each stored copy takes about its 1100 x 1100 x 3 bytes, under UPLOAD_MAX_BYTES.
        pixels = np.random.default_rng(seed).integers(0, 256, (1100, 1100, 3), dtype=np.uint8)
        out = io.BytesIO()
        Image.fromarray(pixels).save(out, format="PNG", compress_level=1)
        return out.getvalue()

    images = [noise_png(seed) for seed in range(8)]
    size = sum(len(image) for image in images)  # about 29 MB
    # The request is read into memory, not spooled to temporary files on this disk while the space is looked at.
    settings.FILE_UPLOAD_MAX_MEMORY_SIZE = size * 2

    def post():
        files = [SimpleUploadedFile(f"{i}.png", image, content_type="image/png") for i, image in enumerate(images)]
        return client.post("/", {"files": files})

    client.force_login(user)
    free = MediaStorage(location=settings.MEDIA_ROOT).free_bytes()
    # The floor lies half the upload's size under the space free now: above it before, below it once stored (with
    # room for whatever else writes to, or frees space on, this disk meanwhile).
    settings.UPLOAD_MIN_FREE_MB = (free - size // 2) // 2**20
    refused = post()
    assert refused.status_code == 503 and b"short of storage space and nothing was stored" in refused.content
    assert Upload.objects.count() == 0 and Prediction.objects.count() == 0
    assert not [path for path in Path(settings.MEDIA_ROOT).rglob("*") if path.is_file()]

    # With twice its size above the floor, the same upload is stored.
    settings.UPLOAD_MIN_FREE_MB = (MediaStorage(location=settings.MEDIA_ROOT).free_bytes() - size * 2) // 2**20
    assert post().status_code == 302
    assert Upload.objects.count() == 8


@pytest.mark.django_db
def test_a_full_volume_is_one_error_a_minute_however_many_uploads_it_refuses(
    client, user, digit_png, settings, isolated_storage, caplog
):
    from accounts.services import api_token_create
    from classifier.services import files
    from mnistsite.storage import MediaStorage

    settings.UPLOAD_MIN_FREE_MB = MediaStorage(location=settings.MEDIA_ROOT).free_bytes() // 2**20 + 1024
    files._storage_full_logged[0] = float("-inf")
    client.force_login(user)
    _, key = api_token_create(user=user)

    with caplog.at_level("INFO"):
        for _ in range(3):
            page, api = _uploaded_by_page_and_api(client, key=key, png=digit_png(1))
            assert page.status_code == api.status_code == 503

    # Six refusals: the operator is told once, not paged six times (on the disk the log may well share).
    errors = [record.getMessage() for record in caplog.records if record.levelname == "ERROR"]
    assert len(errors) == 1 and errors[0].startswith("uploads refused: storing them would leave")
    refusals = [record for record in caplog.records if record.name == "django.request"]
    assert len(refusals) == 6 and {record.levelname for record in refusals} == {"WARNING"}
