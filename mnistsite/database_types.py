"""PostgreSQL's timestamptz read by psycopg's C loader, where Django would read it with a pure-Python one.

Django's PostgreSQL backend registers, on every connection, a Python subclass of
psycopg's Python ``TimestamptzLoader`` that sets the connection's time zone on
each value (``register_tzloader``). Being a subclass, it is never swapped for
the C loader of psycopg[binary]: every time read back (a prediction carries four)
is parsed by a regular expression, in Python. ``timestamptz_loader_install`` puts
the C loader in its place on a connection, with the ``timezone`` attribute that
Django's ``create_cursor`` compares with the connection's, so that Django keeps it.

It is used only where it returns exactly what Django's would: a connection whose
Django time zone is UTC (``USE_TZ`` on and no ``TIME_ZONE`` in the database's
settings), and, at each query, a session whose TimeZone is UTC and DateStyle ISO.
Both loaders then give datetimes whose tzinfo is ``datetime.timezone.utc``, and
raise the same ``DataError`` for what Python cannot hold (infinity, years BC and
past 9999). Anything else (another time zone, USE_TZ off, psycopg without its C
extension, SQLite) keeps Django's loader.
"""
from __future__ import annotations

import datetime as dt
import functools

from django.db.backends.signals import connection_created

# timestamptz's oid, and psycopg's text format (psycopg.pq.Format.TEXT): its values as PostgreSQL writes them.
_TIMESTAMPTZ, _TEXT = 1184, 0


@functools.lru_cache(maxsize=8)
def _fast_loader(django_loader: type):
    """The loader to register in place of ``django_loader``, or None where there is no C loader to use."""
    import psycopg
    from psycopg.types.datetime import TimestamptzLoader as PythonLoader

    c_loader = psycopg.adapters.get_loader(_TIMESTAMPTZ, _TEXT)
    if c_loader is None or c_loader is PythonLoader:
        return None

    class TimestamptzLoader:
        """Makes psycopg's C loader where it answers as Django's would, and Django's loader elsewhere.

        A class only in name: the C loader cannot be subclassed, so this one hands
        psycopg an instance of it, whose values psycopg then converts in C.
        """

        format = _TEXT
        # What Django's create_cursor compares with the connection's time zone.
        timezone = django_loader.timezone
        replaces = django_loader

        def __new__(cls, oid: int, context=None):
            connection = getattr(context, "connection", None)
            if connection is None or (
                connection.info.timezone is dt.UTC
                and (connection.info.parameter_status("DateStyle") or "ISO").startswith("ISO")
            ):
                return c_loader(oid, context)
            return django_loader(oid, context)

    return TimestamptzLoader


def timestamptz_loader_install(connection) -> bool:
    """Read this Django connection's timestamptz values with psycopg's C loader, where that changes no value.

    Returns whether it did (or had). For an open connection; new ones get it from ``connection_created``.
    """
    if connection.vendor != "postgresql" or connection.timezone is not dt.UTC:
        return False
    adapters = connection.connection.adapters
    current = adapters.get_loader(_TIMESTAMPTZ, _TEXT)
    if hasattr(current, "replaces"):
        return True
    if getattr(current, "timezone", None) is not dt.UTC:
        return False
    loader = _fast_loader(current)
    if loader is None:
        return False
    adapters.register_loader(_TIMESTAMPTZ, loader)
    return True


def _installed_on_new_connection(sender, connection, **kwargs) -> None:
    timestamptz_loader_install(connection)


def timestamptz_loader_register() -> None:
    """Install the loader on every database connection opened from now on (call once, from an AppConfig.ready)."""
    connection_created.connect(_installed_on_new_connection, dispatch_uid="mnistsite.database_types")
