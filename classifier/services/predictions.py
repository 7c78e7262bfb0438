"""Making predictions of uploads and sending their tasks: create, re-run, retry, publish, sweep."""
from __future__ import annotations

import datetime as dt
import logging

from django.conf import settings
from django.db import DatabaseError, transaction
from django.db.models import F, Q

from classifier.models import Prediction, Upload
from mnistsite.database_now import Now

logger = logging.getLogger(__name__)


def running_stale_after() -> dt.timedelta:
    """A prediction "running" for longer than this, on the database's clock, lost its worker; it may be claimed again."""
    return dt.timedelta(seconds=settings.PREDICTION_RUNNING_STALE_AFTER_SECONDS)


def prediction_create(*, upload: Upload) -> Prediction:
    """A pending prediction for ``upload``, its task published once the transaction commits."""
    return predictions_create(uploads=[upload])[0]


# Where a prediction's message waits among the inference queue's others (Redis priorities: 0 is taken first, then 3,
# 6, 9). Housekeeping and mail, sent with none, 0: a reset link or the reaper of dead training runs waits for the
# next free worker process, not behind a long backlog of images. People's uploads next; the predictions of thousands
# of uploads at once (a staff re-run, the sample sets) last, so that nobody's upload waits for them.
PRIORITY_UPLOADS = 3
PRIORITY_BULK = 9


def predictions_create(
    *, uploads: list[Upload], publish: bool = True, feedback: dict[int, int] | None = None,
    priority: int = PRIORITY_UPLOADS,
) -> list[Prediction]:
    """Pending predictions in bulk; ``publish=False`` leaves them for the caller to execute in-process.

    ``feedback`` maps upload ids to the digit their new prediction starts with.
    """
    published = published_now() if publish else {}
    feedback = feedback or {}
    # Inside a caller's transaction a savepoint would add two round trips and protect nothing.
    with transaction.atomic(savepoint=False):
        predictions = Prediction.objects.bulk_create(
            [Prediction(upload=upload, feedback=feedback.get(upload.pk), priority=priority, **published)
             for upload in uploads]
        )
        for prediction in predictions:
            if publish:
                # The same statement's now, which the database returned as created_at.
                prediction.published_at = prediction.created_at
        ids = [prediction.pk for prediction in predictions]
        if publish and ids:
            transaction.on_commit(lambda: predictions_send(prediction_ids=ids, priority=priority))
    return predictions


def published_now() -> dict:
    # Counted as published up front: the publish after commit then costs no UPDATE unless it fails. Dated by the
    # database, as the sweeper that compares it with its now reads the time.
    return {"publish_attempts": 1, "published_at": Now()}


def upload_read(*, upload: Upload) -> Prediction:
    """A prediction of an upload that has none (an administrator deleted them), made once however often asked.

    Returns the upload's newest prediction: the new one, or one made meanwhile (a double click, another tab).
    """
    with transaction.atomic():
        # The upload's row lock serialises the requests: two at once would both see no prediction.
        locked = Upload.objects.select_for_update().filter(pk=upload.pk).first()
        if locked is None:
            raise Upload.DoesNotExist("The upload was deleted.")
        return locked.predictions.order_by("-created_at", "-id").first() or predictions_rerun(uploads=[locked])[0]


def prediction_retry(*, prediction: Prediction) -> tuple[Prediction, bool]:
    """Its owner's second try at a failed prediction: a new one of the same upload, made once however often asked.

    Returns the upload's newest prediction, and whether this call made it: the
    new one, or one already newer (a double click, another tab), or this one
    unchanged when it did not fail.
    """
    with transaction.atomic():
        # The upload's row lock serialises retries of one upload: two at once would both see no newer prediction.
        upload = Upload.objects.select_for_update().filter(pk=prediction.upload_id).first()
        if upload is None:
            raise Prediction.DoesNotExist("The upload was deleted.")
        newest = upload.predictions.order_by("-created_at", "-id").first()
        if newest is None or newest.pk != prediction.pk or newest.status != Prediction.Status.FAILED:
            return newest or prediction, False
        return predictions_rerun(uploads=[upload])[0], True


