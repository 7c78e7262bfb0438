"""Upload-storing services (quota, Idempotency-Key, outcomes), run in-process against the real database."""
import datetime as dt
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from classifier import services
from classifier.models import IdempotencyKey, Prediction, StorageUse, Upload
from tests.classifier.fixtures import (
    account_deleted_just_before_the_insert, png_bytes, stored_size, uploads_stored_answer_lost,
    uploads_stored_then_read_back_lost,
)
from tests.locks import lock_waits_reach, overtaken

pytestmark = pytest.mark.django_db


def _stored_files() -> list[Path]:
    root = Path(settings.MEDIA_ROOT)
    return [p for p in root.rglob("*") if p.is_file()]


def test_upload_create_stores_a_reencoded_png_under_a_generated_name(user, digit_png):
    data = digit_png(0)
    upload = services.upload_create(owner=user, file=io.BytesIO(data), name="../my digit.png", source="file")
    assert upload.original_name == "my digit.png"
    assert upload.image.name.startswith("uploads/") and upload.image.name.endswith(".png")
    assert "my digit" not in upload.image.name
    assert upload.format == "PNG" and upload.size == len(data) and upload.width == 112
    assert Path(upload.image.path).is_file()


def test_a_rejected_batch_stores_nothing(user, digit_png, django_capture_on_commit_callbacks, published):
    files = [(io.BytesIO(digit_png(0)), "good.png"), (io.BytesIO(b"garbage"), "bad.png")]
    with django_capture_on_commit_callbacks(execute=True), pytest.raises(ValidationError) as info:
        services.predictions_submit(owner=user, files=files, source="file")
    assert "bad.png" in " ".join(info.value.messages)
    assert Upload.objects.count() == 0 and Prediction.objects.count() == 0
    assert _stored_files() == []
    assert published.prediction_ids() == []


def test_a_batch_whose_second_file_cannot_be_written_leaves_no_file_and_no_row(
    user, digit_png, django_capture_on_commit_callbacks, published, monkeypatch
):
    import errno
    import os

    # The disk fills at the second file: the system call fails, for files under the media folder only.
    real_write, calls, media = os.write, [], str(Path(settings.MEDIA_ROOT).resolve())

    def disk_full_at_the_second_file(fd, data):
        if os.readlink(f"/proc/self/fd/{fd}").startswith(media):
            calls.append(fd)
            if len(calls) == 2:
                raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", disk_full_at_the_second_file)
    files = [(io.BytesIO(digit_png(i)), f"{i}.png") for i in range(3)]
    with django_capture_on_commit_callbacks(execute=True), pytest.raises(services.UploadStorageError):
        services.predictions_submit(owner=user, files=files, source="file")
    assert len(calls) == 2  # the first file was written, the third never tried
    assert _stored_files() == []
    assert Upload.objects.count() == 0 and Prediction.objects.count() == 0
    assert published.prediction_ids() == []


def test_a_batch_is_stored_with_pending_predictions_published_after_commit(
    user, digit_png, django_capture_on_commit_callbacks, published
):
    files = [(io.BytesIO(digit_png(i)), f"{i}.png") for i in range(3)]
    with django_capture_on_commit_callbacks(execute=True):
        predictions = services.predictions_submit(owner=user, files=files, source="file")
        assert published.prediction_ids() == []  # nothing leaves before the commit
    assert [p.upload.original_name for p in predictions] == ["0.png", "1.png", "2.png"]
    assert {p.status for p in Prediction.objects.all()} == {"pending"}
    assert published.prediction_ids() == [p.pk for p in predictions]
    assert all(p.published_at is not None and p.publish_attempts == 1 for p in Prediction.objects.all())


def test_a_broker_outage_keeps_the_upload_and_its_pending_prediction(
    user, digit_png, django_capture_on_commit_callbacks, broker_down
):
    with django_capture_on_commit_callbacks(execute=True):
        (prediction,) = services.predictions_submit(owner=user, files=[(io.BytesIO(digit_png(0)), "a.png")], source="file")
    prediction.refresh_from_db()
    assert prediction.status == "pending"
    assert prediction.published_at is None and prediction.publish_attempts == 1


