"""An upload's newest prediction is found by an index on (upload, created_at, id), which replaces the one on upload."""

import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('classifier', '0013_upload_label_a_digit'),
        ('training', '0003_training_run_created_at_database_clock'),
    ]

    # The new index first: lookups by upload are never without one.
    operations = [
        migrations.AddIndex(
            model_name='prediction',
            index=models.Index(fields=['upload', '-created_at', '-id'], name='prediction_upload_newest'),
        ),
        migrations.AlterField(
            model_name='prediction',
            name='upload',
            field=models.ForeignKey(db_index=False, on_delete=django.db.models.deletion.CASCADE, related_name='predictions', to='classifier.upload'),
        ),
    ]