def predictions_rerun(
    *, uploads: list[Upload], publish: bool = True, priority: int = PRIORITY_UPLOADS
) -> list[Prediction]:
    """New pending predictions of existing uploads, each keeping the digit its owner last said the image shows.

    The feedback belongs to the image, not to one model's answer: history shows
    the newest prediction, which would otherwise drop it. An upload deleted
    since the caller read it gets none (it is left out of what is returned).
    """
    with transaction.atomic():
        # Held until the new predictions commit, as feedback takes it too: feedback given meanwhile waits, then
        # reaches them (prediction_feedback_set), instead of being read before it came and lost. By id, as every
        # deletion locks uploads, so that neither waits on the other for ever.
        present = set(Upload.objects.select_for_update().filter(pk__in=[upload.pk for upload in uploads])
                      .order_by("pk").values_list("pk", flat=True))
        # One deleted after the caller read it would fail every new prediction's insert at the commit.
        uploads = [upload for upload in uploads if upload.pk in present]
        history = Prediction.objects.filter(upload__in=uploads).order_by("created_at", "id")
        # Later rows overwrite earlier ones: each upload keeps its newest prediction's feedback, a cleared one included.
        feedback = dict(history.values_list("upload_id", "feedback"))
        return predictions_create(uploads=uploads, publish=publish, feedback=feedback, priority=priority)


def prediction_publish(*, prediction_id: int) -> bool:
    """Send the execution task; a broker failure is logged and left for the sweeper, never raised to the user."""
    return predictions_publish(prediction_ids=[prediction_id]) == 1


def predictions_publish(*, prediction_ids: list[int], priority: int = PRIORITY_UPLOADS) -> int:
    """Record a publish attempt and send the execution tasks at ``priority``; returns how many predictions were sent."""
    if not prediction_ids:
        return 0
    Prediction.objects.filter(pk__in=prediction_ids).update(
        publish_attempts=F("publish_attempts") + 1, published_at=Now()
    )
    return predictions_send(prediction_ids=prediction_ids, priority=priority)


def predictions_send(*, prediction_ids: list[int], priority: int = PRIORITY_UPLOADS) -> int:
    """One message per batch of ids, at ``priority``; on a broker failure the unsent ones are marked unpublished for
    the sweeper."""
    from classifier.tasks import predictions_execute as predictions_execute_task

    size = settings.INFERENCE_BATCH_SIZE
    sent = 0
    for start in range(0, len(prediction_ids), size):
        chunk = prediction_ids[start : start + size]
        try:
            predictions_execute_task.apply_async(args=[chunk], priority=priority)
        except Exception:  # noqa: BLE001 - any broker error means "not sent yet"; the sweeper retries
            logger.warning("could not publish predictions %s; the sweeper will retry", chunk, exc_info=True)
            # The broker is down: the rest would fail the same way, each after a connection timeout.
            try:
                Prediction.objects.filter(pk__in=prediction_ids[start:]).update(published_at=None)
            except DatabaseError:
                # Runs after the rows are committed, so it must not fail the upload. Still marked published,
                # they are re-sent once PREDICTION_REPUBLISH_AFTER_SECONDS have passed instead of at once.
                logger.warning("could not mark predictions %s unpublished", prediction_ids[start:], exc_info=True)
            break
        sent += len(chunk)
    return sent


def predictions_sweep() -> int:
    """Re-publish predictions stuck pending (never sent, or lost) or running on a dead worker; returns how many.

    One whose worker was lost ``PREDICTION_MAX_ATTEMPTS`` times fails instead: it is
    the likely reason, and running it again would only lose another worker.
    Ages are counted on the database's clock, which dated the predictions: a
    sweeper whose host clock runs ahead would otherwise take live claims for
    lost ones, and one behind would leave lost ones waiting.
    """
    now = Now()
    cutoff = now - dt.timedelta(seconds=settings.PREDICTION_REPUBLISH_AFTER_SECONDS)
    lost = Q(status=Prediction.Status.RUNNING, started_at__lt=now - running_stale_after())
    given_up = Prediction.objects.filter(lost, attempts__gte=settings.PREDICTION_MAX_ATTEMPTS).update(
        status=Prediction.Status.FAILED,
        error=f"The worker stopped while computing this prediction {settings.PREDICTION_MAX_ATTEMPTS} times "
        "(the image may be too large or damaged); it was not tried again.",
        finished_at=now,
    )
    if given_up:
        logger.warning("sweeper failed %s predictions that lost their worker too often", given_up)
    stuck = Prediction.objects.filter(
        Q(status=Prediction.Status.PENDING, created_at__lt=cutoff)
        & (Q(published_at__isnull=True) | Q(published_at__lt=cutoff))
        | lost
    ).order_by("created_at")
    by_priority: dict[int, list[int]] = {}
    for pk, priority in stuck.values_list("pk", "priority")[:1000]:
        by_priority.setdefault(priority, []).append(pk)
    if not by_priority:
        return 0
    # Each at the priority it was first sent with: a staff re-run's backlog, pending past the republish age only
    # because it is long, stays behind people's uploads.
    sent = sum(predictions_publish(prediction_ids=ids, priority=priority)
               for priority, ids in sorted(by_priority.items()))
    logger.info("sweeper re-published %s of %s stuck predictions", sent,
                sum(len(ids) for ids in by_priority.values()))
    return sent
