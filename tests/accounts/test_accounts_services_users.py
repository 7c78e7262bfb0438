"""Accounts: deleting one while its uploads are being deleted."""
import pytest
from django.db import connection


@pytest.mark.skipif(connection.vendor != "postgresql", reason="row locks: SQLite writes one transaction at a time")
@pytest.mark.django_db(transaction=True)
def test_an_account_deleted_while_a_deletion_of_its_uploads_runs_waits_for_it_instead_of_deadlocking(user, digit_png):
    import io

    from django.contrib.auth import get_user_model

    from accounts.services import account_delete
    from classifier import services
    from classifier.models import Upload
    from tests.classifier.fixtures import deletions_race

    uploads = []
    for index in (0, 1):
        upload = services.upload_create(owner=user, file=io.BytesIO(digit_png(index)), source="file")
        services.predictions_create(uploads=[upload], publish=False)
        uploads.append(upload)

    # The account's deletion (Django's cascade: predictions, then uploads) held, "Delete all" in another tab runs.
    outcome = deletions_race(
        held=lambda: account_delete(user=get_user_model().objects.get(pk=user.pk)),
        other=lambda: services.uploads_delete(owner=user, upload_ids=[upload.pk for upload in uploads]),
    )

    assert not [value for value in outcome.values() if isinstance(value, Exception)], outcome
    assert not Upload.objects.exists() and not get_user_model().objects.filter(pk=user.pk).exists()
