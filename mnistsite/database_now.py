"""The database's clock as an expression, written on SQLite in the form Django writes a Python datetime."""

from django.db.models.functions import Now as DjangoNow

# SQLite keeps a datetime as text and compares it as text. Django writes a Python datetime as str() gives it
# ("…:05.123456", or "…:05" on the whole second) but reads the clock with a three-digit fraction ("…:05.123"),
# so a time read back from the database and sent again as a parameter did not equal itself: "…:05.123" sorts
# before "…:05.123000". Within one statement SQLite's 'now' is one instant, so the three readings agree.
SQLITE_NOW = (
    "CASE WHEN SUBSTR(STRFTIME('%f', 'now'), 4) = '000' THEN STRFTIME('%Y-%m-%d %H:%M:%S', 'now') "
    "ELSE STRFTIME('%Y-%m-%d %H:%M:%f', 'now') || '000' END"
)

# A time SQLite's own clock wrote before this module: "YYYY-MM-DD HH:MM:SS.fff", 23 characters.
_SQLITE_REWRITE = (
    "UPDATE {table} SET {column} = CASE WHEN SUBSTR({column}, 21) = '000' THEN SUBSTR({column}, 1, 19) "
    "ELSE {column} || '000' END WHERE LENGTH({column}) = 23"
)


class Now(DjangoNow):
    """``django.db.models.functions.Now``, whose SQLite times compare with the ones Django writes from Python."""

    def as_sqlite(self, compiler, connection, **extra_context):
        # Escaped twice: once for the template, once for the statement's parameters.
        return self.as_sql(compiler, connection, template=SQLITE_NOW.replace("%", "%%%%"), **extra_context)


def sqlite_times_rewrite(*, models, connection) -> None:
    """For a migration: every datetime column of these models put in the form above, where SQLite holds them."""
    if connection.vendor != "sqlite":
        return
    quote = connection.ops.quote_name
    with connection.cursor() as cursor:
        for model in models:
            for field in model._meta.concrete_fields:
                if field.get_internal_type() == "DateTimeField":
                    cursor.execute(
                        _SQLITE_REWRITE.format(table=quote(model._meta.db_table), column=quote(field.column))
                    )
