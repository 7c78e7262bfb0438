"""Migration 0003: model inputs stored as PNG files are carried into the row, and back again on reverse."""
import io

import numpy as np
import pytest
from django.core.files.base import ContentFile
from django.db import connection
from django.db.migrations.executor import MigrationExecutor
from PIL import Image

BEFORE = [("classifier", "0002_sample_image_unique")]
AFTER = [("classifier", "0003_prediction_input_pixels")]


def _migrate(targets):
    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate(targets)
    return executor.loader.project_state(targets).apps


@pytest.mark.django_db(transaction=True)
def test_input_pngs_on_disk_become_pixels_in_the_row():
    old_apps = _migrate(BEFORE)
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

        new_apps = _migrate(AFTER)
        migrated = new_apps.get_model("classifier", "Prediction").objects
        assert bytes(migrated.get(pk=with_file.pk).input_pixels) == picture.tobytes()
        # A missing file costs only the picture: the row and its result stay.
        assert migrated.get(pk=lost.pk).input_pixels is None and migrated.get(pk=lost.pk).digit == 4
        assert migrated.get(pk=pending.pk).input_pixels is None
    finally:
        _migrate(_latest())


def _latest():
    executor = MigrationExecutor(connection)
    return executor.loader.graph.leaf_nodes()
