"""The reaper: runs whose trainer stopped responding are resumed or failed; lost queued runs are sent again."""
from __future__ import annotations

import logging
from datetime import datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import Q

from mnistsite.database_now import Now
from training.models import TrainingRun
from training.services.queuing import training_run_publish
from training.services.run_files import run_abandoned_temp_files_remove

logger = logging.getLogger(__name__)

# A run whose worker died is restarted (from its last epoch checkpoint) at most this many times in all.
MAX_ATTEMPTS = 3
# A queued run whose message never reached the broker is re-published after this long.
UNPUBLISHED_REPUBLISH_AFTER_S = 60
STALE_ERROR = "worker stopped responding"


def training_runs_reap(*, now: datetime | None = None) -> dict[str, list[int]]:
    """Deal with runs whose worker died: resume them from their last epoch checkpoint, or fail them.

    A running run whose heartbeat is older than TRAINING_STALE_AFTER_SECONDS is
    re-queued while it has attempts left, else marked failed ("worker stopped
    responding"); one that was asked to cancel becomes cancelled, and the temp
    files of checkpoint writes killed midway are cleared from its folder. Queued runs
    whose message never reached the broker, or was lost there, are published again.

    Times are the database's clock, which wrote the heartbeats, not this host's: ``now``
    stands in for it (tests).
    """
    clock = Now() if now is None else now
    cutoff = clock - timedelta(seconds=settings.TRAINING_STALE_AFTER_SECONDS)
    stale_filter = Q(heartbeat_at__lt=cutoff) | Q(heartbeat_at__isnull=True, started_at__lt=cutoff)
    outcome: dict[str, list[int]] = {"requeued": [], "failed": [], "cancelled": [], "republished": []}
    stale_ids = list(
        TrainingRun.objects.filter(status=TrainingRun.Status.RUNNING).filter(stale_filter).values_list("pk", flat=True)
    )
    for run_id in stale_ids:
        with transaction.atomic():
            run = (
                TrainingRun.objects.select_for_update()
                .filter(pk=run_id, status=TrainingRun.Status.RUNNING)
                .filter(stale_filter)
                .first()
            )
            if run is None:
                continue
            run.eta_seconds = None
            if run.cancel_requested:
                run.status = TrainingRun.Status.CANCELLED
                run.finished_at = clock
                # What an earlier restart said (that it resumes) no longer holds, as for a run cancelled by its trainer.
                run.error = ""
                outcome["cancelled"].append(run.pk)
            elif run.attempts < MAX_ATTEMPTS:
                run.status = TrainingRun.Status.QUEUED
                run.queued_at = clock
                run.error = f"{STALE_ERROR} (attempt {run.attempts}); resuming from the last epoch checkpoint"
                outcome["requeued"].append(run.pk)
                transaction.on_commit(lambda run_id=run.pk: training_run_publish(run_id=run_id))
            else:
                run.status = TrainingRun.Status.FAILED
                run.error = f"{STALE_ERROR} after {run.attempts} attempts"
                run.finished_at = clock
                outcome["failed"].append(run.pk)
            run.save(update_fields=["status", "error", "finished_at", "eta_seconds", "queued_at"])
            logger.warning("stale training run %s: %s", run.pk, run.status)
        # A run queued again is cleared once more as its next attempt starts; a finished one never is but here.
        run_abandoned_temp_files_remove(run=run)

    queued = TrainingRun.objects.filter(status=TrainingRun.Status.QUEUED)
    unpublished = queued.filter(
        celery_task_id="", created_at__lt=clock - timedelta(seconds=UNPUBLISHED_REPUBLISH_AFTER_S)
    )
    resend = list(unpublished.values_list("pk", flat=True))
    if not TrainingRun.objects.filter(status=TrainingRun.Status.RUNNING).exists():
        # A sent message waits only while every trainer is busy, and a busy trainer's run is running. With none
        # running, one still waiting this long was lost (a broker restarted without its data, a purged queue),
        # or no trainer is up. A second message is safe either way: only a queued run can be claimed.
        lost_before = clock - timedelta(seconds=settings.TRAINING_REPUBLISH_AFTER_SECONDS)
        lost = list(
            queued.exclude(celery_task_id="")
            .exclude(pk__in=outcome["requeued"])  # sent once this call's transaction commits
            .filter(Q(published_at__lt=lost_before) | Q(published_at__isnull=True, created_at__lt=lost_before))
            .values_list("pk", flat=True)
        )
        expected = queued.exclude(celery_task_id="").exclude(pk__in=outcome["requeued"]).count()
        if lost and (_training_messages_waiting() or 0) >= expected:
            # At least as many messages wait as there are queued runs: no trainer is up to take them, and another
            # copy of each would only pile up behind them. (Messages of runs cancelled meanwhile count too, and can
            # hold a lost one back until a trainer takes them as no-ops.)
            logger.warning("training runs %s are still queued, their messages waiting for a trainer", lost)
            lost = []
        for run_id in lost:
            logger.warning("training run %s is still queued long after its message was sent; sending it again", run_id)
            resend.append(run_id)
    for run_id in resend:
        if training_run_publish(run_id=run_id):
            outcome["republished"].append(run_id)
    return outcome


def _training_messages_waiting() -> int | None:
    """How many messages the broker's training queue holds that no trainer has taken; None when it cannot tell."""
    from kombu.exceptions import ChannelError

    from mnistsite.celery import app

    queue = settings.CELERY_TASK_ROUTES["training.tasks.*"]["queue"]
    try:
        with app.connection_for_read() as connection:
            # One try: with the broker down, the reaper must not wait out the usual reconnection attempts.
            connection.ensure_connection(max_retries=0)
            declared = connection.default_channel.queue_declare(queue=queue, passive=True)
    except ChannelError:
        return 0  # no such queue: Redis drops an emptied one
    except Exception:  # noqa: BLE001 - unknown: sending again is the safe side, a second message is harmless
        logger.warning("could not count the messages waiting in the %s queue", queue, exc_info=True)
        return None
    return declared.message_count
