"""Every model change ships with its migration, and each migration leaves the code before it working."""
import io

import pytest
from django.apps import apps
from django.core.management import call_command
from django.db.migrations import operations
from django.db.migrations.loader import MigrationLoader

PROJECT_APPS = {"accounts", "classifier", "training"}


@pytest.mark.django_db
def test_every_model_change_has_its_migration():
    out = io.StringIO()
    try:
        call_command("makemigrations", "--check", "--dry-run", stdout=out, stderr=out)
    except SystemExit as exc:
        pytest.fail(f"models changed without a migration (exit {exc.code}):\n{out.getvalue()}")


def test_every_column_added_to_an_existing_table_can_be_left_out_of_an_insert():
    # `migrate` runs while the previous release still serves (compose's web and workers are recreated after it):
    # that code inserts rows without the new column, which a NOT NULL column without a database default refuses.
    added = [
        (migration.app_label, operation.model_name, operation.name)
        for migration in MigrationLoader(None, ignore_no_migrations=True).disk_migrations.values()
        if migration.app_label in PROJECT_APPS
        for operation in migration.operations
        if isinstance(operation, operations.AddField)
    ]
    assert added, "no column was ever added: the test looks in the wrong place"
    refused = []
    for app_label, model_name, field_name in added:
        field = apps.get_model(app_label, model_name)._meta.get_field(field_name)
        if not (field.null or field.has_db_default()):
            refused.append(f"{app_label}.{model_name}.{field_name}")
    assert refused == []

