"""Cancelling a training run: at once while it is queued, at its next step while it runs."""
from __future__ import annotations

import logging

from django.contrib.auth.base_user import AbstractBaseUser
from django.db import transaction

from mnistsite.action_log import staff_action_record
from mnistsite.database_now import Now
from training.models import TrainingRun


logger = logging.getLogger(__name__)


class TrainingRunStateError(Exception):
    """The run is not in a state that allows the requested change."""


def training_run_cancel(*, run: TrainingRun, by: AbstractBaseUser | None = None) -> TrainingRun:
    """Cancel a queued run at once, or ask a running one to stop at its next step; recorded in its history as
    ``by``'s doing when given (a staff member through the admin or the API)."""
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
        done = "cancelled" if locked.status == TrainingRun.Status.CANCELLED else "asked to stop at its next step"
        if by is not None:
            staff_action_record(user=by, obj=locked, message=f"{done.capitalize()}.")
    logger.info("training run %s %s by %s", locked.pk, done, by.get_username() if by is not None else "a command")
    return locked
