"""Upload-file services (writes, deletions, the orphan sweep), run in-process against the real database."""
import datetime as dt
import io
from pathlib import Path

import pytest
from django.db import connection
from django.utils import timezone

from classifier import services
from classifier.models import Upload

pytestmark = pytest.mark.django_db


def test_deleting_a_user_deletes_their_uploaded_files_once_committed(
    user, other_user, digit_png, django_capture_on_commit_callbacks
):
    theirs = [services.upload_create(owner=user, file=io.BytesIO(digit_png(i)), source="file") for i in range(2)]
    kept = services.upload_create(owner=other_user, file=io.BytesIO(digit_png(2)), source="file")
    with django_capture_on_commit_callbacks(execute=False) as pending:
        user.delete()
    # Nothing leaves the disk before the rows are gone for good.
    assert all(Path(upload.image.path).is_file() for upload in theirs)
    for callback in pending:
        callback()
    assert not any(Path(upload.image.path).exists() for upload in theirs)
    assert Path(kept.image.path).is_file() and list(Upload.objects.all()) == [kept]


def test_the_files_of_a_large_deletion_are_removed_here_when_the_broker_refuses_their_messages(
    user, digit_png, settings, monkeypatch, caplog
):
    from classifier.services import files
    from tests.processes import NO_BROKER_URL, broker_switched

    uploads = [services.upload_create(owner=user, file=io.BytesIO(digit_png(i)), source="file") for i in range(5)]
    monkeypatch.setattr(files, "FILES_DELETE_HERE_MAX", 2)  # past it, the workers remove them

    with broker_switched(settings, NO_BROKER_URL):
        files.upload_files_delete(names=[upload.image.name for upload in uploads])

    assert not any(Path(upload.image.path).exists() for upload in uploads)
    assert "could not queue the removal of 5 deleted uploads' files; removing them here" in caplog.text


def test_the_orphan_sweep_sets_aside_only_files_no_upload_names_once_they_are_an_hour_old(user, digit_png, settings):
    import os

    from django.core.files.base import ContentFile
    from django.core.files.storage import default_storage

    kept = services.upload_create(owner=user, file=io.BytesIO(digit_png(0)), source="file").image.name
    folder = kept.rsplit("/", 1)[0]
    # Midday of the folder's day: the hours the sweep looks back over then lie in it, whatever the time of the run
    # (just after midnight they are yesterday's).
    now = dt.datetime.strptime(folder, "uploads/%Y/%m/%d").replace(hour=12, tzinfo=dt.timezone.utc)
    orphan = default_storage.save(f"{folder}/orphan.png", ContentFile(b"left by a killed process"))
    young = default_storage.save(f"{folder}/young.png", ContentFile(b"its row is about to be inserted"))
    for name, age in ((kept, 2), (orphan, 2), (young, 0.1)):
        moment = (now - dt.timedelta(hours=age)).timestamp()
        os.utime(default_storage.path(name), (moment, moment))

    assert services.upload_files_orphaned_delete(now=now) == 1
    assert not default_storage.exists(orphan)
    assert default_storage.exists(kept) and default_storage.exists(young)


def test_the_daily_orphan_sweep_also_sets_aside_old_files_whose_upload_is_gone(user, digit_png):
    import os

    from django.core.files.base import ContentFile
    from django.core.files.storage import default_storage

    kept, deleted = (services.upload_create(owner=user, file=io.BytesIO(digit_png(d)), source="file") for d in (0, 1))
    # The file goes once the deletion commits, which this test's transaction never does: as for a process killed
    # after the commit, before it removed the file, or a volume that refused the removal.
    services.upload_delete(upload=deleted)
    left_behind = deleted.image.name
    young = default_storage.save(f"{left_behind.rsplit('/', 1)[0]}/young.png", ContentFile(b"its row is on its way"))
    month_ago = (timezone.now() - dt.timedelta(days=30)).timestamp()
    for name in (kept.image.name, left_behind):
        os.utime(default_storage.path(name), (month_ago, month_ago))

    assert services.upload_files_orphaned_delete() == 0  # the hourly sweep looks at the last hours only
    assert services.upload_files_orphaned_delete(everything=True) == 1
    assert not default_storage.exists(left_behind)
    assert default_storage.exists(kept.image.name) and default_storage.exists(young)


def test_the_daily_sweep_sets_aside_the_model_input_files_of_the_release_before_they_moved_into_the_rows():
    from django.core.files.base import ContentFile
    from django.core.files.storage import default_storage

    old = default_storage.save("derived/inputs/0a1b.png", ContentFile(b"a 28x28 model input of classifier/0002"))

    services.upload_files_orphaned_delete()
    assert default_storage.exists(old)  # the hourly sweep looks at upload folders only
    services.upload_files_orphaned_delete(everything=True)
    assert not default_storage.exists(old)
    assert default_storage.exists(f"orphaned/{old}")


