"""An idempotency key names its uploads too, so that a repeat can answer for uploads whose predictions were deleted."""

# A constant default: PostgreSQL adds the column without rewriting the table.

from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('classifier', '0015_prediction_times_database_clock'),
    ]

    operations = [
        migrations.AddField(
            model_name='idempotencykey',
            name='upload_ids',
            field=models.JSONField(default=list),
        ),
    ]
