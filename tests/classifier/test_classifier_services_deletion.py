"""Upload-deleting services and the storage recount, run in-process against the real database."""
import io
import re
import time
from pathlib import Path

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from classifier import selectors, services
from classifier.models import Prediction, StorageUse, Upload
from tests.classifier.fixtures import deletions_race, stored_size, upload_deletions_lost_in_the_second_batch

pytestmark = pytest.mark.django_db


def test_upload_delete_removes_the_rows_and_the_file(user, digit_png, active_checkpoint, django_capture_on_commit_callbacks):
    upload = services.upload_create(owner=user, file=io.BytesIO(digit_png(0)), source="file")
    (prediction,) = services.predictions_create(uploads=[upload], publish=False)
    services.prediction_execute(prediction_id=prediction.pk)
    files = [Path(upload.image.path)]
    assert all(f.is_file() for f in files)
    with django_capture_on_commit_callbacks(execute=True):
        services.upload_delete(upload=upload)
    assert not Upload.objects.exists() and not Prediction.objects.exists()
    assert not any(f.exists() for f in files)


def _use_of(owner) -> int:
    return StorageUse.objects.get(owner=owner).bytes


def test_the_recount_corrects_every_owners_storage_from_their_uploads(user, other_user, digit_png):
    services.predictions_submit(owner=user, files=[(io.BytesIO(digit_png(0)), "0.png")], source="file")
    services.predictions_submit(owner=other_user, files=[(io.BytesIO(digit_png(1)), "1.png")], source="file")
    # As after uploads a release from before the quota stored while its migration ran, or rows deleted by hand.
    StorageUse.objects.filter(owner=user).update(bytes=5)
    StorageUse.objects.filter(owner=other_user).delete()
    nobody = StorageUse.objects.create(owner=type(user).objects.create_user(username="carol"), bytes=77)

    assert services.storage_use_recount() == 3
    assert _use_of(user) == stored_size(digit_png(0)) and _use_of(other_user) == stored_size(digit_png(1))
    assert StorageUse.objects.get(pk=nobody.pk).bytes == 0
    assert services.storage_use_recount() == 0


def test_deleting_an_upload_twice_gives_its_bytes_back_once(user, digit_png):
    services.predictions_submit(owner=user, files=[(io.BytesIO(digit_png(0)), "0.png")], source="file")
    (prediction,) = services.predictions_submit(owner=user, files=[(io.BytesIO(digit_png(1)), "1.png")], source="file")
    # Two requests for one deletion (a double click, a retried API call): each loaded the upload before either ran.
    first, second = Upload.objects.get(pk=prediction.upload_id), Upload.objects.get(pk=prediction.upload_id)
    services.upload_delete(upload=first)
    services.upload_delete(upload=second)
    assert _use_of(user) == stored_size(digit_png(0))


def test_uploads_stored_before_their_stored_size_was_kept_count_as_sent(user, digit_png):
    (prediction,) = services.predictions_submit(owner=user, files=[(io.BytesIO(digit_png(0)), "0.png")], source="file")
    Upload.objects.filter(pk=prediction.upload_id).update(stored_size=None)
    services.storage_use_recount()
    assert _use_of(user) == len(digit_png(0))
    services.upload_delete(upload=Upload.objects.get(pk=prediction.upload_id))
    assert _use_of(user) == 0


def _upload_waiting(owner, digit_png, index: int) -> Upload:
    """An upload of digit ``index`` (each stored at its own size) with a pending prediction."""
    upload = services.upload_create(owner=owner, file=io.BytesIO(digit_png(index)), name=f"{index}.png", source="file")
    services.predictions_create(uploads=[upload], publish=False)
    return upload


def _upload_deletes(queries) -> list[int]:
    """How many uploads each DELETE of upload rows in ``queries`` named."""
    statements = [query["sql"] for query in queries if query["sql"].startswith('DELETE FROM "classifier_upload"')]
    return [len(re.search(r" IN \(([^)]*)\)", sql)[1].split(",")) for sql in statements]


