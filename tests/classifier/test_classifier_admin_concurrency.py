"""The admin's bulk actions and change pages while other requests change the same uploads."""
import contextlib
import threading

import pytest
from django.db import connection

from classifier import services
from classifier.models import Prediction, Upload
from tests.classifier.test_classifier_admin import _rows


@contextlib.contextmanager
def _deleted_by_its_owner_before(upload, *, statement):
    """The owner deletes ``upload``, from another connection, just before this one sends the first ``statement``
    (a test of the SQL) while it is still there."""

    def delete_elsewhere():
        try:
            services.upload_delete(upload=upload)
        finally:
            connection.close()

    def deleted_first(execute, sql, params, many, context):
        if statement(sql) and Upload.objects.filter(pk=upload.pk).exists():
            deletion = threading.Thread(target=delete_elsewhere)
            deletion.start()
            deletion.join(10)
        return execute(sql, params, many, context)

    with connection.execute_wrapper(deleted_first):
        yield


@pytest.mark.skipif("connection.vendor != 'postgresql'", reason="row locks between two connections")
@pytest.mark.django_db(transaction=True)
def test_a_re_run_of_uploads_one_of_which_is_deleted_meanwhile_queues_the_others(
    client, staff_user, user, active_checkpoint
):
    uploads = _rows(user, 3)
    gone = uploads[1]
    client.force_login(staff_user)

    # The owner deletes one of them after the list was read, before the re-run locks them.
    with _deleted_by_its_owner_before(gone, statement=lambda sql: "FOR UPDATE" in sql):
        response = client.post(
            "/admin/classifier/upload/",
            {"action": "rerun_uploads", "select_across": "1", "index": "0", "_selected_action": [uploads[0].pk]},
        )

    assert response.status_code == 302
    assert "Queued 2 new prediction(s)" in client.get(response["Location"]).content.decode()
    assert not Upload.objects.filter(pk=gone.pk).exists()
    assert sorted(Prediction.objects.filter(status="pending").values_list("upload_id", flat=True)) == sorted(
        [uploads[0].pk, uploads[2].pk]
    )


@pytest.mark.skipif("connection.vendor != 'postgresql'", reason="a deletion committed by another connection")
@pytest.mark.django_db(transaction=True)
def test_renaming_an_upload_its_owner_deletes_meanwhile_does_not_bring_it_back(client, staff_user, user, digit_png):
    import io

    from classifier.models import StorageUse

    (prediction,) = services.predictions_submit(owner=user, files=[(io.BytesIO(digit_png(0)), "0.png")], source="file")
    upload = prediction.upload
    client.force_login(staff_user)

    # The page was read and the form checked; the owner deletes the upload before the admin writes it.
    with _deleted_by_its_owner_before(upload, statement=lambda sql: sql.startswith(f'UPDATE "{Upload._meta.db_table}"')):
        response = client.post(f"/admin/classifier/upload/{upload.pk}/change/", {"original_name": "renamed.png"})

    assert not Upload.objects.filter(pk=upload.pk).exists()
    assert StorageUse.objects.get(owner=user).bytes == 0
    assert response.status_code == 302
    assert "was deleted meanwhile; nothing was saved" in client.get(response["Location"]).content.decode()


@pytest.mark.skipif("connection.vendor != 'postgresql'", reason="a deletion committed by another connection")
@pytest.mark.django_db(transaction=True)
def test_feedback_given_in_the_admin_on_an_upload_deleted_meanwhile_says_so_instead_of_failing(
    client, staff_user, user
):
    from django.contrib.admin.models import LogEntry

    (upload,) = _rows(user, 1)
    prediction = upload.predictions.get()
    client.force_login(staff_user)

    with _deleted_by_its_owner_before(upload, statement=lambda sql: "FOR UPDATE" in sql):
        response = client.post(f"/admin/classifier/prediction/{prediction.pk}/change/", {"feedback": "4"})

    assert response.status_code == 302
    assert "was deleted meanwhile; nothing was saved" in client.get(response["Location"]).content.decode()
    assert not Prediction.objects.exists() and not LogEntry.objects.exists()
