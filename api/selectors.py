"""Reads the API needs beyond classifier/training selectors: prediction lists and lookups that return None."""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from django.db.models import Exists, Max, QuerySet

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
    # Only each upload's newest prediction: none that a retry or a re-run of its upload replaced.
    latest: bool = False


def _up_to(queryset: QuerySet, newest_id: int | None) -> QuerySet:
    return queryset if newest_id is None else queryset.filter(pk__lte=newest_id)


def _newest_id(queryset: QuerySet) -> int:
    # Rows stored from now on get higher ids, bar one whose insert was under way at this moment: its id was drawn
    # then, and it commits later.
    return queryset.aggregate(newest=Max("pk"))["newest"] or 0


def prediction_list_for_user(
    *, user, filters: PredictionFilters | None = None, newest_id: int | None = None
) -> QuerySet[Prediction]:
    """The caller's own predictions made up to ``newest_id`` (None: all), newest first; both dates are inclusive days
    in the site's time zone.

    ``latest`` keeps a prediction only when its upload has none newer, whatever the other filters leave out: with
    ``status="failed"`` it lists the uploads whose current result failed, not each upload's newest failure. It is
    said as "none newer", as classifier.selectors.upload_filter_latest does: PostgreSQL checks each candidate with
    one probe of the upload index (an anti-join), instead of ranking every prediction of the user's uploads. Newer
    means up to ``newest_id`` too: a re-run made since then leaves the list as it was, not one row short.
    """
    filters = filters or PredictionFilters()
    queryset = _up_to(Prediction.objects.select_related("upload", "checkpoint").filter(upload__owner=user), newest_id)
    if filters.latest:
        queryset = queryset.exclude(Exists(_up_to(classifier_selectors.prediction_newer_of_upload(), newest_id)))
    if filters.digit is not None:
        queryset = queryset.filter(digit=filters.digit)
    if filters.status:
        queryset = queryset.filter(status=filters.status)
    queryset = classifier_selectors.created_between_days(
        queryset, first_day=filters.created_after, last_day=filters.created_before
    )
    return queryset.order_by("-created_at", "-id")


def prediction_newest_id_for_user(*, user) -> int:
    """The highest id of the user's predictions now (0 without any); other users' play no part."""
    return _newest_id(Prediction.objects.filter(upload__owner=user))


def predictions_reload(*, predictions: list[Prediction]) -> list[statements.PredictionSummary]:
    """The current state of predictions the caller just created, in the same order, as the API represents them.

    Those deleted meanwhile are left out.
    """
    ids = [prediction.pk for prediction in predictions]
    fresh = statements.prediction_summaries_get(prediction_ids=ids)
    return [fresh[pk] for pk in ids if pk in fresh]


def training_run_list_with_checkpoints(*, newest_id: int | None = None) -> QuerySet[TrainingRun]:
    """The runs started up to ``newest_id`` (None: all), newest first."""
    return _up_to(training_selectors.training_run_list().prefetch_related("checkpoints"), newest_id)


def training_run_newest_id() -> int:
    return _newest_id(TrainingRun.objects.all())


def training_run_get_or_none(*, run_id: int) -> TrainingRun | None:
    return training_selectors.training_run_list().prefetch_related("checkpoints").filter(pk=run_id).first()


def checkpoint_get_or_none(*, checkpoint_id: int) -> Checkpoint | None:
    return training_selectors.checkpoint_list().filter(pk=checkpoint_id).first()


def checkpoint_list(*, newest_id: int | None = None) -> QuerySet[Checkpoint]:
    """The checkpoints saved up to ``newest_id`` (None: all), newest first."""
    return _up_to(training_selectors.checkpoint_list(), newest_id).order_by("-created_at", "-id")


def checkpoint_newest_id() -> int:
    return _newest_id(Checkpoint.objects.all())
