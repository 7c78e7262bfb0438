"""Read-only queries for uploads and predictions: scoped to the person asking, or service-wide for staff and monitoring."""
from __future__ import annotations

import datetime as dt
from collections.abc import Collection, Iterator
from dataclasses import dataclass

from django.conf import settings
from django.db import connection
from django.db.models import Aggregate, Count, Exists, F, FloatField, Max, Min, OuterRef, Q, QuerySet, Subquery
from django.utils import timezone

from classifier.idempotency import (
    IdempotencyKeyReusedError,
    IdempotentUpload,
    idempotency_keys_live_after,
)
from classifier.models import IdempotencyKey, Prediction, StorageUse, Upload
from mnistsite.database_now import Now
from training.models import Checkpoint


@dataclass(frozen=True)
class StorageUsage:
    used: int
    quota: int | None  # None: no limit


def storage_quota() -> int | None:
    """The bytes each user's uploads may take (UPLOAD_QUOTA_MB); None: no limit."""
    return settings.UPLOAD_QUOTA_MB * 2**20 if settings.UPLOAD_QUOTA_MB > 0 else None


def storage_usage_for_user(*, user) -> StorageUsage:
    """What the user's uploads take, on the media volume, and the most they may."""
    used = StorageUse.objects.filter(owner=user).values_list("bytes", flat=True).first() or 0
    return StorageUsage(used=used, quota=storage_quota())


def _latest(field: str) -> Subquery:
    return Subquery(Prediction.objects.filter(upload=OuterRef("pk")).order_by("-created_at", "-id").values(field)[:1])


def upload_annotate_latest(queryset: QuerySet[Upload]) -> QuerySet[Upload]:
    """Each upload with the status, digit and id of its newest prediction, for lists and filters."""
    return queryset.annotate(
        latest_prediction_id=_latest("id"),
        latest_status=_latest("status"),
        latest_digit=_latest("digit"),
        latest_confidence=_latest("confidence"),
        latest_feedback=_latest("feedback"),
    )


def prediction_newer_of_upload() -> QuerySet[Prediction]:
    """For a subquery: the predictions of the outer prediction's upload that come after it (by created_at, then id)."""
    return Prediction.objects.filter(upload=OuterRef("upload")).filter(
        Q(created_at__gt=OuterRef("created_at")) | Q(created_at=OuterRef("created_at"), id__gt=OuterRef("id"))
    )


def upload_filter_latest(queryset: QuerySet[Upload], **latest) -> QuerySet[Upload]:
    """The uploads whose newest prediction matches ``latest`` (``status="done"``, ``digit=7``), for service-wide lists.

    Said as "a prediction that matches, with none newer" rather than by comparing the newest one's value: the
    database can then start from the matching predictions (few, for a status like failed) instead of looking up
    the newest prediction of every upload, which took seconds over a million. One user's history keeps the
    comparison: its cost follows that user's uploads, not everyone's predictions.
    """
    newest = Prediction.objects.filter(upload=OuterRef("pk"), **latest).exclude(Exists(prediction_newer_of_upload()))
    return queryset.filter(Exists(newest))


@dataclass(frozen=True)
class UploadFilters:
    digit: int | None = None
    status: str | None = None
    date_from: dt.date | None = None
    date_to: dt.date | None = None
    upload_ids: tuple[int, ...] = ()


def created_between_days(queryset: QuerySet, *, first_day: dt.date | None, last_day: dt.date | None) -> QuerySet:
    """Rows whose ``created_at`` falls on these days (both inclusive, in the site's time zone); None: unbounded.

    A day within one of either end of the calendar bounds nothing (nothing was created then), instead of
    overflowing when its midnight is moved to UTC or to the next day.
    """
    tz = timezone.get_current_timezone()
    if first_day and first_day > dt.date.min + dt.timedelta(days=1):
        queryset = queryset.filter(created_at__gte=dt.datetime.combine(first_day, dt.time.min, tzinfo=tz))
    if last_day and last_day < dt.date.max - dt.timedelta(days=1):
        next_day = dt.datetime.combine(last_day + dt.timedelta(days=1), dt.time.min, tzinfo=tz)
        queryset = queryset.filter(created_at__lt=next_day)
    return queryset


