"""Failures to prepare an image written with their exception's text: the plain sentence the pages show now."""
from django.db import migrations

OLD_PREFIX = "The image could not be prepared: "
# classifier.services.PREPARE_FAILED_ERROR as this migration was written; a later change of it leaves these rows be.
PLAIN = "The image could not be prepared for the model. Try another picture."


def forwards(apps, schema_editor):
    Prediction = apps.get_model("classifier", "Prediction")
    Prediction.objects.filter(status="failed", error__startswith=OLD_PREFIX).update(error=PLAIN)


class Migration(migrations.Migration):
    dependencies = [("classifier", "0009_storage_use")]

    operations = [migrations.RunPython(forwards, migrations.RunPython.noop, elidable=True)]