@pytest.mark.django_db(transaction=True)  # the insert commits by itself, as outside a test
def test_uploads_stored_whose_predictions_cannot_be_read_back_are_an_unknown_outcome_not_nothing_stored(
    user, digit_png, published
):
    files = [(io.BytesIO(digit_png(i)), f"{i}.png") for i in range(2)]
    with uploads_stored_then_read_back_lost(), pytest.raises(services.UploadOutcomeUnknownError):
        services.predictions_submit(owner=user, files=files, source="file")

    # Stored: an error saying that nothing was would have the same images sent again.
    assert Upload.objects.count() == 2 and Prediction.objects.filter(status="pending").count() == 2
    assert all(upload.image.storage.exists(upload.image.name) for upload in Upload.objects.all())
    # Not sent, as their ids were never read: the sweeper sends them.
    assert published.prediction_ids() == []


@pytest.mark.django_db(transaction=True)  # the insert commits by itself, as outside a test
def test_uploads_stored_then_deleted_before_they_were_read_back_are_an_unknown_outcome_not_a_crash(
    user, digit_png, published
):
    import threading

    def delete_first_in_another_tab() -> None:
        try:
            services.upload_delete(upload=Upload.objects.order_by("id").first())
        finally:
            connection.close()

    def delete_one_meanwhile() -> None:
        other = threading.Thread(target=delete_first_in_another_tab)
        other.start()
        other.join()

    files = [(io.BytesIO(digit_png(i)), f"{i}.png") for i in range(3)]
    with uploads_stored_answer_lost(before_read_back=delete_one_meanwhile):
        with pytest.raises(services.UploadOutcomeUnknownError, match="1 of them were deleted"):
            services.predictions_submit(owner=user, files=files, source="file")

    # The user is sent to their history, which shows the two left; those two are on their way to a worker.
    left = list(Prediction.objects.order_by("id").values_list("pk", flat=True))
    assert len(left) == 2 and Upload.objects.count() == 2
    assert sorted(published.prediction_ids()) == left


@pytest.fixture
def silent_broker():
    """A Redis address that accepts connections and never answers, as a hung host or a dead NAT path does."""
    import socket

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)  # the kernel completes the handshakes; nothing ever reads or writes
    yield f"redis://127.0.0.1:{listener.getsockname()[1]}/0"
    listener.close()


def test_a_broker_that_stops_answering_delays_an_upload_by_seconds_not_for_ever(
    user, digit_png, django_capture_on_commit_callbacks, settings, silent_broker
):
    import time

    from tests.processes import broker_switched

    with broker_switched(settings, silent_broker):
        started = time.monotonic()
        with django_capture_on_commit_callbacks(execute=True):
            (prediction,) = services.predictions_submit(
                owner=user, files=[(io.BytesIO(digit_png(0)), "a.png")], source="file"
            )
        waited = time.monotonic() - started
    # Kombu may try the connection more than once, each time up to the socket timeout (5 s).
    assert waited < 30
    prediction.refresh_from_db()
    assert prediction.status == "pending" and prediction.published_at is None


def test_storing_an_upload_batch_on_postgresql_is_one_statement(user, digit_png):
    if connection.vendor != "postgresql":
        pytest.skip("the single-statement insert is PostgreSQL's")
    files = [(io.BytesIO(digit_png(digit)), f"{digit}.png") for digit in (1, 2, 3)]
    with CaptureQueriesContext(connection) as queries:
        predictions = services.predictions_submit(owner=user, files=files, source="file")
    assert len(queries) == 1
    stored = {p.pk: p.upload.original_name for p in Prediction.objects.select_related("upload")}
    assert stored == {p.pk: f"{digit}.png" for p, digit in zip(predictions, (1, 2, 3), strict=True)}
    assert all(p.status == "pending" and p.publish_attempts == 1 for p in Prediction.objects.all())


def _use_of(owner) -> int:
    return StorageUse.objects.get(owner=owner).bytes


def test_uploads_count_towards_their_owners_storage_and_a_deletion_gives_it_back(user, other_user, digit_png):
    (first,) = services.predictions_submit(owner=user, files=[(io.BytesIO(digit_png(0)), "0.png")], source="file")
    services.predictions_submit(owner=user, files=[(io.BytesIO(digit_png(1)), "1.png"), (io.BytesIO(digit_png(2)), "2.png")],
                                source="file")
    sizes = [stored_size(digit_png(index)) for index in range(3)]
    assert _use_of(user) == sum(sizes)
    assert not StorageUse.objects.filter(owner=other_user).exists()

    services.upload_delete(upload=first.upload)
    assert _use_of(user) == sizes[1] + sizes[2]