def upload_list_for_user(
    *, user, filters: UploadFilters | None = None, newest_id: int | None = None
) -> QuerySet[Upload]:
    """The user's uploads that match ``filters``, of those stored up to ``newest_id`` (None: all), newest first."""
    filters = filters or UploadFilters()
    queryset = upload_annotate_latest(Upload.objects.filter(owner=user))
    if filters.digit is not None:
        queryset = queryset.filter(latest_digit=filters.digit)
    if filters.status:
        queryset = queryset.filter(latest_status=filters.status)
    queryset = created_between_days(queryset, first_day=filters.date_from, last_day=filters.date_to)
    if filters.upload_ids:
        queryset = queryset.filter(pk__in=filters.upload_ids)
    if newest_id is not None:
        queryset = queryset.filter(pk__lte=newest_id)
    return queryset.order_by("-created_at", "-id")


def upload_newest_id_for_user(*, user) -> int:
    """The highest id of the user's uploads now (0 without any): those they store from now on have higher ones.

    Bar an upload of theirs whose insert was under way at this moment: its id was drawn then, and it commits later.
    Other users' uploads play no part, nor does the page that shows this number tell how many the site holds.
    """
    return Upload.objects.filter(owner=user).aggregate(newest=Max("pk"))["newest"] or 0


def upload_count_for_user(*, user, filters: UploadFilters | None = None, newest_id: int | None = None) -> int:
    """How many of the user's uploads match ``filters``, of those stored up to ``newest_id`` (None: all)."""
    return upload_list_for_user(user=user, filters=filters, newest_id=newest_id).count()


def upload_list_selected_for_user(*, user, upload_ids: Collection[int]) -> QuerySet[Upload]:
    """Those of ``upload_ids`` that are the user's uploads and still there, newest first (none for no ids)."""
    return Upload.objects.filter(owner=user, pk__in=list(upload_ids)).order_by("-created_at", "-id")


def upload_list_page(*, ids: list[int]) -> list[Upload]:
    """One page of a user's history, found by ``upload_list_for_user(...).values_list("pk")``: its uploads by id.

    A page far down a long history is an OFFSET, and PostgreSQL computes the newest prediction's fields for
    every row it skips (over a second for page 1,250 of 50,000 uploads): the page is found by ids, and only its
    own rows are read with those fields. They are not filtered again: a prediction finishing in between would
    take its upload off the page it was counted on.

    The page's rows alone carry their newest prediction's ``latest_error`` (blank unless it failed), read in the
    same query, and ``latest_no_digit``: whether it failed for want of a digit, which only another picture mends.
    """
    uploads = list(
        upload_annotate_latest(Upload.objects.filter(pk__in=ids))
        .annotate(latest_error=_latest("error"))
        .order_by("-created_at", "-id")
    )
    for upload in uploads:
        upload.latest_no_digit = Prediction.failed_for_want_of_a_digit(
            status=upload.latest_status, error=upload.latest_error
        )
    return uploads


# Rows read at a time by an export: a long history is streamed, never held whole.
EXPORT_CHUNK = 500


@dataclass(frozen=True)
class UploadExportRow:
    upload: Upload
    prediction: Prediction | None  # the newest one; None while the upload has none


def upload_export_rows(
    *, user, filters: UploadFilters | None = None, newest_id: int | None = None
) -> Iterator[UploadExportRow]:
    """The user's uploads that match ``filters`` (of those stored up to ``newest_id``; None: all) with their newest
    predictions, newest upload first, chunk by chunk.

    The ids are taken once, in order, so that uploads arriving during a long export neither shift nor repeat
    rows; one deleted meanwhile is left out. Each chunk costs two queries, whatever the history's length.
    """
    ids = list(upload_list_for_user(user=user, filters=filters, newest_id=newest_id).values_list("pk", flat=True))
    return _upload_rows(upload_ids=ids)


def upload_rows_for_staff(*, upload_ids: list[int]) -> Iterator[UploadExportRow]:
    """Any uploads, in the ids' order, with their owners and newest predictions: the admin's export of a selection."""
    return _upload_rows(upload_ids=upload_ids, owners=True)


