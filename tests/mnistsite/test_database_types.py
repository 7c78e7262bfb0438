"""PostgreSQL's times read by psycopg's C loader come back exactly as Django's own loader gives them, errors too."""
import datetime as dt

import pytest
from django.db import DEFAULT_DB_ALIAS, DataError, connection, connections

from mnistsite import database_types

pytestmark = pytest.mark.django_db

on_postgresql = pytest.mark.skipif("connection.vendor != 'postgresql'", reason="a loader of psycopg's")

# As PostgreSQL writes them in a UTC session, and every kind of value past what Python holds.
READABLE = [
    "2024-06-01 12:00:00+00", "2024-06-01 12:00:00.5+00", "2024-06-01 12:00:00.123456+00",
    "2024-06-01 12:00:00.000001+00", "2024-06-01 12:00:00+05:30", "2024-06-01 12:00:00-09:30:15",
    "2024-02-29 23:59:59.999999+00", "1970-01-01 00:00:00+00", "0001-01-01 00:00:00+00",
    "9999-12-31 23:59:59.999999+00", "1900-03-01 00:00:00+00", "2000-01-01 00:00:00+14",
]
UNREADABLE = [
    "infinity", "-infinity", "0044-03-15 12:00:00+00 BC", "4713-11-24 00:00:00+00 BC", "0001-01-01 00:00:00+00 BC",
    "10000-01-01 00:00:00+00", "294276-12-31 23:59:59.999999+00", "9999-12-31 23:59:59.999999-01",
]
TIMESTAMPTZ = 1184


def _django_loader() -> None:
    from django.db.backends.postgresql.psycopg_any import register_tzloader

    register_tzloader(connection.timezone, connection.connection)


def _loaded(text: str):
    """What a Django cursor reads for ``text`` as a timestamptz: the value and its tzinfo, or the error raised."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT %s::timestamptz", [text])
        try:
            (value,) = cursor.fetchone()
        except Exception as exc:  # the very error Django's loader raises is the point
            return type(exc), str(exc)
    return value, None if value is None else (value.tzinfo, value.fold)


@pytest.fixture
def loaders():
    """Reads every value with Django's loader, then with the one installed, and puts Django's back."""
    connection.ensure_connection()

    def both(texts: list[str]) -> tuple[list, list]:
        _django_loader()
        django = [_loaded(text) for text in texts]
        assert database_types.timestamptz_loader_install(connection)
        return django, [_loaded(text) for text in texts]

    yield both
    _django_loader()


@on_postgresql
def test_every_time_python_holds_is_read_as_djangos_loader_reads_it(loaders):
    django, fast = loaders([*READABLE, None])

    assert fast == django
    assert all(tzinfo is dt.UTC for _, (tzinfo, _) in django[:-1])


@on_postgresql
def test_a_time_python_cannot_hold_raises_the_error_djangos_loader_raises(loaders):
    django, fast = loaders(UNREADABLE)

    assert fast == django
    assert {kind for kind, _ in django} == {DataError}
    assert "too large" in dict(zip(UNREADABLE, django))["infinity"][1]


@on_postgresql
def test_times_in_arrays_and_beside_other_columns_are_read_alike(loaders):
    def rows():
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT g, now() - g * interval '1 microsecond', ARRAY[now(), NULL, now() + interval '1 day'] "
                "FROM generate_series(1, 40) g"
            )
            return cursor.fetchall()

    # The same statement in one transaction reads the same now().
    from django.db import transaction

    with transaction.atomic():
        _django_loader()
        django = rows()
        database_types.timestamptz_loader_install(connection)
        assert rows() == django


@on_postgresql
def test_djangos_cursors_keep_the_c_loader_and_psycopg_uses_it_in_c(loaders):
    import psycopg
    from psycopg.pq import Format

    loaders([])
    c_loader = psycopg.adapters.get_loader(TIMESTAMPTZ, Format.TEXT)
    with connection.cursor() as cursor:
        registered = cursor.cursor.adapters.get_loader(TIMESTAMPTZ, Format.TEXT)
        # What Django's create_cursor compares, to register its own loader on the cursor when they differ.
        assert registered.timezone is connection.timezone
        assert type(registered(TIMESTAMPTZ, cursor.cursor)) is c_loader


@on_postgresql
@pytest.mark.parametrize("setting, value", [("TimeZone", "Asia/Kolkata"), ("TimeZone", "America/St_Johns"),
                                            ("DateStyle", "SQL, DMY"), ("DateStyle", "Postgres, MDY")])
def test_a_session_set_otherwise_is_read_by_djangos_loader_still(loaders, setting, value):
    with connection.cursor() as cursor:
        cursor.execute(f"SET {setting} = %s", [value])
    try:
        django, fast = loaders(["2024-06-01 12:00:00+00", "infinity", "0044-03-15 12:00:00+00 BC"])
    finally:
        with connection.cursor() as cursor:
            cursor.execute(f"RESET {setting}")

    assert fast == django


@on_postgresql
def test_a_new_connection_reads_with_it_once_registered():
    import psycopg
    from psycopg.pq import Format

    # Left registered, as the site registers it at start-up.
    database_types.timestamptz_loader_register()
    other = connections.create_connection(DEFAULT_DB_ALIAS)
    try:
        other.ensure_connection()
        with other.cursor() as cursor:
            registered = cursor.cursor.adapters.get_loader(TIMESTAMPTZ, Format.TEXT)
            assert registered.replaces.__module__ == "django.db.backends.postgresql.psycopg_any"
            assert type(registered(TIMESTAMPTZ, cursor.cursor)) is psycopg.adapters.get_loader(TIMESTAMPTZ, Format.TEXT)
    finally:
        other.close()


def test_it_is_left_out_where_djangos_loader_is_not_the_utc_one_or_there_is_none(settings):
    if connection.vendor != "postgresql":
        assert not database_types.timestamptz_loader_install(connection)
        return
    connection.ensure_connection()
    try:
        settings.USE_TZ = False
        assert connection.timezone is None
        assert not database_types.timestamptz_loader_install(connection)
    finally:
        settings.USE_TZ = True
        _django_loader()
