"""Every model change ships with its migration, and each migration leaves the code before it working, unblocked."""
import io
import re
from pathlib import Path

import pytest
from django.apps import apps
from django.conf import settings
from django.contrib.postgres.functions import RandomUUID
from django.contrib.postgres.operations import AddIndexConcurrently
from django.core.management import call_command
from django.db import connection, migrations, models
from django.db.migrations import operations
from django.db.migrations.executor import MigrationExecutor
from django.db.migrations.loader import MigrationLoader
from django.db.migrations.state import ProjectState

PROJECT_APPS = {"accounts", "classifier", "training"}


def test_the_apps_checked_are_every_app_of_the_project_with_migrations():
    # An app added later and left out of PROJECT_APPS would have its migrations pass every check here unread.
    with_migrations = {label for label, _ in MigrationLoader(None, ignore_no_migrations=True).disk_migrations}
    ours = {
        label for label in with_migrations
        if Path(apps.get_app_config(label).path).is_relative_to(settings.BASE_DIR)
        and "site-packages" not in Path(apps.get_app_config(label).path).parts
    }
    assert ours == PROJECT_APPS


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


# What a migration's SQL does to a table that may hold millions of rows, while `migrate` runs under a serving site:
# each of these holds a lock that stops writes (or reads and writes) to the whole table until the statement, or the
# migration's transaction, ends. Tables the same migration creates are empty, and exempt.
LOCKING_STATEMENTS = [
    (re.compile(r'CREATE (UNIQUE )?INDEX (?!CONCURRENTLY)(?:IF NOT EXISTS )?"[^"]+" ON "(?P<table>[^"]+)"'),
     "builds an index without CONCURRENTLY: writes wait until it is built (AddIndexConcurrently, atomic = False)"),
    (re.compile(r'ALTER TABLE "(?P<table>[^"]+)" ALTER COLUMN "[^"]+" TYPE '),
     "changes a column's type: the table is rewritten while reads and writes wait"),
    (re.compile(r'ALTER TABLE "(?P<table>[^"]+)" ALTER COLUMN "[^"]+" SET NOT NULL'),
     "makes a column NOT NULL: every row is read while reads and writes wait (a CHECK ... NOT VALID, validated "
     "in a later migration, first)"),
    (re.compile(r'ALTER TABLE "(?P<table>[^"]+)" ADD CONSTRAINT (?!.*NOT VALID)'),
     "adds a constraint that reads every row, or builds an index, while the table is locked (add it NOT VALID and "
     "validate it in a later migration; a unique one from an index built concurrently)"),
    (re.compile(r'ALTER TABLE "(?P<table>[^"]+)" ADD COLUMN .*(CHECK \(|REFERENCES |UNIQUE|PRIMARY KEY)'),
     "adds a column with a constraint, checked against every row while reads and writes wait (a Positive*Field "
     "has a CHECK)"),
    (re.compile(r'ALTER TABLE "(?P<table>[^"]+)" ADD COLUMN .* DEFAULT \(?\w+\('),
     "adds a column whose default is a function: a volatile one rewrites the table while reads and writes wait"),
    (re.compile(r'^\s*(?:UPDATE|DELETE FROM) "(?P<table>[^"]+)"'),
     "changes rows inside the migration's transaction, holding their locks until it ends"),
]
CREATED_TABLE = re.compile(r'CREATE TABLE "(?P<table>[^"]+)"')

# Released migrations that do hold such a lock, each measured on a large database (README, "Upgrading a large
# site"); a new one is listed here only with its own measurement there.
REVIEWED = {
    "accounts.0002_tokens_from_plain_keys": "reads the old tokens' table, one row a user at most",
    "accounts.0005_email_address_state": "fills a new table a thousand accounts at a time; nothing waits for it",
    "accounts.0007_mail_claims": "indexes the address states' table, one row an account",
    "accounts.0009_username_unique_in_any_case": "builds a unique index on accounts: log-ins and sign-ups wait",
    "classifier.0002_sample_image_unique": "builds a unique index on uploads: uploads wait",
    "classifier.0003_prediction_input_pixels": "reads every prediction's input file while predictions wait",
    "classifier.0004_fewer_indexes": "checks every upload's owner while uploads and predictions wait",
    "classifier.0005_prediction_attempts": "checks every prediction against the new column's CHECK",
    "classifier.0009_storage_use": "checks every upload against the new column's CHECK, then totals them",
    "classifier.0010_prediction_prepare_error_plain": "rewrites the error of failed predictions only",
    "classifier.0017_prediction_times_as_python_writes_them": "rewrites times on SQLite only",
    "classifier.0019_prediction_priority": "checks every prediction against the new column's CHECK",
    "classifier.0020_prediction_model_hand_backs": "checks every prediction against the new column's CHECK",
    "training.0006_times_as_python_writes_them": "rewrites times on SQLite only",
}


