"""Reads the API needs beyond classifier/training selectors: prediction lists and lookups that return None."""
from __future__ import annotations

import datetime as dt
import functools
from dataclasses import dataclass

from django.contrib.auth import get_user_model
from django.db import connection
from django.db.models import QuerySet
from rest_framework.authtoken.models import Token

from classifier import selectors as classifier_selectors
from classifier import statements
from classifier.models import Prediction
from training import selectors as training_selectors
from training.models import Checkpoint, TrainingRun


@dataclass(frozen=True)
class PredictionFilters:
    digit: int | None = None
    status: str | None = None
    created_after: dt.date | None = None
    created_before: dt.date | None = None


def prediction_list_for_user(*, user, filters: PredictionFilters | None = None) -> QuerySet[Prediction]:
    """The caller's own predictions, newest first; both dates are inclusive days in the site's time zone."""
    filters = filters or PredictionFilters()
    queryset = Prediction.objects.select_related("upload", "checkpoint").filter(upload__owner=user)
    if filters.digit is not None:
        queryset = queryset.filter(digit=filters.digit)
    if filters.status:
        queryset = queryset.filter(status=filters.status)
    queryset = classifier_selectors.created_between_days(
        queryset, first_day=filters.created_after, last_day=filters.created_before
    )
    return queryset.order_by("-created_at", "-id")


@functools.cache
def _token_user_sql() -> str:
    quote = connection.ops.quote_name
    user_model = get_user_model()
    user_table, token_table = quote(user_model._meta.db_table), quote(Token._meta.db_table)
    user_id, created, key = (quote(Token._meta.get_field(name).column) for name in ("user", "created", "key"))
    return (
        f"SELECT u.*, t.{created} AS token_created FROM {user_table} u "
        f"JOIN {token_table} t ON t.{user_id} = u.{quote(user_model._meta.pk.column)} WHERE t.{key} = %s"
    )


def token_with_user_get(*, key: str) -> Token | None:
    """The API token with this key and its user (active or not), or None.

    Every API request asks this. A hand-written statement costs half of what
    the ORM's ``select_related`` lookup did, nearly all of that in compiling it.
    """
    found = list(get_user_model().objects.raw(_token_user_sql(), [key]))
    if not found:
        return None
    user = found[0]
    token = Token(key=key, user=user, created=_converted(Token._meta.get_field("created"), user.token_created))
    # Loaded, not new: saving it would update the stored row.
    token._state.adding, token._state.db = False, user._state.db
    return token


def _converted(field, value):
    # A raw query converts the model's own columns only; an extra one gets the database's conversions here.
    column = field.get_col(field.model._meta.db_table)
    for converter in connection.ops.get_db_converters(column) + column.get_db_converters(connection):
        value = converter(value, column, connection)
    return value


def predictions_reload(*, predictions: list[Prediction]) -> list[Prediction]:
    """Fresh copies of predictions the caller just created, in the same order, sharing their (unchanging) uploads."""
    fresh = statements.predictions_get(prediction_ids=[prediction.pk for prediction in predictions])
    for prediction in predictions:
        if prediction.pk in fresh:
            fresh[prediction.pk].upload = prediction.upload
    return [fresh[prediction.pk] for prediction in predictions if prediction.pk in fresh]


def training_run_list_with_checkpoints() -> QuerySet[TrainingRun]:
    return training_selectors.training_run_list().prefetch_related("checkpoints")


def training_run_get_or_none(*, run_id: int) -> TrainingRun | None:
    return training_selectors.training_run_list().prefetch_related("checkpoints").filter(pk=run_id).first()


def checkpoint_get_or_none(*, checkpoint_id: int) -> Checkpoint | None:
    return training_selectors.checkpoint_list().filter(pk=checkpoint_id).first()


def checkpoint_list() -> QuerySet[Checkpoint]:
    return training_selectors.checkpoint_list().order_by("-created_at", "-id")
