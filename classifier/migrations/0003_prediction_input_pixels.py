"""The 28x28 model input moves from a PNG file per prediction into the row (784 bytes).

Existing PNGs are read into the new column. The files themselves are left on disk: deleting them inside a
migration that could still roll back would lose them; the daily orphan sweep sets `derived/` aside.
"""
import io

from django.core.files.storage import default_storage
from django.db import migrations, models
from PIL import Image

SIDE = 28


def input_files_to_pixels(apps, schema_editor):
    prediction_model = apps.get_model("classifier", "Prediction")
    for prediction in prediction_model.objects.exclude(input_image="").iterator():
        try:
            with default_storage.open(prediction.input_image.name, "rb") as stored:
                picture = Image.open(io.BytesIO(stored.read()))
                picture.load()
        except (OSError, ValueError):
            # A missing or unreadable file: the prediction keeps its digit and probabilities, without the picture.
            continue
        if picture.size == (SIDE, SIDE):
            prediction.input_pixels = picture.convert("L").tobytes()
            prediction.save(update_fields=["input_pixels"])


def pixels_to_input_files(apps, schema_editor):
    from django.core.files.base import ContentFile

    prediction_model = apps.get_model("classifier", "Prediction")
    for prediction in prediction_model.objects.exclude(input_pixels=None).iterator():
        out = io.BytesIO()
        Image.frombytes("L", (SIDE, SIDE), bytes(prediction.input_pixels)).save(out, format="PNG")
        prediction.input_image.save("input.png", ContentFile(out.getvalue()), save=True)


class Migration(migrations.Migration):
    dependencies = [
        ("classifier", "0002_sample_image_unique"),
    ]

    operations = [
        migrations.AddField(
            model_name="prediction",
            name="input_pixels",
            field=models.BinaryField(blank=True, null=True, editable=False),
        ),
        migrations.RunPython(input_files_to_pixels, pixels_to_input_files),
        migrations.RemoveField(
            model_name="prediction",
            name="input_image",
        ),
    ]