def migration_locks(migration, state, connection):
    """What ``migration``, applied to ``state``, does that holds a table's lock for a time that grows with its rows;
    returns those findings and the state after it."""
    found = [
        f"{type(operation).__name__}: runs Python inside the migration, which nothing here can read: measure it on a "
        "large database and list it in REVIEWED"
        for operation in migration.operations
        if isinstance(operation, operations.RunPython) and operation.code is not operations.RunPython.noop
    ]
    with connection.schema_editor(collect_sql=True, atomic=migration.atomic) as editor:
        state = migration.apply(state, editor, collect_sql=True)
    created = {match["table"] for statement in editor.collected_sql for match in CREATED_TABLE.finditer(statement)}
    for statement in editor.collected_sql:
        for pattern, danger in LOCKING_STATEMENTS:
            match = pattern.search(statement)
            if match and match["table"] not in created:
                found.append(f"{danger}: {statement.strip()}")
    return found, state


def project_migration_locks(*, extra=()):
    """Every project migration's findings, in the order `migrate` applies them, then those of ``extra``
    (migrations placed after the latest ones)."""
    executor = MigrationExecutor(connection)
    plan = executor.migration_plan(executor.loader.graph.leaf_nodes(), clean_start=True)
    state = ProjectState(real_apps=executor.loader.unmigrated_apps)
    findings = {}
    for migration in [migration for migration, _ in plan] + list(extra):
        found, state = migration_locks(migration, state, connection)
        if migration.app_label in PROJECT_APPS and found:
            findings[f"{migration.app_label}.{migration.name}"] = found
    return findings


on_postgresql = pytest.mark.skipif("connection.vendor != 'postgresql'", reason="the SQL PostgreSQL is sent")


@on_postgresql
@pytest.mark.django_db
def test_no_migration_locks_a_large_table_unless_reviewed():
    unreviewed = {name: found for name, found in project_migration_locks().items() if name not in REVIEWED}
    assert unreviewed == {}


@on_postgresql
@pytest.mark.django_db
def test_every_reviewed_migration_still_takes_the_lock_it_was_reviewed_for():
    # A check loosened until it misses these would pass every new migration too.
    assert sorted(project_migration_locks()) == sorted(REVIEWED)


def new_migration(*operations_, atomic=True):
    """A classifier migration after the latest ones, as the next one written would be."""
    return type("Migration", (migrations.Migration,), {"operations": list(operations_), "atomic": atomic})(
        "9999_next", "classifier")


@on_postgresql
@pytest.mark.django_db
@pytest.mark.parametrize("operation", [
    migrations.AddIndex("prediction", models.Index(fields=["digit"], name="prediction_digit")),
    migrations.AddConstraint("prediction", models.CheckConstraint(condition=models.Q(digit__lte=9), name="digit_9")),
    migrations.AlterField("prediction", "queue_ms", models.IntegerField(null=True)),
    migrations.AlterField("prediction", "digit", models.PositiveSmallIntegerField(default=0)),
    migrations.AddField("prediction", "retries", models.PositiveSmallIntegerField(db_default=0)),
    migrations.AddField("prediction", "reference", models.UUIDField(db_default=RandomUUID())),
    migrations.AddField("prediction", "reviewer", models.ForeignKey(
        "training.checkpoint", null=True, on_delete=models.SET_NULL, related_name="+")),
    migrations.RunPython(lambda apps, schema_editor: None),
    migrations.RunSQL("UPDATE \"classifier_prediction\" SET \"error\" = ''"),
], ids=["index", "check constraint", "column type", "not null", "positive column", "volatile default",
        "foreign key column", "python", "update"])
def test_a_new_migration_that_locks_a_large_table_is_refused(operation):
    assert "classifier.9999_next" in project_migration_locks(extra=[new_migration(operation)])


@on_postgresql
# Outside the test's transaction: the concurrent index refuses to be written inside one, even as SQL collected only.
@pytest.mark.django_db(transaction=True)
def test_a_new_migration_that_changes_only_the_catalogue_passes():
    migration = new_migration(
        migrations.AddField("prediction", "note", models.TextField(db_default="")),
        migrations.AddField("prediction", "reviewed", models.BooleanField(db_default=False)),
        migrations.AddField("prediction", "retries", models.SmallIntegerField(null=True)),
        migrations.AlterField("prediction", "device", models.CharField(max_length=32, blank=True, db_default="")),
        AddIndexConcurrently("prediction", models.Index(fields=["digit"], name="prediction_digit")),
        migrations.RunPython(migrations.RunPython.noop, migrations.RunPython.noop),
        atomic=False,
    )
    assert "classifier.9999_next" not in project_migration_locks(extra=[migration])
