"""Migrating accounts: plain API keys become digests, and addresses set before confirmation count as confirmed."""
from __future__ import annotations

import datetime as dt
import hashlib

import pytest
from django.contrib.auth.models import Group, Permission
from django.contrib.contenttypes.models import ContentType
from django.db import connection
from django.db.migrations.executor import MigrationExecutor
from django.db.migrations.recorder import MigrationRecorder
from django.utils import timezone

from accounts.models import ApiToken
from api.authentication import TokenAuthentication

PLAIN = "authtoken_token"
BEFORE = ("accounts", "0001_initial")


def _migrate_to_the_latest() -> None:
    executor = MigrationExecutor(connection)
    executor.migrate(executor.loader.graph.leaf_nodes("accounts"))


@pytest.fixture
def at_0001(transactional_db):
    """The database as the version before it: accounts at 0001, DRF's table of plain keys there."""
    MigrationExecutor(connection).migrate([BEFORE])
    # As rest_framework.authtoken creates it on each database.
    created = "datetime" if connection.vendor == "sqlite" else "timestamp with time zone"
    with connection.cursor() as cursor:
        cursor.execute(f'CREATE TABLE {PLAIN} ("key" varchar(40) PRIMARY KEY, "created" {created} NOT NULL, '
                       '"user_id" integer NOT NULL)')
    MigrationRecorder(connection).record_applied("authtoken", "0001_initial")
    yield
    with connection.cursor() as cursor:
        cursor.execute(f"DROP TABLE IF EXISTS {PLAIN}")
    MigrationRecorder(connection).migration_qs.filter(app="authtoken").delete()
    _migrate_to_the_latest()


def test_plain_keys_become_digests_that_keep_working_and_the_plain_table_and_its_permissions_go(user, at_0001):
    key = "0123456789abcdef0123456789abcdef01234567"
    years_ago = timezone.now() - dt.timedelta(days=3 * 365)
    with connection.cursor() as cursor:
        cursor.execute(f'INSERT INTO {PLAIN} ("key", "created", "user_id") VALUES (%s, %s, %s)',
                       [key, years_ago, user.pk])
    token_type, _ = ContentType.objects.get_or_create(app_label="authtoken", model="token")
    view_token = Permission.objects.create(content_type=token_type, codename="view_token", name="Can view token")
    Group.objects.create(name="support").permissions.add(view_token)
    user.user_permissions.add(view_token)
    started = timezone.now()

    _migrate_to_the_latest()

    token = ApiToken.objects.get()
    assert (token.user_id, token.digest, token.prefix) == (user.pk, hashlib.sha256(key.encode()).hexdigest(), key[:8])
    # Old keys never expired: their age counts from the upgrade, so the default maximum age does not cut them off.
    assert token.created_at >= started
    assert TokenAuthentication().authenticate_credentials(key)[0].pk == user.pk
    assert PLAIN not in connection.introspection.table_names()
    assert not ContentType.objects.filter(app_label="authtoken").exists()
    assert not Permission.objects.filter(codename="view_token").exists()
    assert not Group.objects.get(name="support").permissions.exists() and not user.user_permissions.exists()
    # A version that still uses the table finds it unapplied, and creates it again if it is brought back.
    assert not MigrationRecorder(connection).migration_qs.filter(app="authtoken").exists()


def test_addresses_set_before_confirmation_existed_count_as_confirmed_and_keep_getting_reset_links(
    transactional_db, django_user_model
):
    from accounts.selectors import password_reset_user_list, user_email_confirmed

    MigrationExecutor(connection).migrate([("accounts", "0004_api_token_read_only_database_default")])
    try:
        with_address = django_user_model.objects.create_user(username="alice", password="x9!kQ2#vLp",
                                                             email="Alice@example.com")
        without = django_user_model.objects.create_user(username="bob", password="x9!kQ2#vLp")
    finally:
        _migrate_to_the_latest()
    assert user_email_confirmed(user=with_address) and not user_email_confirmed(user=without)
    assert [user.pk for user in password_reset_user_list(email="alice@example.com")] == [with_address.pk]


def test_the_confirmation_upgrade_reads_and_writes_the_users_a_thousand_at_a_time(transactional_db, django_user_model):
    from accounts.models import EmailAddressState

    MigrationExecutor(connection).migrate([("accounts", "0004_api_token_read_only_database_default")])
    try:
        django_user_model.objects.bulk_create(
            django_user_model(username=f"user{n}", email=f"user{n}@example.com", password="!") for n in range(2500))
        executor = MigrationExecutor(connection)
        statements = []

        def record(execute, sql, params, many, context):
            statements.append(sql)
            return execute(sql, params, many, context)

        with connection.execute_wrapper(record):
            executor.migrate([("accounts", "0005_email_address_state")])
    finally:
        _migrate_to_the_latest()
    assert EmailAddressState.objects.filter(confirmed_email__startswith="user").count() == 2500
    user_table = django_user_model._meta.db_table
    reads = [sql for sql in statements if sql.startswith("SELECT") and f'FROM "{user_table}"' in sql]
    # No read without a bound: the whole table never passes through the process at once.
    assert len(reads) >= 3 and all("LIMIT 1000" in sql for sql in reads), reads


def test_addresses_of_unknown_age_do_not_stop_the_email_confirmation_upgrade_being_undone_and_done_again(
    transactional_db, django_user_model
):
    from accounts.models import EmailAddressState

    confirmed = django_user_model.objects.create_user(username="alice", email="alice@example.com")
    waiting = django_user_model.objects.create_user(username="bob", email="bob@example.com")
    confirmed_at = timezone.now() - dt.timedelta(days=3)
    EmailAddressState.objects.create(user=confirmed, set_at=None, confirmed_email=confirmed.email,
                                     confirmed_at=confirmed_at)
    EmailAddressState.objects.create(user=waiting, set_at=None)
    started = timezone.now()
    try:
        MigrationExecutor(connection).migrate([("accounts", "0005_email_address_state")])
        with connection.cursor() as cursor:
            cursor.execute("SELECT user_id, set_at FROM accounts_emailaddressstate ORDER BY user_id")
            # SQLite hands a raw query's times back without their zone, which is UTC.
            set_at = {user_id: value if value.tzinfo else value.replace(tzinfo=dt.timezone.utc)
                      for user_id, value in cursor.fetchall()}
    finally:
        _migrate_to_the_latest()
    # Known no better, a confirmed address was set when it was confirmed at the latest; a waiting one, now.
    assert set_at[confirmed.pk] == confirmed_at and set_at[waiting.pk] >= started
    assert EmailAddressState.objects.count() == 2