def _upload_rows(*, upload_ids: list[int], owners: bool = False) -> Iterator[UploadExportRow]:
    uploads_of = Upload.objects.select_related("owner") if owners else Upload.objects
    for start in range(0, len(upload_ids), EXPORT_CHUNK):
        chunk = upload_ids[start : start + EXPORT_CHUNK]
        uploads = uploads_of.in_bulk(chunk)
        newest: dict[int, Prediction] = {}
        predictions = Prediction.objects.filter(upload_id__in=chunk).defer("input_pixels")
        for prediction in predictions.order_by("upload_id", "-created_at", "-id"):
            newest.setdefault(prediction.upload_id, prediction)
        for pk in chunk:
            if pk in uploads:
                yield UploadExportRow(upload=uploads[pk], prediction=newest.get(pk))


def prediction_rows_for_staff(*, prediction_ids: list[int]) -> Iterator[UploadExportRow]:
    """Any predictions, in the ids' order, each with its upload and owner: the admin's export of a selection."""
    for start in range(0, len(prediction_ids), EXPORT_CHUNK):
        chunk = prediction_ids[start : start + EXPORT_CHUNK]
        predictions = Prediction.objects.select_related("upload", "upload__owner").defer("input_pixels").in_bulk(chunk)
        for pk in chunk:
            if pk in predictions:
                yield UploadExportRow(upload=predictions[pk].upload, prediction=predictions[pk])


def _visible_uploads(*, user) -> QuerySet[Upload]:
    return Upload.objects.filter(owner=user)


def upload_get_for_user(*, user, upload_id: int) -> Upload | None:
    return _visible_uploads(user=user).filter(pk=upload_id).first()


def _sees_every_image(user, model: type) -> bool:
    # The admin's thumbnails need it; a staff member without the admin's view permission sees only their own.
    return user.is_staff and user.has_perm(f"{model._meta.app_label}.view_{model._meta.model_name}")


def upload_get_for_viewer(*, user, upload_id: int) -> Upload | None:
    """Owners see their own images; staff allowed to view uploads in the admin see every one."""
    queryset = Upload.objects.all() if _sees_every_image(user, Upload) else _visible_uploads(user=user)
    return queryset.filter(pk=upload_id).first()


def prediction_get_for_user(*, user, prediction_id: int) -> Prediction | None:
    return (
        Prediction.objects.select_related("upload", "checkpoint")
        .filter(pk=prediction_id, upload__owner=user)
        .first()
    )


def prediction_list_for_user(*, user, prediction_ids: Collection[int]) -> list[Prediction]:
    """Those of ``prediction_ids`` that are ``user``'s predictions (others' and deleted ones left out), by id."""
    return list(Prediction.objects.filter(pk__in=prediction_ids, upload__owner=user).order_by("pk"))


def prediction_get_for_viewer(*, user, prediction_id: int) -> Prediction | None:
    queryset = Prediction.objects.select_related("upload")
    if not _sees_every_image(user, Prediction):
        queryset = queryset.filter(upload__owner=user)
    return queryset.filter(pk=prediction_id).first()


def predictions_of_new_uploads(*, names: list[str]) -> list[Prediction]:
    """The predictions of just-stored uploads, by their image names, in the names' order.

    Each upload's first prediction, the one stored with it. Those deleted since (their owner deleted the upload
    in another tab, or staff did) are left out: the caller compares the count with the names.
    """
    found = Prediction.objects.filter(upload__image__in=names).select_related("upload").order_by("id")
    by_name: dict[str, Prediction] = {}
    for prediction in found:
        by_name.setdefault(prediction.upload.image.name, prediction)
    return [by_name[name] for name in names if name in by_name]


def idempotency_key_get_for_user(*, user, key: str) -> IdempotencyKey | None:
    """The user's record of ``key``, unless there is none or it expired (then a request with it is new)."""
    return IdempotencyKey.objects.filter(owner=user, key=key, created_at__gt=idempotency_keys_live_after()).first()


