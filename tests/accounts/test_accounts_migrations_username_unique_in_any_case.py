"""Migrating to user names unique in any case (accounts/0009): names that clash already stop it, named."""
import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import IntegrityError, connection, transaction
from django.db.migrations.executor import MigrationExecutor

BEFORE = ("accounts", "0008_email_link_refused")
PASSWORD = "x9!kQ2#vLp"


def _migrate_to_the_latest() -> None:
    executor = MigrationExecutor(connection)
    executor.migrate(executor.loader.graph.leaf_nodes("accounts"))


@pytest.fixture
def at_0008(transactional_db):
    MigrationExecutor(connection).migrate([BEFORE])
    yield
    _migrate_to_the_latest()


def test_names_that_differ_only_in_case_stop_the_migration_named_until_all_but_one_of_each_are_renamed(
        at_0008, django_user_model):
    for name in ("alice", "bob", "Alice", "ALICE", "carol"):
        django_user_model.objects.create_user(username=name, password=PASSWORD)

    with pytest.raises(CommandError, match=r"Accounts alice, Alice, ALICE have names that differ only in case"):
        _migrate_to_the_latest()

    # As the README says to, under compose too (the site waits for the migration): each by its own case.
    call_command("rename_user", "Alice", "alice2")
    call_command("rename_user", "ALICE", "alice3")
    _migrate_to_the_latest()
    assert set(django_user_model.objects.values_list("username", flat=True)) == {
        "alice", "alice2", "alice3", "bob", "carol"}
    with pytest.raises(IntegrityError), transaction.atomic():
        django_user_model.objects.create_user(username="Alice", password=PASSWORD)


def test_migrating_back_lets_names_differ_only_in_case_again(at_0008, django_user_model):
    _migrate_to_the_latest()
    MigrationExecutor(connection).migrate([BEFORE])

    django_user_model.objects.create_user(username="alice", password=PASSWORD)
    django_user_model.objects.create_user(username="Alice", password=PASSWORD)
    django_user_model.objects.filter(username="Alice").delete()  # for the migration back to the latest


@pytest.mark.django_db
def test_the_index_is_there_once_every_migration_ran_whatever_rebuilt_the_users_table():
    # Django's migration state knows nothing of it: on SQLite, a later migration that alters a column of auth_user
    # (Django's own auth app has done so) rebuilds the table from that state, and would drop it without a word.
    with connection.cursor() as cursor:
        constraints = connection.introspection.get_constraints(cursor, "auth_user")
    assert constraints["username_unique_in_any_case"]["unique"]
