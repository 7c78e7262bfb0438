"""An upload's width and height are validation's (the picture as sent), no longer re-read from its file by Django.

No change to the database: the field's options live in Python only.
"""

import classifier.models
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ("classifier", "0017_prediction_times_as_python_writes_them"),
    ]

    operations = [
        migrations.AlterField(
            model_name="upload",
            name="image",
            field=models.ImageField(upload_to=classifier.models.upload_image_path),
        ),
    ]
