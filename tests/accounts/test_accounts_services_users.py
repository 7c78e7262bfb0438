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

    # The account's deletion (predictions, then uploads) held, "Delete all" in another tab runs.
    outcome = deletions_race(
        held=lambda: account_delete(user=get_user_model().objects.get(pk=user.pk)),
        other=lambda: services.uploads_delete(owner=user, upload_ids=[upload.pk for upload in uploads]),
    )

    assert not [value for value in outcome.values() if isinstance(value, Exception)], outcome
    assert not Upload.objects.exists() and not get_user_model().objects.filter(pk=user.pk).exists()


PASSWORD = "x9!kQ2#vLp"


@pytest.mark.django_db
def test_a_sign_up_stores_the_account_normalized_as_the_form_stores_it_with_where_its_address_stands():
    from accounts.models import EmailAddressState
    from accounts.services import user_sign_up

    user = user_sign_up(username="ｃａｒｏｌ", email="Carol@EXAMPLE.com", password=PASSWORD)

    user.refresh_from_db()
    assert (user.username, user.email) == ("carol", "Carol@example.com")
    assert user.check_password(PASSWORD)
    assert EmailAddressState.objects.filter(user=user, confirmed_email="").exists()


@pytest.mark.django_db
@pytest.mark.parametrize("name", ["Alice", "ALICE", "ａｌｉｃｅ", "Ａｌｉｃｅ"])
def test_a_name_stored_meanwhile_in_another_case_or_in_compatibility_letters_is_refused_and_stores_nothing(
        user, django_user_model, name):
    from accounts.models import EmailAddressState
    from accounts.services import UsernameTaken, user_sign_up

    # As when another sign-up stored "alice" after this one's form found the name free.
    with pytest.raises(UsernameTaken):
        user_sign_up(username=name, email="someone@example.com", password=PASSWORD)

    assert list(django_user_model.objects.values_list("username", flat=True)) == ["alice"]
    assert not EmailAddressState.objects.exists()


@pytest.mark.django_db
def test_no_two_accounts_have_names_that_differ_only_in_case_however_they_are_stored(user, django_user_model):
    from django.db import IntegrityError, transaction

    # The admin's change form, a shell, createsuperuser: none compares names in any case before it stores one.
    with pytest.raises(IntegrityError), transaction.atomic():
        django_user_model.objects.create_user(username="ALICE", password=PASSWORD)
    bob = django_user_model.objects.create_user(username="bob", password=PASSWORD)
    bob.username = "Alice"
    with pytest.raises(IntegrityError), transaction.atomic():
        bob.save()


@pytest.mark.django_db
def test_a_demo_account_named_as_someone_s_account_in_another_case_is_refused_and_theirs_is_left_alone(
        user, django_user_model):
    from accounts.services import DemoUserError, demo_user_ensure

    with pytest.raises(DemoUserError, match="'Alice' is someone's account"):
        demo_user_ensure(username="Alice", password=PASSWORD)

    user.refresh_from_db()
    assert not user.is_staff and user.check_password("correct horse battery")
    assert django_user_model.objects.count() == 1


@pytest.mark.skipif(connection.vendor != "postgresql", reason="row locks: SQLite writes one transaction at a time")
@pytest.mark.django_db(transaction=True)
def test_an_account_locked_for_a_change_still_takes_its_uploads_meanwhile(user, digit_png):
    # A password change holds the lock while the new password is hashed: the account's uploads in other tabs must
    # not wait for that.
    import io

    from django.db import transaction

    from accounts.services import user_lock
    from classifier import services
    from tests.locks import held_open

    with held_open(lambda: user_lock(user=user)), transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute("SET LOCAL lock_timeout = '2s'")
        upload = services.upload_create(owner=user, file=io.BytesIO(digit_png(0)), source="file")
    assert upload.pk is not None


@pytest.mark.django_db
def test_deleting_an_account_deletes_its_uploads_predictions_and_files_without_reading_one_as_an_instance(
        user, other_user, digit_png, django_capture_on_commit_callbacks, settings):
    import io
    from pathlib import Path

    from django.db.models.signals import post_init

    from accounts.services import account_delete
    from classifier import services
    from classifier.models import Prediction, StorageUse, Upload

    def uploaded(owner, count):
        return services.predictions_submit(
            owner=owner, files=[(io.BytesIO(digit_png(index)), None) for index in range(count)], source="api")

    gone, kept = uploaded(user, 3), uploaded(other_user, 2)
    read = []

    def instance_read(sender, instance, **kwargs):
        read.append(instance)

    # The cascade read each one to send its deletion signals, 15 s for an account of 100,000 uploads.
    for model in (Upload, Prediction):
        post_init.connect(instance_read, sender=model)
    try:
        with django_capture_on_commit_callbacks(execute=True):
            account_delete(user=user)
    finally:
        for model in (Upload, Prediction):
            post_init.disconnect(instance_read, sender=model)

    assert read == []
    assert set(Upload.objects.values_list("pk", flat=True)) == {prediction.upload_id for prediction in kept}
    assert Prediction.objects.count() == 2 and not StorageUse.objects.filter(owner_id=user.pk).exists()
    def stored(predictions):
        return [Path(settings.MEDIA_ROOT, prediction.upload.image.name).exists() for prediction in predictions]

    assert stored(gone) == [False] * 3 and stored(kept) == [True] * 2
