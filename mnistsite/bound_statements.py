"""Hand-written statements sent with their parameters apart, which PostgreSQL prepares once a connection repeats them.

Django's cursors write every parameter into the statement's text, so the
server parses and plans each statement afresh: for the upload path's short
statements that is most of their cost (the insert: 0.9 of 1.2 ms of the
server's CPU). Sent bound, and prepared by psycopg once a connection has run
the same text ``prepare_threshold`` times (five, unless the
``DATABASE_PREPARED_STATEMENTS`` setting turns it off), they are parsed once per
connection (once for each combination of parameter types psycopg sends: an int
goes as int2, int4 or int8 by its size) and, where PostgreSQL finds its generic
plan as good, planned once. Django's own queries are unaffected, as is
the claim, which a generic plan would slow (classifier.statements.predictions_claim).
"""
from __future__ import annotations

import functools
import weakref
from collections.abc import Callable, Sequence

import psycopg
from django.db import DEFAULT_DB_ALIAS, connection, connections
from django.db.backends.postgresql.psycopg_any import register_tzloader
from django.db.models import Field, Model
from psycopg.pq import Format, TransactionStatus


def bound_cursor():
    """A cursor that sends parameters apart from the statement (server-side binding) on PostgreSQL, for ``with``.

    Bound, a batch's pixel arrays travel in binary instead of being escaped byte
    by byte in Python, and a statement is prepared once its connection repeats
    it. Made as Django makes its own: a reused connection is checked first (once
    a request or task), datetimes are read in the connection's time zone,
    database errors arrive as django.db errors, and queries are logged where
    Django logs them. Elsewhere Django's cursor: the statements take ``%s``
    placeholders either way.
    """
    # The thread's connection itself: through the ``connection`` proxy each attribute is a lookup of its own, which
    # cost a few per cent of a web process's time for a single image's four statements.
    wrapper = connections[DEFAULT_DB_ALIAS]
    if wrapper.vendor != "postgresql":
        return wrapper.cursor()
    wrapper.close_if_health_check_failed()
    wrapper.ensure_connection()
    wrapper.validate_thread_sharing()
    with wrapper.wrap_database_errors:
        raw = ReplanningCursor(wrapper.connection)
        # As Django's create_cursor: the connection's loader is the time zone it was opened in.
        if wrapper.timezone != wrapper.connection.adapters.get_loader(_TIMESTAMPTZ_OID, Format.TEXT).timezone:
            register_tzloader(wrapper.timezone, raw)
    return wrapper.make_debug_cursor(raw) if wrapper.queries_logged else wrapper.make_cursor(raw)


_TIMESTAMPTZ_OID = psycopg.adapters.types["timestamptz"].oid
# What PostgreSQL says when a prepared statement's result columns changed type under it.
_STALE_PLAN = "cached plan must not change result type"


class ReplanningCursor(psycopg.Cursor):
    """psycopg's cursor, which runs a statement once more after its prepared form went stale.

    A migration that changes the type of a column a prepared statement returns
    (a longer ``max_length``, say) makes PostgreSQL refuse that statement on
    every connection that prepared it, while the release before keeps serving.
    Outside a transaction the refused run changed nothing, so the statement runs
    again once the connection's prepared statements are dropped (``DEALLOCATE
    ALL``, which psycopg notices, forgetting its own). Inside one the error
    stands: the transaction is lost either way.
    """

    def execute(self, query, params=None, **kwargs):
        try:
            return super().execute(query, params, **kwargs)
        except psycopg.errors.FeatureNotSupported as exc:
            if _STALE_PLAN not in str(exc) or self.connection.info.transaction_status != TransactionStatus.IDLE:
                raise
        self.connection.execute("DEALLOCATE ALL")
        return super().execute(query, params, **kwargs)


def among(column: str, values: Sequence, *, sql_type: str) -> tuple[str, list]:
    """``column`` is one of ``values``, and its parameters.

    On PostgreSQL one array parameter, so that the statement's text, and so its
    prepared form, is the same however many values there are; elsewhere a
    placeholder each. ``values`` must not be empty.
    """
    if connection.vendor == "postgresql":
        return f"{column} = ANY(%s::{sql_type}[])", [list(values)]
    return f"{column} IN ({', '.join(['%s'] * len(values))})", list(values)


def model_columns(model: type[Model], *, alias: str) -> str:
    """The columns of ``model``'s concrete fields, in their order, for a statement whose rows ``model_rows`` reads.

    Named, not ``*``: that is the table's order, which migrations may have made another than the model's, and
    PostgreSQL refuses to run a prepared ``*`` once a migration adds a column.
    """
    quote = connection.ops.quote_name
    return ", ".join(f"{alias}.{quote(field.column)}" for field in model._meta.concrete_fields)


def model_rows(model: type[Model], rows: Sequence[Sequence], *, extra: Sequence[str] = ()) -> list[Model]:
    """Instances of ``model`` from rows of ``model_columns`` followed by one column for each name in ``extra``.

    Each field's value is converted as the ORM converts it, and the instances are
    loaded ones (saving one updates its row); each ``extra`` column is set on
    its instance as an attribute, unconverted.
    """
    fields = model._meta.concrete_fields
    names = [field.attname for field in fields]
    wrapper = connections[connection.alias]
    converters = converters_cached(wrapper, model, lambda: _converters_find(wrapper, model))
    count = len(fields)
    db = connection.alias
    instances = []
    for row in rows:
        instance = model.from_db(db, names, converted_row(row[:count], converters, wrapper))
        for name, value in zip(extra, row[count:], strict=True):
            setattr(instance, name, value)
        instances.append(instance)
    return instances


def converted_row(row: Sequence, converters: list[tuple[int, list, object]], wrapper) -> list:
    """``row`` with each value that ``converters`` (position, functions, expression) names converted by them."""
    row = list(row)
    for position, functions, expression in converters:
        value = row[position]
        for function in functions:
            value = function(value, expression, wrapper)
        row[position] = value
    return row


def converters_cached(wrapper, key, find: Callable[[], list]) -> list:
    """``find()``, worked out once for each connection and ``key``: a backend's converters are methods of that
    connection's operations."""
    by_key = _converters_by_connection.setdefault(wrapper, {})
    if key not in by_key:
        by_key[key] = find()
    return by_key[key]


def field_converted(field: Field, value: object) -> object:
    """``value`` as read from ``field``'s column, converted as the ORM converts it."""
    column = field.get_col(field.model._meta.db_table)
    for converter in connection.ops.get_db_converters(column) + column.get_db_converters(connection):
        value = converter(value, column, connection)
    return value


_converters_by_connection: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


@functools.cache
def _columns(model: type[Model]) -> tuple:
    return tuple(field.get_col(model._meta.db_table) for field in model._meta.concrete_fields)


def _converters_find(wrapper, model: type[Model]) -> list[tuple[int, list, object]]:
    found = []
    for position, column in enumerate(_columns(model)):
        converters = wrapper.ops.get_db_converters(column) + column.get_db_converters(wrapper)
        if converters:
            found.append((position, converters, column))
    return found
