"""Statements sent bound: prepared once a connection repeats them, and read back as the ORM reads rows."""
import io

import psycopg
import pytest
from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import connection

from accounts import selectors as account_selectors
from accounts import services as account_services
from classifier import services, statements
from mnistsite.bound_statements import among, bound_cursor

pytestmark = pytest.mark.django_db


def _prepared() -> list[str]:
    with connection.cursor() as cursor:
        cursor.execute("SELECT statement FROM pg_prepared_statements")
        return [statement for (statement,) in cursor.fetchall()]


def _postgresql_only():
    if connection.vendor != "postgresql":
        pytest.skip("statements are prepared on PostgreSQL")


def _other_connection() -> psycopg.Connection:
    params = settings.DATABASES["default"]
    return psycopg.connect(dbname=connection.settings_dict["NAME"], user=params["USER"], host=params["HOST"],
                           port=params["PORT"] or None, password=params["PASSWORD"] or None, autocommit=True)


def test_a_statement_a_connection_repeats_is_prepared_once_and_its_text_is_the_same_for_any_number_of_ids(
    user, digit_png
):
    _postgresql_only()
    upload = services.upload_create(owner=user, file=io.BytesIO(digit_png(3)), source="file")
    predictions = services.predictions_create(uploads=[upload] * 3, publish=False)
    ids = [prediction.pk for prediction in predictions]
    for count in (1, 2, 3, 1, 2, 3):
        assert sorted(statements.prediction_summaries_get(prediction_ids=ids[:count])) == ids[:count]

    summaries = [statement for statement in _prepared() if "COALESCE(LENGTH(" in statement]
    assert len(summaries) == 1, _prepared()


@pytest.mark.parametrize("use_tz", [True, False])
def test_the_token_lookup_reads_the_user_and_token_as_the_orm_does_once_prepared_too(user, settings, use_tz):
    # Django reads datetimes in the connection's time zone (aware in UTC, or naive without USE_TZ); so must this.
    settings.USE_TZ = use_tz
    token, key = account_services.api_token_create(user=user, name="laptop")
    token_model = type(token)
    stored_user, stored_token = get_user_model().objects.get(pk=user.pk), token_model.objects.get(pk=token.pk)

    def described(obj, names):
        return [(getattr(obj, name), getattr(getattr(obj, name), "tzinfo", None)) for name in names]

    user_fields = [field.attname for field in get_user_model()._meta.concrete_fields]
    token_fields = [field.attname for field in token_model._meta.concrete_fields]
    for _ in range(7):  # prepared from the sixth run
        found = account_selectors.api_token_with_user_get(key=key)
        assert described(found.user, user_fields) == described(stored_user, user_fields)
        assert described(found, token_fields) == described(stored_token, token_fields)
        assert not found._state.adding and not found.user._state.adding


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("migration, undo", [
    ("ADD COLUMN migrated_later integer", "DROP COLUMN migrated_later"),
    ("ALTER COLUMN first_name TYPE varchar(200)", "ALTER COLUMN first_name TYPE varchar(150)"),
])
def test_a_prepared_lookup_still_runs_after_a_migration_changes_its_table(user, migration, undo):
    # Another process's migration, while this one keeps serving. PostgreSQL refuses a prepared statement that selects
    # * once its table gains a column, and one whose column changes type ("cached plan must not change result
    # type"): every web process would fail each API request until it reconnected.
    _postgresql_only()
    _, key = account_services.api_token_create(user=user, name="laptop")
    for _ in range(6):
        assert account_selectors.api_token_with_user_get(key=key).user.pk == user.pk
    assert any("token" in statement for statement in _prepared())

    table = get_user_model()._meta.db_table
    # psycopg forgets its prepared statements when it runs an ALTER itself: another connection runs it.
    with _other_connection() as other:
        other.execute(f'ALTER TABLE "{table}" {migration}')
        try:
            for _ in range(2):
                assert account_selectors.api_token_with_user_get(key=key).user.pk == user.pk
        finally:
            other.execute(f'ALTER TABLE "{table}" {undo}')


@pytest.mark.django_db(transaction=True)
def test_a_lookup_on_a_connection_the_server_dropped_reconnects_instead_of_failing(user):
    # A restarted or failed-over server: the first statement of a request checks the connection it reuses.
    _postgresql_only()
    _, key = account_services.api_token_create(user=user, name="laptop")
    assert account_selectors.api_token_with_user_get(key=key).user.pk == user.pk
    pid = connection.connection.info.backend_pid
    with _other_connection() as other:
        other.execute("SELECT pg_terminate_backend(%s)", [pid])
    # What the start of a request or a task does.
    connection.close_if_unusable_or_obsolete()

    assert account_selectors.api_token_with_user_get(key=key).user.pk == user.pk
    assert connection.connection.info.backend_pid != pid


def test_among_takes_one_array_on_postgresql_and_a_placeholder_a_value_elsewhere(user, digit_png):
    upload = services.upload_create(owner=user, file=io.BytesIO(digit_png(4)), source="file")
    first, second = services.predictions_create(uploads=[upload] * 2, publish=False)
    condition, params = among("id", [first.pk, second.pk], sql_type="bigint")
    with bound_cursor() as cursor:
        cursor.execute(f"SELECT id FROM classifier_prediction WHERE {condition} ORDER BY id", params)
        assert [pk for (pk,) in cursor.fetchall()] == [first.pk, second.pk]
    assert len(params) == (1 if connection.vendor == "postgresql" else 2)