def test_an_upload_past_its_owners_quota_is_refused_saying_so_and_stores_nothing(user, digit_png, settings):
    settings.UPLOAD_QUOTA_MB = 1
    services.predictions_submit(owner=user, files=[(io.BytesIO(digit_png(0)), "0.png")], source="file")
    # Nearly full: what the owner stored before leaves less room than one more digit takes.
    StorageUse.objects.filter(owner=user).update(bytes=2**20 - stored_size(digit_png(1)) + 1)
    files_before = _stored_files()

    with pytest.raises(services.UploadQuotaError, match=r"past your allowance of 1\.0\s+MB, of which [\d.]+\s+KB is in use"):
        services.predictions_submit(owner=user, files=[(io.BytesIO(digit_png(1)), "1.png")], source="file")

    assert Upload.objects.count() == 1 and Prediction.objects.count() == 1
    assert _stored_files() == files_before
    assert _use_of(user) == 2**20 - stored_size(digit_png(1)) + 1
    # Exactly up to the allowance is still allowed.
    StorageUse.objects.filter(owner=user).update(bytes=2**20 - stored_size(digit_png(1)))
    services.predictions_submit(owner=user, files=[(io.BytesIO(digit_png(1)), "1.png")], source="file")
    assert _use_of(user) == 2**20


def test_without_a_quota_uploads_are_still_counted(user, digit_png, settings):
    settings.UPLOAD_QUOTA_MB = 0
    StorageUse.objects.create(owner=user, bytes=2**40)
    services.predictions_submit(owner=user, files=[(io.BytesIO(digit_png(0)), "0.png")], source="file")
    assert _use_of(user) == 2**40 + stored_size(digit_png(0))


def test_uploads_stored_past_the_quota_on_purpose_are_counted_too(user, digit_png, settings):
    # The sample sets and the command line store through upload_create, which no quota holds back.
    settings.UPLOAD_QUOTA_MB = 1
    StorageUse.objects.create(owner=user, bytes=2**20)
    services.upload_create(owner=user, file=io.BytesIO(digit_png(0)), source="file")
    assert _use_of(user) == 2**20 + stored_size(digit_png(0))


def test_the_quota_counts_an_upload_as_stored_not_as_sent(user):
    # Noise squeezed into a small JPEG takes many times that once stored as PNG, and the volume holds the PNG.
    noise = np.random.default_rng(0).integers(0, 256, (256, 256), dtype=np.uint8)
    jpeg = png_bytes(Image.fromarray(noise), fmt="JPEG", quality=5)
    (prediction,) = services.predictions_submit(owner=user, files=[(io.BytesIO(jpeg), "noise.jpg")], source="file")
    upload = prediction.upload
    assert upload.stored_size == upload.image.size > 3 * len(jpeg)
    assert _use_of(user) == upload.stored_size


def test_the_idempotency_key_sweep_deletes_only_the_keys_past_their_hours(user, settings):
    settings.IDEMPOTENCY_KEY_TTL_HOURS = 24
    now = timezone.now()
    for key, age in (("expired", dt.timedelta(hours=24, seconds=1)), ("live", dt.timedelta(hours=23, minutes=59))):
        IdempotencyKey.objects.create(owner=user, key=key, fingerprint="0" * 64, prediction_ids=[], created_at=now - age)

    assert services.idempotency_keys_expired_delete(now=now) == 1
    assert list(IdempotencyKey.objects.values_list("key", flat=True)) == ["live"]


def test_a_key_exactly_its_hours_old_has_expired_for_the_sweep(user, settings):
    settings.IDEMPOTENCY_KEY_TTL_HOURS = 24
    now = timezone.now()
    IdempotencyKey.objects.create(
        owner=user, key="on-the-hour", fingerprint="0" * 64, prediction_ids=[], created_at=now - dt.timedelta(hours=24)
    )

    assert services.idempotency_keys_expired_delete(now=now) == 1
    assert not IdempotencyKey.objects.exists()


def test_a_key_stored_meanwhile_is_reported_in_use_even_inside_a_callers_transaction(user, digit_png):
    # The tests run inside a transaction, as a command or a task wrapping the upload in one would.
    from classifier.idempotency import IdempotencyKeyInUseError, IdempotentUpload

    IdempotencyKey.objects.create(owner=user, key="k", fingerprint="0" * 64, prediction_ids=[])

    with pytest.raises(IdempotencyKeyInUseError):
        services.predictions_submit(
            owner=user, files=[(io.BytesIO(digit_png(0)), "0.png")], source="api",
            idempotency=IdempotentUpload(key="k", fingerprint="1" * 64),
        )
    assert not Upload.objects.exists() and _stored_files() == []