def test_deleting_selected_uploads_deletes_only_the_owners_and_gives_back_exactly_their_bytes(
    user, other_user, digit_png
):
    mine = [_upload_waiting(user, digit_png, index) for index in range(3)]
    theirs = _upload_waiting(other_user, digit_png, 3)
    assert len({upload.stored_bytes for upload in mine}) == 3  # a mix-up of sizes would show

    deleted = services.uploads_delete(owner=user, upload_ids=[mine[0].pk, mine[2].pk, theirs.pk, 2**40])

    assert deleted == 2
    assert set(Upload.objects.values_list("pk", flat=True)) == {mine[1].pk, theirs.pk}
    assert set(Prediction.objects.values_list("upload_id", flat=True)) == {mine[1].pk, theirs.pk}
    assert _use_of(user) == stored_size(digit_png(1)) and _use_of(other_user) == stored_size(digit_png(3))
    assert services.storage_use_recount() == 0
    # Already gone (another tab, a double click): nothing more is deleted or given back.
    assert services.uploads_delete(owner=user, upload_ids=[mine[0].pk]) == 0
    assert _use_of(user) == stored_size(digit_png(1))


def test_the_files_of_uploads_deleted_together_go_only_once_the_deletion_commits(
    user, digit_png, django_capture_on_commit_callbacks
):
    uploads = [_upload_waiting(user, digit_png, index) for index in range(3)]
    files = [Path(upload.image.path) for upload in uploads]

    with django_capture_on_commit_callbacks(execute=False) as pending:
        services.uploads_delete(owner=user, upload_ids=[upload.pk for upload in uploads[:2]])

    assert all(file.is_file() for file in files)
    for callback in pending:
        callback()
    assert [file.exists() for file in files] == [False, False, True]


def test_a_deletion_by_filters_goes_in_batches_of_bounded_size_and_deletes_every_match_and_no_other(
    user, other_user, digit_png
):
    matching = [_upload_waiting(user, digit_png, index) for index in range(7)]
    # Neither has a pending prediction (an administrator deleted theirs), so the filter leaves them out.
    unread = [services.upload_create(owner=user, file=io.BytesIO(digit_png(i)), source="file") for i in (7, 8)]
    theirs = _upload_waiting(other_user, digit_png, 9)

    with CaptureQueriesContext(connection) as queries:
        deleted = services.uploads_delete(
            owner=user, filters=selectors.UploadFilters(status="pending"), batch_size=3
        )

    assert deleted == 7
    assert _upload_deletes(queries.captured_queries) == [3, 3, 1]
    assert set(Upload.objects.values_list("pk", flat=True)) == {unread[0].pk, unread[1].pk, theirs.pk}
    assert not Prediction.objects.filter(upload_id__in=[upload.pk for upload in matching]).exists()
    assert _use_of(user) == stored_size(digit_png(7)) + stored_size(digit_png(8))
    assert _use_of(other_user) == stored_size(digit_png(9))
    assert services.storage_use_recount() == 0


def test_a_deletion_by_filters_leaves_out_uploads_stored_after_it_was_confirmed(user, digit_png):
    offered = [_upload_waiting(user, digit_png, index) for index in range(2)]
    newest = selectors.upload_newest_id_for_user(user=user)
    later = _upload_waiting(user, digit_png, 2)  # in another tab, after the count was shown

    assert services.uploads_delete(owner=user, filters=selectors.UploadFilters(), newest_id=newest) == 2

    assert list(Upload.objects.all()) == [later]
    assert not Upload.objects.filter(pk__in=[upload.pk for upload in offered]).exists()
    assert _use_of(user) == stored_size(digit_png(2))


def test_a_deletion_by_filters_past_its_deadline_stops_after_a_whole_batch_with_the_count_right(user, digit_png):
    uploads = [_upload_waiting(user, digit_png, index) for index in range(5)]

    deleted = services.uploads_delete(
        owner=user, filters=selectors.UploadFilters(), deadline=time.monotonic(), batch_size=2
    )

    # The newest two, as the history lists them.
    assert deleted == 2
    assert set(Upload.objects.values_list("pk", flat=True)) == {upload.pk for upload in uploads[:3]}
    assert _use_of(user) == sum(stored_size(digit_png(index)) for index in range(3))


