"""Cancelling a training run: at once while it is queued, at its next step while it runs."""
from __future__ import annotations

from django.db import transaction

from mnistsite.database_now import Now
from training.models import TrainingRun


class TrainingRunStateError(Exception):
    """The run is not in a state that allows the requested change."""


def training_run_cancel(*, run: TrainingRun) -> TrainingRun:
    """Cancel a queued run at once, or ask a running one to stop at its next step."""
    with transaction.atomic():
        locked = TrainingRun.objects.select_for_update().get(pk=run.pk)
        if locked.status == TrainingRun.Status.QUEUED:
            locked.status = TrainingRun.Status.CANCELLED
            locked.cancel_requested = True
            locked.finished_at = Now()
            # A run queued again after a restart says it resumes: cancelled, it never will.
            locked.error = ""
            locked.save(update_fields=["status", "cancel_requested", "finished_at", "error"])
            locked.refresh_from_db(fields=["finished_at"])
        elif locked.status == TrainingRun.Status.RUNNING:
            locked.cancel_requested = True
            locked.save(update_fields=["cancel_requested"])
        elif locked.status == TrainingRun.Status.CANCELLED:
            raise TrainingRunStateError(f"Run {locked.pk} is already cancelled.")
        else:
            raise TrainingRunStateError(f"Run {locked.pk} has already {locked.status}; it cannot be cancelled.")
    return locked