def test_beat_runs_the_idempotency_key_sweep_hourly_as_a_registered_task():
    from classifier import tasks
    from mnistsite.celery import app

    (entry,) = [entry for entry in settings.CELERY_BEAT_SCHEDULE.values()
                if entry["task"] == tasks.idempotency_keys_expired_delete.name]
    assert entry["schedule"] == 3600.0
    assert entry["task"] in app.tasks


@pytest.mark.django_db(transaction=True)  # the deletion commits before the insert, as another request's would
def test_an_upload_whose_owner_is_deleted_meanwhile_is_refused_saying_so_and_stores_nothing(user, digit_png, published):
    wrapper, deleted = account_deleted_just_before_the_insert(user)
    files = [(io.BytesIO(digit_png(i)), f"{i}.png") for i in range(2)]
    with connection.execute_wrapper(wrapper), pytest.raises(services.UploadOwnerDeletedError) as info:
        services.predictions_submit(owner=user, files=files, source="file")

    assert deleted and "nothing was stored" in str(info.value)
    assert not Upload.objects.exists() and not Prediction.objects.exists() and not StorageUse.objects.exists()
    assert _stored_files() == []
    assert published.prediction_ids() == []


def _once_another_waits(request):
    """``request``, sent once another request waits for a lock: the order in which the two queue for it is known."""
    def sent():
        assert lock_waits_reach(1)
        return request()
    return sent


@pytest.mark.skipif("connection.vendor != 'postgresql'", reason="the overlap is arranged with PostgreSQL's locks")
@pytest.mark.django_db(transaction=True)
def test_an_image_stored_for_an_account_being_deleted_is_refused_and_the_deletion_is_not_deadlocked(user, digit_png):
    from accounts.services import account_delete

    services.upload_create(owner=user, file=io.BytesIO(digit_png(0)), source="file")

    # The daily recount holds the owner's count a moment. The account's deletion waits for it, then an image the
    # sample loader or the command line stores for the owner does, its row inserted already: the deletion takes the
    # count first and the account next, and the upload's key to the account is checked only as it commits.
    answers = overtaken(
        first=lambda: StorageUse.objects.select_for_update().get(owner=user),
        then=[lambda: account_delete(user=user), _once_another_waits(
            lambda: services.upload_create(owner=user, file=io.BytesIO(digit_png(1)), source="file"))],
    )

    deleted, stored = answers
    assert deleted is None, deleted
    assert isinstance(stored, services.UploadOwnerDeletedError), stored
    assert not get_user_model().objects.filter(pk=user.pk).exists()
    assert not Upload.objects.exists() and not StorageUse.objects.exists()
    assert _stored_files() == []


def _keyed_upload_whose_predictions_staff_deleted(user, digit_png):
    """Two images uploaded with the key "k", their predictions then deleted; what a repeat of it sends, and them."""
    from classifier.idempotency import IdempotentUpload, upload_fingerprint

    def request() -> IdempotentUpload:
        files = [("images", io.BytesIO(digit_png(i)), f"{i}.png") for i in range(2)]
        return IdempotentUpload(key="k", fingerprint=upload_fingerprint(files))

    files = [(io.BytesIO(digit_png(i)), f"{i}.png") for i in range(2)]
    made = services.predictions_submit(owner=user, files=files, source="api", idempotency=request())
    Prediction.objects.filter(pk__in=[prediction.pk for prediction in made]).delete()
    return request, made


def test_replaying_a_key_whose_predictions_staff_deleted_makes_one_new_prediction_for_each_upload_left(
    user, digit_png, published
):
    request, made = _keyed_upload_whose_predictions_staff_deleted(user, digit_png)

    first = services.idempotent_upload_replay(user=user, idempotency=request())
    again = services.idempotent_upload_replay(user=user, idempotency=request())

    assert [p.upload_id for p in first] == [p.upload.pk for p in made]
    assert [p.pk for p in again] == [p.pk for p in first] and Prediction.objects.count() == 2
    assert Upload.objects.count() == 2


def test_replaying_a_key_one_of_whose_uploads_is_gone_makes_nothing_for_the_others(user, digit_png):
    from classifier.idempotency import IdempotentUploadsDeletedError

    request, made = _keyed_upload_whose_predictions_staff_deleted(user, digit_png)
    services.upload_delete(upload=Upload.objects.get(pk=made[1].upload.pk))

    with pytest.raises(IdempotentUploadsDeletedError, match="1 of the 2 images"):
        services.idempotent_upload_replay(user=user, idempotency=request())
    assert not Prediction.objects.exists() and Upload.objects.count() == 1