# One upload a batch, and the default batch, which holds all three: a batch must stop at the number confirmed too.
@pytest.mark.parametrize("batch_size", [1, None])
def test_a_deletion_by_filters_deletes_no_more_than_the_number_confirmed_though_more_came_to_match(
    user, digit_png, batch_size
):
    uploads = [_upload_waiting(user, digit_png, index) for index in range(3)]
    done = selectors.UploadFilters(status="done")
    Prediction.objects.filter(upload__in=uploads[1:]).update(status="done", digit=7, confidence=0.9)
    newest = selectors.upload_newest_id_for_user(user=user)
    confirmed = selectors.upload_count_for_user(user=user, filters=done, newest_id=newest)
    # The oldest finishes between the confirmation and the deletion.
    Prediction.objects.filter(upload=uploads[0]).update(status="done", digit=1, confidence=0.9)

    deleted = services.uploads_delete(
        owner=user, filters=done, newest_id=newest, limit=confirmed, batch_size=batch_size
    )

    assert confirmed == deleted == 2
    assert list(Upload.objects.all()) == [uploads[0]]


@pytest.mark.django_db(transaction=True)
def test_a_deletion_by_filters_cut_off_midway_keeps_what_it_committed_counted_and_the_rest_as_it_was(user, digit_png):
    from django.db import OperationalError

    uploads = [_upload_waiting(user, digit_png, index) for index in range(5)]
    files = {upload.pk: Path(upload.image.path) for upload in uploads}
    batches = []

    with connection.execute_wrapper(upload_deletions_lost_in_the_second_batch(batches)), pytest.raises(
        services.UploadsDeleteInterruptedError
    ) as stopped:
        services.uploads_delete(owner=user, filters=selectors.UploadFilters(), batch_size=2)

    assert stopped.value.deleted == 2 and isinstance(stopped.value.__cause__, OperationalError)

    left = {upload.pk for upload in uploads[:3]}
    assert set(Upload.objects.values_list("pk", flat=True)) == left
    assert Prediction.objects.count() == 3
    assert _use_of(user) == sum(stored_size(digit_png(index)) for index in range(3))
    assert services.storage_use_recount() == 0
    assert {pk for pk, file in files.items() if file.exists()} == left
    # Asked again, the deletion finishes the job.
    assert services.uploads_delete(owner=user, filters=selectors.UploadFilters(), batch_size=2) == 3
    assert not Upload.objects.exists() and _use_of(user) == 0
    assert not any(file.exists() for file in files.values())


@pytest.mark.skipif(connection.vendor != "postgresql", reason="row locks: SQLite writes one transaction at a time")
@pytest.mark.django_db(transaction=True)
def test_one_upload_deleted_while_a_deletion_of_many_takes_it_too_waits_instead_of_deadlocking(user, digit_png):
    first, second = (_upload_waiting(user, digit_png, index) for index in (0, 1))

    outcome = deletions_race(
        held=lambda: services.upload_delete(upload=Upload.objects.get(pk=second.pk)),
        other=lambda: services.uploads_delete(owner=user, upload_ids=[first.pk, second.pk]),
    )

    assert not [value for value in outcome.values() if isinstance(value, Exception)], outcome
    assert not Upload.objects.exists() and _use_of(user) == 0


def test_selected_uploads_are_deleted_all_or_none(user, digit_png):
    from django.db import OperationalError

    uploads = [_upload_waiting(user, digit_png, index) for index in range(3)]
    used, named = _use_of(user), []

    def lost_once_every_one_was_deleted(execute, sql, params, many, context):
        if sql.startswith('DELETE FROM "classifier_upload"'):
            named.extend(params)
        elif sql.startswith('UPDATE "classifier_storageuse"') and len(named) == len(uploads):
            raise OperationalError("server closed the connection unexpectedly")
        return execute(sql, params, many, context)

    with connection.execute_wrapper(lost_once_every_one_was_deleted), pytest.raises(OperationalError):
        services.uploads_delete(owner=user, upload_ids=[upload.pk for upload in uploads])

    assert Upload.objects.count() == 3 and Prediction.objects.count() == 3
    assert _use_of(user) == used
    assert all(Path(upload.image.path).is_file() for upload in uploads)


def test_more_uploads_than_may_be_selected_at_once_are_refused_and_none_is_deleted(user, digit_png):
    upload = _upload_waiting(user, digit_png, 0)
    ids = [upload.pk, *range(10**9, 10**9 + services.UPLOADS_DELETE_MAX_SELECTED)]

    with pytest.raises(services.UploadsDeleteError, match="At most 500 uploads"):
        services.uploads_delete(owner=user, upload_ids=ids)

    assert list(Upload.objects.all()) == [upload]
