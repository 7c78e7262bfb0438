"""Predictions dated by the database's clock: created_at by the column's default, and a token for each claim."""

# Both change only the catalogue on PostgreSQL (a default, and a column without one): no row is rewritten.

import django.db.models.functions.datetime
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('classifier', '0014_prediction_upload_newest_index'),
    ]

    operations = [
        migrations.AddField(
            model_name='prediction',
            name='claim_token',
            field=models.UUIDField(blank=True, editable=False, null=True),
        ),
        migrations.AlterField(
            model_name='prediction',
            name='created_at',
            field=models.DateTimeField(db_default=django.db.models.functions.datetime.Now(), db_index=True),
        ),
    ]