def test_the_sweep_against_a_database_that_lost_the_rows_sets_the_files_aside_to_be_moved_back(user, digit_png):
    import os

    from django.core.files.storage import default_storage

    upload = services.upload_create(owner=user, file=io.BytesIO(digit_png(4)), source="file")
    name, content = upload.image.name, default_storage.open(upload.image.name).read()
    # As after a restore of an older backup: the file is there, its row is not.
    Upload.objects.filter(pk=upload.pk).delete()
    day_ago = (timezone.now() - dt.timedelta(days=1)).timestamp()
    os.utime(default_storage.path(name), (day_ago, day_ago))

    assert services.upload_files_orphaned_delete(everything=True) == 1

    assert not default_storage.exists(name)
    with default_storage.open(f"{services.ORPHANED_FOLDER}/{name}") as set_aside:
        assert set_aside.read() == content


def test_files_set_aside_are_deleted_by_the_daily_sweep_once_kept_for_the_keep_period(user, digit_png, settings):
    import os

    from django.core.files.storage import default_storage

    upload = services.upload_create(owner=user, file=io.BytesIO(digit_png(5)), source="file")
    Upload.objects.filter(pk=upload.pk).delete()
    day_ago = (timezone.now() - dt.timedelta(days=1)).timestamp()
    os.utime(default_storage.path(upload.image.name), (day_ago, day_ago))
    assert services.upload_files_orphaned_delete(everything=True) == 1
    set_aside = f"{services.ORPHANED_FOLDER}/{upload.image.name}"

    keep = dt.timedelta(days=settings.ORPHANED_FILES_KEEP_DAYS)
    services.upload_files_orphaned_delete(everything=True, now=timezone.now() + keep - dt.timedelta(hours=1))
    assert default_storage.exists(set_aside)
    services.upload_files_orphaned_delete(everything=True, now=timezone.now() + keep + dt.timedelta(hours=1))
    assert not default_storage.exists(set_aside)


def test_the_daily_sweep_keeps_model_input_files_until_their_migration_has_read_them(settings):
    from django.core.files.base import ContentFile
    from django.core.files.storage import default_storage
    from django.db.migrations.recorder import MigrationRecorder

    old = default_storage.save("derived/inputs/0a1b.png", ContentFile(b"a 28x28 model input of classifier/0002"))
    # As on a release upgraded past classifier/0003 whose migrations have not run yet.
    MigrationRecorder(connection).migration_qs.filter(app="classifier", name__startswith="0003_").delete()
    services.upload_files_orphaned_delete(everything=True)
    assert default_storage.exists(old)


def test_a_batch_is_stored_through_a_storage_without_batch_writes(user, digit_png, settings, tmp_path):
    # Another backend than the media storage (an object store, say) gets one save a file.
    settings.STORAGES = {**settings.STORAGES, "default": {
        "BACKEND": "django.core.files.storage.FileSystemStorage", "OPTIONS": {"location": str(tmp_path)}}}
    files = [(io.BytesIO(digit_png(i)), f"{i}.png") for i in range(2)]
    predictions = services.predictions_submit(owner=user, files=files, source="file")
    stored = sorted(str(path.relative_to(tmp_path)) for path in tmp_path.rglob("*.png"))
    assert stored == sorted(p.upload.image.name for p in predictions) and len(stored) == 2


def _photo_upload(owner) -> Upload:
    """A photo's upload: its stored copy large enough to be shown scaled."""
    from PIL import Image

    photo = Image.merge("RGB", [Image.effect_noise((900, 600), 24)] * 3)
    sent = io.BytesIO()
    photo.save(sent, "JPEG", quality=90)
    return services.upload_create(owner=owner, file=io.BytesIO(sent.getvalue()), name="photo.jpg", source="file")


def _copy_path(upload: Upload, side: int) -> Path:
    from django.core.files.storage import default_storage

    return Path(default_storage.path(f"{services.SCALED_FOLDER}/{side}/{upload.image.name}"))


def test_a_scaled_copy_is_made_on_first_view_and_read_from_then_on(user):
    from PIL import Image

    upload = _photo_upload(user)

    first = services.upload_image_scaled_get(name=upload.image.name, side=128)
    kept = _copy_path(upload, 128)
    assert Image.open(io.BytesIO(first)).size == (128, 85) and kept.read_bytes() == first
    assert kept.stat().st_mode & 0o777 == Path(upload.image.path).stat().st_mode & 0o777
    # Read from the copy, not made again: the copy is what comes back, whatever it holds.
    marked = b"the kept copy " + first
    kept.write_bytes(marked)
    assert services.upload_image_scaled_get(name=upload.image.name, side=128) == marked
    assert not _copy_path(upload, 512).exists()


