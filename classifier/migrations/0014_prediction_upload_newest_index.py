"""An upload's newest prediction is found by an index on (upload, created_at, id), which replaces the one on upload.

On PostgreSQL both indexes change concurrently, outside a transaction: a plain CREATE INDEX, and Django's way of
altering the foreign key (dropping and adding its constraint, which checks every row), would hold every upload and
prediction of the site for as long as they took. The constraint itself stays as it is.
"""

import django.db.models.deletion
from django.db import migrations, models

NEW_INDEX = models.Index(fields=["upload", "-created_at", "-id"], name="prediction_upload_newest")
OLD_INDEX = "classifier_prediction_upload_id_1a6e5c74"


def _postgresql(schema_editor) -> bool:
    return schema_editor.connection.vendor == "postgresql"


_ADD = migrations.AddIndex(model_name="prediction", index=NEW_INDEX)
_ALTER = migrations.AlterField(
    model_name="prediction",
    name="upload",
    field=models.ForeignKey(
        db_index=False, on_delete=django.db.models.deletion.CASCADE, related_name="predictions", to="classifier.upload"
    ),
)


class _IndexesSwapped(migrations.operations.base.Operation):
    """``_ADD`` then ``_ALTER``; on PostgreSQL the two indexes change concurrently and the constraint stays."""

    reversible = True

    def state_forwards(self, app_label, state):
        _ADD.state_forwards(app_label, state)
        _ALTER.state_forwards(app_label, state)

    def database_forwards(self, app_label, schema_editor, from_state, to_state):
        if _postgresql(schema_editor):
            model = to_state.apps.get_model(app_label, "prediction")
            schema_editor.execute(NEW_INDEX.create_sql(model, schema_editor, concurrently=True))
            schema_editor.execute(f'DROP INDEX CONCURRENTLY IF EXISTS "{OLD_INDEX}"')
            return
        middle = from_state.clone()
        _ADD.state_forwards(app_label, middle)
        _ADD.database_forwards(app_label, schema_editor, from_state, middle)
        _ALTER.database_forwards(app_label, schema_editor, middle, to_state)

    def database_backwards(self, app_label, schema_editor, from_state, to_state):
        if _postgresql(schema_editor):
            table = to_state.apps.get_model(app_label, "prediction")._meta.db_table
            schema_editor.execute(f'CREATE INDEX CONCURRENTLY IF NOT EXISTS "{OLD_INDEX}" ON "{table}" ("upload_id")')
            schema_editor.execute(f'DROP INDEX CONCURRENTLY IF EXISTS "{NEW_INDEX.name}"')
            return
        middle = to_state.clone()
        _ADD.state_forwards(app_label, middle)
        _ALTER.database_backwards(app_label, schema_editor, from_state, middle)
        _ADD.database_backwards(app_label, schema_editor, middle, to_state)

    def describe(self):
        return "Index prediction (upload, -created_at, -id) in place of the index on upload"


class Migration(migrations.Migration):
    # CREATE and DROP INDEX CONCURRENTLY cannot run inside a transaction.
    atomic = False

    dependencies = [
        ('classifier', '0013_upload_label_a_digit'),
        ('training', '0003_training_run_created_at_database_clock'),
    ]

    operations = [_IndexesSwapped()]
