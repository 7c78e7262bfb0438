"""An idempotency key names its uploads too, so that a repeat can answer for uploads whose predictions were deleted."""

# Nullable: PostgreSQL adds it without rewriting the table, and the release before it can still insert keys.

from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('classifier', '0015_prediction_times_database_clock'),
    ]

    operations = [
        migrations.AddField(
            model_name='idempotencykey',
            name='upload_ids',
            field=models.JSONField(blank=True, null=True),
        ),
    ]
