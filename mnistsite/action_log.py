"""Staff actions that the admin's own forms do not record, written to the admin's history of the object."""
from __future__ import annotations

from django.contrib.admin.models import ADDITION, CHANGE, DELETION, LogEntry
from django.contrib.auth.base_user import AbstractBaseUser
from django.contrib.contenttypes.models import ContentType
from django.db import connections
from django.db.models import DateTimeField, Expression, Model, QuerySet, TextField, Value
from django.db.models.functions import Cast, Substr
from django.utils import timezone


def staff_action_record(*, user: AbstractBaseUser, obj: Model, message: str, added: bool = False) -> None:
    """Record that ``user`` did ``message`` to ``obj``, whether through the admin, the API or a run they started.

    The object's History page lists it for every staff member, and the admin's "Recent actions" for ``user``:
    when a model is replaced or a run cancelled, that is where staff look for who did it.
    """
    LogEntry.objects.log_actions(user.pk, [obj], ADDITION if added else CHANGE, message, single_object=True)


def staff_deletions_record(*, user: AbstractBaseUser, rows: QuerySet, object_repr: Expression) -> int:
    """Record that ``user`` deleted each of ``rows``, named by ``object_repr`` (the SQL of its ``__str__``); returns how
    many were recorded. Call it in the deletion's transaction, before the rows go.

    One INSERT ... SELECT however many rows: Django's own record builds an instance of every row and of every entry,
    which took 14 of the 32 s that the admin's deletion of 20,000 uploads took (profiled, on two busy cores).
    """
    columns = {
        "action_time": Value(timezone.now(), output_field=DateTimeField()),
        "user_id": Value(user.pk),
        "content_type_id": Value(ContentType.objects.get_for_model(rows.model, for_concrete_model=False).pk),
        "object_id": Cast("pk", TextField()),
        "object_repr": Substr(object_repr, 1, 200),  # as Django cuts str(obj)
        "action_flag": Value(DELETION),
        "change_message": Value(""),
    }
    # Prefixed: the caller's queryset may have annotations of its own.
    select = rows.order_by().annotate(**{f"history_{name}": value for name, value in columns.items()})
    sql, params = select.values_list(*[f"history_{name}" for name in columns]).query.sql_with_params()
    connection = connections[rows.db]
    quote = connection.ops.quote_name
    names = ", ".join(quote(LogEntry._meta.get_field(name).column) for name in columns)
    with connection.cursor() as cursor:
        cursor.execute(f"INSERT INTO {quote(LogEntry._meta.db_table)} ({names}) {sql}", params)
        return cursor.rowcount