def idempotent_upload_stored_get(*, user, idempotency: IdempotentUpload) -> list[Prediction | Upload | None] | None:
    """What an earlier upload with this key stored, as it is now, in the order of its files.

    For each file: the prediction the first request made; or, when that was
    deleted while the upload stayed (staff deleted predictions alone), the
    upload; or None when the upload was deleted too. None as a whole: the key
    is new (never stored, or expired), so the upload is to be processed.
    Raises IdempotencyKeyReusedError when the key came with another request.
    """
    record = idempotency_key_get_for_user(user=user, key=idempotency.key)
    if record is None:
        return None
    if record.fingerprint != idempotency.fingerprint:
        raise IdempotencyKeyReusedError(
            "This Idempotency-Key came with another request (other files, file names or fields) within the last "
            f"{settings.IDEMPOTENCY_KEY_TTL_HOURS} hours; nothing was stored or counted. Send a new request with a "
            "new key."
        )
    made = record.prediction_ids
    found = Prediction.objects.select_related("upload").filter(upload__owner=user).in_bulk(made)
    stored: list[Prediction | Upload | None] = [found.get(pk) for pk in made]
    # A key stored before its uploads' ids were kept has none to look for.
    if None in stored and record.upload_ids is not None and len(record.upload_ids) == len(made):
        uploads = Upload.objects.filter(owner=user).in_bulk(
            [upload_id for upload_id, item in zip(record.upload_ids, stored) if item is None]
        )
        stored = [item or uploads.get(upload_id) for upload_id, item in zip(record.upload_ids, stored)]
    return stored


def prediction_latest_for_upload(*, upload: Upload) -> Prediction | None:
    return upload.predictions.order_by("-created_at", "-id").first()


def prediction_retry_answer(*, prediction: Prediction) -> Prediction | None:
    """What a retry of ``prediction`` answers without running anything, or None when it would make a new one.

    Nothing runs again for a prediction that did not fail, or one a newer prediction of its upload replaced (a
    double click, another tab): the newest is the answer. Asked before the retry's allowance is spent; the
    retry's own lock still guards the retries that race past it.
    """
    newest = prediction_latest_for_upload(upload=prediction.upload)
    if newest is None or newest.pk != prediction.pk or newest.status != Prediction.Status.FAILED:
        return newest or prediction
    return None


@dataclass(frozen=True)
class SampleSetAccuracy:
    sample_set: str
    total: int
    predicted: int
    correct: int

    @property
    def accuracy(self) -> float | None:
        return self.correct / self.predicted if self.predicted else None


def sample_set_accuracy(*, checkpoint: Checkpoint | None) -> list[SampleSetAccuracy]:
    """Per sample set: how many labelled images the checkpoint got right (its newest done prediction for each).

    A sample whose label was cleared in the admin counts nowhere: without a true digit it is neither right nor wrong.
    """
    labelled = Upload.objects.exclude(sample_set="").filter(label__isnull=False)
    totals = dict(labelled.values_list("sample_set").annotate(total=Count("id")).order_by())
    answers: dict[int, tuple[str, bool]] = {}
    if checkpoint is not None:
        rows = (
            Prediction.objects.filter(
                upload__sample_set__gt="", upload__label__isnull=False, status=Prediction.Status.DONE,
                checkpoint=checkpoint,
            )
            .order_by("created_at", "id")
            .values_list("upload_id", "upload__sample_set", "upload__label", "digit")
        )
        # Sample sets hold a few hundred images, so picking the newest answer here stays cheap and portable.
        for upload_id, sample_set, label, digit in rows:
            answers[upload_id] = (sample_set, digit == label)
    results = []
    for sample_set in sorted(totals):
        mine = [correct for name, correct in answers.values() if name == sample_set]
        results.append(
            SampleSetAccuracy(sample_set=sample_set, total=totals[sample_set], predicted=len(mine), correct=sum(mine))
        )
    return results


@dataclass(frozen=True)
class PredictionQueueStats:
    """The prediction queue now, and the predictions created in the last ``window``."""

    waiting: dict[str, int]  # pending and running
    oldest_pending_seconds: float  # 0 when nothing is pending
    window: dt.timedelta
    recent: dict[str, int]  # those created in the window, by their status now
    # Milliseconds at each quantile, of the done predictions created in the window; None without any.
    queue_ms: dict[float, float | None]
    compute_ms: dict[float, float | None]


class _PercentileCont(Aggregate):
    """PostgreSQL's linearly interpolated percentile; the fraction comes from code, never from a request."""

    template = "percentile_cont(%(fraction)s) WITHIN GROUP (ORDER BY %(expressions)s)"
    output_field = FloatField()

    def __init__(self, expression: str, *, fraction: float) -> None:
        super().__init__(expression, fraction=float(fraction))


def _interpolated(values: list[float], fraction: float) -> float:
    # The same rule as percentile_cont: linear between the two nearest ranks.
    position = fraction * (len(values) - 1)
    low = int(position)
    high = min(low + 1, len(values) - 1)
    return values[low] + (values[high] - values[low]) * (position - low)


