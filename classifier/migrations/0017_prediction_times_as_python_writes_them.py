"""The database's clock writes times on SQLite as Django writes Python's; the times it wrote before are rewritten so."""

import mnistsite.database_now
from django.db import migrations, models


def times_rewrite(apps, schema_editor):
    models = [apps.get_model(*name) for name in [("classifier", "Prediction")]]
    mnistsite.database_now.sqlite_times_rewrite(models=models, connection=schema_editor.connection)


class Migration(migrations.Migration):

    dependencies = [
        ('classifier', '0016_idempotency_key_upload_ids'),
    ]

    operations = [
        migrations.AlterField(
            model_name='prediction',
            name='created_at',
            field=models.DateTimeField(db_default=mnistsite.database_now.Now(), db_index=True),
        ),
        migrations.RunPython(times_rewrite, migrations.RunPython.noop),
    ]