def test_a_scaled_copy_cut_short_by_a_crash_is_made_again(user):
    upload = _photo_upload(user)
    whole = services.upload_image_scaled_get(name=upload.image.name, side=512)
    _copy_path(upload, 512).write_bytes(whole[: len(whole) // 2])

    assert services.upload_image_scaled_get(name=upload.image.name, side=512) == whole
    assert _copy_path(upload, 512).read_bytes() == whole


def test_a_picture_small_already_gets_no_copy(user, digit_png):
    upload = services.upload_create(owner=user, file=io.BytesIO(digit_png(0)), source="file")

    assert services.upload_image_scaled_get(name=upload.image.name, side=128) is None
    assert not _copy_path(upload, 128).parent.exists()


def test_no_copy_is_kept_while_the_media_volume_is_short_of_space_and_the_copy_is_still_answered(user, settings):
    upload = _photo_upload(user)
    settings.UPLOAD_MIN_FREE_MB = 10**9  # more than any disk has free

    scaled = services.upload_image_scaled_get(name=upload.image.name, side=128)

    assert scaled.startswith(b"\x89PNG") and not _copy_path(upload, 128).exists()


def test_deleting_an_upload_deletes_its_scaled_copies_once_committed(user, django_capture_on_commit_callbacks):
    upload = _photo_upload(user)
    for side in (128, 512):
        services.upload_image_scaled_get(name=upload.image.name, side=side)
    copies = [_copy_path(upload, side) for side in (128, 512)]

    with django_capture_on_commit_callbacks(execute=True):
        services.upload_delete(upload=upload)

    assert not Path(upload.image.path).exists() and not any(copy.exists() for copy in copies)


def test_a_copy_made_as_its_picture_was_deleted_goes_with_the_daily_sweep_and_others_stay(user):
    import os

    upload, kept = _photo_upload(user), _photo_upload(user)
    for each in (upload, kept):
        services.upload_image_scaled_get(name=each.image.name, side=128)
    # The picture deleted between the copy's look and its rename: the deletion found no copy to delete.
    os.remove(upload.image.path)
    left, writing = _copy_path(upload, 128), _copy_path(kept, 128).with_name(".abc.part")
    writing.write_bytes(b"a copy whose writer was killed")
    hours_ago = (timezone.now() - dt.timedelta(hours=2)).timestamp()
    for path in (left, writing, _copy_path(kept, 128)):
        os.utime(path, (hours_ago, hours_ago))

    services.upload_files_orphaned_delete(everything=True)

    assert not left.exists() and not writing.exists()
    assert _copy_path(kept, 128).exists()


def test_the_daily_sweep_removes_folders_deletions_left_empty_but_not_the_last_two_days_or_one_just_emptied():
    import os

    from django.core.files.base import ContentFile
    from django.core.files.storage import default_storage

    now = timezone.now()
    old_day, today, yesterday = (f"uploads/{moment:%Y/%m/%d}" for moment in (
        now - dt.timedelta(days=40), now, now - dt.timedelta(days=1)))
    emptied = [old_day, today, yesterday, f"scaled/128/{old_day}", f"orphaned/{old_day}", "uploads/2020/01/02"]
    for folder in emptied:
        name = default_storage.save(f"{folder}/gone.png", ContentFile(b"deleted since"))
        default_storage.delete(name)
    still_holding = default_storage.save("uploads/2019/05/06/kept.png", ContentFile(b"its upload is stored"))
    hours_ago = (now - dt.timedelta(hours=2)).timestamp()
    for folder in [*emptied, os.path.dirname(still_holding)]:
        os.utime(default_storage.path(folder), (hours_ago, hours_ago))
    os.utime(default_storage.path("uploads/2020/01/02"), None)  # emptied just now

    services.upload_files_orphaned_delete(everything=True, now=now)

    gone = {folder for folder in emptied if not os.path.isdir(default_storage.path(folder))}
    assert gone == {old_day, f"scaled/128/{old_day}", f"orphaned/{old_day}"}
    assert default_storage.exists(still_holding)
    # The month above a removed day changed as it went: it goes at a sweep once that is old enough.
    month = old_day.rsplit("/", 1)[0]
    assert os.path.isdir(default_storage.path(month))
    services.upload_files_orphaned_delete(everything=True, now=now + dt.timedelta(hours=2))
    assert not os.path.isdir(default_storage.path(month))
    assert all(os.path.isdir(default_storage.path(top)) for top in ("uploads", "scaled", "orphaned"))


def test_a_wide_picture_whose_shorter_side_is_small_already_is_still_scaled_by_its_longest_side():
    from PIL import Image

    from classifier.thumbnails import picture_scaled_png

    strip = io.BytesIO()
    Image.new("L", (600, 60), 255).save(strip, format="PNG")

    scaled = picture_scaled_png(strip, side=128)

    assert scaled is not None and Image.open(io.BytesIO(scaled)).size == (128, 13)
