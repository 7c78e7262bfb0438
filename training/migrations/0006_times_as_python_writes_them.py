"""The database's clock writes times on SQLite as Django writes Python's; the times it wrote before are rewritten so."""

import mnistsite.database_now
from django.db import migrations, models


def times_rewrite(apps, schema_editor):
    models = [apps.get_model(*name) for name in [("training", "TrainingRun"), ("training", "Checkpoint")]]
    mnistsite.database_now.sqlite_times_rewrite(models=models, connection=schema_editor.connection)


class Migration(migrations.Migration):

    dependencies = [
        ('training', '0005_training_run_queued_at'),
    ]

    operations = [
        migrations.AlterField(
            model_name='checkpoint',
            name='created_at',
            field=models.DateTimeField(db_default=mnistsite.database_now.Now()),
        ),
        migrations.AlterField(
            model_name='trainingrun',
            name='created_at',
            field=models.DateTimeField(db_default=mnistsite.database_now.Now()),
        ),
        migrations.RunPython(times_rewrite, migrations.RunPython.noop),
    ]
