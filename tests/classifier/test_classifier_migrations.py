"""Migrations that move data (0003, 0009, 0010), and the database's clock dating predictions (0015)."""
import datetime as dt
import io

import numpy as np
import pytest
from django.core.files.base import ContentFile
from django.db import connection
from PIL import Image

from tests.migrations import latest_migrations, migrate_to

BEFORE = [("classifier", "0002_sample_image_unique")]
AFTER = [("classifier", "0003_prediction_input_pixels")]


@pytest.mark.django_db(transaction=True)
def test_input_pngs_on_disk_become_pixels_in_the_row():
    old_apps = migrate_to(BEFORE)
    try:
        user = old_apps.get_model("auth", "User").objects.create(username="legacy")
        upload = old_apps.get_model("classifier", "Upload").objects.create(
            owner=user, image="uploads/x.png", width=28, height=28, format="PNG", size=1, sha256="0" * 64
        )
        prediction_model = old_apps.get_model("classifier", "Prediction")
        picture = np.arange(28 * 28, dtype=np.uint32).reshape(28, 28).astype(np.uint8)
        png = io.BytesIO()
        Image.fromarray(picture).save(png, format="PNG")
        with_file = prediction_model(upload=upload, status="done", digit=3)
        with_file.input_image.save("input.png", ContentFile(png.getvalue()), save=True)
        lost = prediction_model.objects.create(upload=upload, status="done", digit=4, input_image="derived/gone.png")
        pending = prediction_model.objects.create(upload=upload)

        new_apps = migrate_to(AFTER)
        migrated = new_apps.get_model("classifier", "Prediction").objects
        assert bytes(migrated.get(pk=with_file.pk).input_pixels) == picture.tobytes()
        # A missing file costs only the picture: the row and its result stay.
        assert migrated.get(pk=lost.pk).input_pixels is None and migrated.get(pk=lost.pk).digit == 4
        assert migrated.get(pk=pending.pk).input_pixels is None
    finally:
        migrate_to(latest_migrations())


@pytest.mark.django_db(transaction=True)
def test_the_quota_migration_counts_each_owners_uploads_already_stored():
    old_apps = migrate_to([("classifier", "0008_prediction_several_digits")])
    try:
        users = old_apps.get_model("auth", "User").objects
        alice, bob, _carol = (users.create(username=name) for name in ("alice", "bob", "carol"))
        uploads = old_apps.get_model("classifier", "Upload").objects
        for index, (owner, size) in enumerate([(alice, 100), (alice, 250), (bob, 7)]):
            uploads.create(
                owner=owner, image=f"uploads/{index}.png", width=28, height=28, format="PNG", size=size, sha256="0" * 64
            )

        new_apps = migrate_to([("classifier", "0009_storage_use")])
        counted = dict(new_apps.get_model("classifier", "StorageUse").objects.values_list("owner__username", "bytes"))
        assert counted == {"alice": 350, "bob": 7}
    finally:
        migrate_to(latest_migrations())


@pytest.mark.django_db(transaction=True)
def test_the_exception_text_of_an_image_that_could_not_be_prepared_becomes_the_plain_sentence():
    from classifier.services import PREPARE_FAILED_ERROR

    old_apps = migrate_to([("classifier", "0009_storage_use")])
    try:
        owner = old_apps.get_model("auth", "User").objects.create(username="legacy")
        upload = old_apps.get_model("classifier", "Upload").objects.create(
            owner=owner, image="uploads/x.png", width=28, height=28, format="PNG", size=1, sha256="0" * 64
        )
        predictions = old_apps.get_model("classifier", "Prediction").objects
        technical = predictions.create(
            upload=upload, status="failed", error="The image could not be prepared: operands could not be broadcast"
        )
        no_digit = predictions.create(upload=upload, status="failed", error="No digit was found in this image: blank.")

        new_apps = migrate_to([("classifier", "0010_prediction_prepare_error_plain")])
        migrated = new_apps.get_model("classifier", "Prediction").objects
        assert migrated.get(pk=technical.pk).error == PREPARE_FAILED_ERROR
        assert migrated.get(pk=no_digit.pk).error == "No digit was found in this image: blank."
    finally:
        migrate_to(latest_migrations())


@pytest.mark.django_db
def test_a_prediction_inserted_without_a_time_is_dated_by_the_database(user):
    from django.utils import timezone

    from classifier.models import Prediction, Upload

    upload = Upload.objects.create(owner=user, image="uploads/x.png", width=28, height=28, format="PNG", size=1,
                                   sha256="0" * 64)
    table = Prediction._meta.db_table
    with connection.cursor() as cursor:
        # As any client of the table inserts one, a web host of whatever clock among them.
        cursor.execute(
            f"INSERT INTO {table} (upload_id, status, device, error, publish_attempts, several_digits, attempts) "
            "VALUES (%s, 'pending', '', '', 0, false, 0)", [upload.pk]
        )
    (created_at,) = Prediction.objects.filter(upload=upload).values_list("created_at", flat=True)
    assert abs(created_at - timezone.now()) < dt.timedelta(minutes=1)