def _quantiles(queryset: QuerySet, field: str, fractions: tuple[float, ...]) -> dict[float, float | None]:
    queryset = queryset.filter(**{f"{field}__isnull": False})
    if connection.vendor == "postgresql":
        found = queryset.aggregate(**{f"q{i}": _PercentileCont(field, fraction=f) for i, f in enumerate(fractions)})
        return {fraction: found[f"q{i}"] for i, fraction in enumerate(fractions)}
    # Elsewhere (SQLite on a laptop) the window's values are few enough to sort here.
    values = sorted(queryset.values_list(field, flat=True))
    return {fraction: _interpolated(values, fraction) if values else None for fraction in fractions}


def prediction_queue_stats(
    *, now: dt.datetime, window: dt.timedelta, quantiles: tuple[float, ...] = (0.5, 0.95)
) -> PredictionQueueStats:
    """Service-wide queue figures for monitoring; every query is a range of the (status, created_at) index."""
    waiting = {status: 0 for status in (Prediction.Status.PENDING, Prediction.Status.RUNNING)}
    oldest = None
    rows = (
        Prediction.objects.filter(status__in=list(waiting))
        .values_list("status")
        .annotate(count=Count("id"), oldest=Min("created_at"))
        .order_by()
    )
    for status, count, first in rows:
        waiting[status] = count
        if status == Prediction.Status.PENDING:
            oldest = first
    created = Prediction.objects.filter(created_at__gte=now - window)
    recent = dict.fromkeys(Prediction.Status.values, 0)
    # One range of the index per status, rather than a scan of the window in created_at order.
    recent.update(created.filter(status__in=list(recent)).values_list("status").annotate(Count("id")).order_by())
    done = created.filter(status=Prediction.Status.DONE)
    return PredictionQueueStats(
        waiting={str(status): count for status, count in waiting.items()},
        oldest_pending_seconds=max(0.0, (now - oldest).total_seconds()) if oldest else 0.0,
        window=window,
        recent=recent,
        queue_ms=_quantiles(done, "queue_ms", quantiles),
        compute_ms=_quantiles(done, "compute_ms", quantiles),
    )


def prediction_feedback_stats(*, now: dt.datetime, window: dt.timedelta) -> dict[str, int]:
    """Of the done predictions created in the last ``window``, those with feedback, by whether the model had it right:
    ``confirmed`` (the feedback is the digit it gave) or ``corrected``. Each image counts once, by its newest done
    prediction: a re-run carries the feedback forward (predictions_rerun), and feedback given on an older prediction
    reaches the newer ones (prediction_feedback_set), so counting every prediction would count an image once per run.

    Feedback given after its prediction left the window is not counted, nor feedback on an upload whose predictions
    are all older than the window. One range of the (status, created_at) index; for each row with feedback, its
    upload's newest done prediction, found first in the (upload, newest first) index. Asked as "none newer done"
    instead, a database without fresh statistics walked every done prediction of the site for each row.
    """
    newest_done = (Prediction.objects.filter(upload=OuterRef("upload"), status=Prediction.Status.DONE)
                   .order_by("-created_at", "-id").values("pk")[:1])
    counts = (Prediction.objects.filter(status=Prediction.Status.DONE, created_at__gte=now - window,
                                        feedback__isnull=False, pk=Subquery(newest_done))
              .aggregate(confirmed=Count("id", filter=Q(feedback=F("digit"))),
                         corrected=Count("id", filter=~Q(feedback=F("digit")))))
    return {"confirmed": counts["confirmed"], "corrected": counts["corrected"]}


def prediction_queue_stalled(*, stalled_after_s: float) -> bool:
    """Whether no worker is taking predictions: one has been pending for ``stalled_after_s``, and none started since.

    A backlog that workers are taking always has a prediction running that
    started recently; one left over from a dead worker started long ago. Both
    queries are ranges of the (status, created_at) index; few rows are running.
    Counted on the database's clock, which dated the predictions: a web host
    whose clock runs behind would otherwise never see a stall, one ahead see
    one behind every fresh upload.
    """
    since = Now() - dt.timedelta(seconds=stalled_after_s)
    waiting = Prediction.objects.filter(status=Prediction.Status.PENDING, created_at__lt=since).exists()
    return waiting and not Prediction.objects.filter(status=Prediction.Status.RUNNING, started_at__gte=since).exists()
