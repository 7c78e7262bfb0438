"""Activating a checkpoint: the one inference uses, made so only once its file is seen to load, one at a time."""
from __future__ import annotations

import logging
from pathlib import Path
from types import EllipsisType

from django.conf import settings
from django.contrib.auth.base_user import AbstractBaseUser
from django.db import connection, transaction

from mnistsite.action_log import staff_action_record
from training.models import Checkpoint
from training.selectors import AccuracyComparison, checkpoint_accuracies_compared

logger = logging.getLogger(__name__)


class CheckpointNotLoadableError(Exception):
    """The checkpoint's file is missing, changed or unreadable: activating it would fail every prediction."""


class ActiveCheckpointChangedError(Exception):
    """Another checkpoint is active than the one the person activating was told it replaces; nothing changed."""


class CheckpointBelowActiveError(Exception):
    """Activating when done would replace an active checkpoint whose accuracy is higher; the message says which."""

    def __init__(self, *, checkpoint: Checkpoint, active: Checkpoint, compared: AccuracyComparison) -> None:
        super().__init__(
            f"Not activated: its {compared.accuracy:.2%} {compared.kind} accuracy is below the active checkpoint's "
            f"{compared.other_accuracy:.2%} (checkpoint {active.pk}, {active.architecture}); activate checkpoint "
            f"{checkpoint.pk} by hand to use it anyway."
        )
        self.checkpoint = checkpoint
        self.active = active
        self.compared = compared


# Any fixed number: the key of the transaction-level advisory lock that activations take on PostgreSQL.
_ACTIVATION_LOCK_KEY = 0x6D6E6973_74616374


def activations_serialise() -> None:
    """One activation at a time, until the caller's transaction ends.

    Locking the active row is not enough: before the first activation there is
    none, and two at once would both mark theirs active and the second would
    fail on the one-active constraint. SQLite runs one writer at a time anyway.
    """
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", [_ACTIVATION_LOCK_KEY])


def _active_checkpoint_better(*, checkpoint: Checkpoint) -> tuple[Checkpoint, AccuracyComparison] | None:
    """The active checkpoint and how it compares, when it is more accurate than this one and loads; None otherwise.

    Compared by validation accuracy, or by test accuracy where either predates the validation split
    (``checkpoint_accuracies_compared``). An active checkpoint that no longer loads fails every prediction: a
    model replacing it is better whatever its accuracy (``ensure_model`` trains a quick one for just that).
    Without an accuracy both have there is nothing to compare, and the checkpoint is activated as asked.
    """
    from training.loading import checkpoint_load_model
    from training.ml.checkpoints import CheckpointError

    active = Checkpoint.objects.filter(is_active=True).exclude(pk=checkpoint.pk).first()
    if active is None:
        return None
    compared = checkpoint_accuracies_compared(checkpoint=checkpoint, other=active)
    if compared is None or not compared.is_below:
        return None
    try:
        checkpoint_load_model(checkpoint=active)
    except (CheckpointError, ValueError):
        return None
    return active, compared


def checkpoint_activate(
    *,
    checkpoint: Checkpoint,
    keep_better_active: bool = False,
    replacing: int | None | EllipsisType = ...,
    by: AbstractBaseUser | None = None,
    why: str = "",
) -> Checkpoint:
    """Make this the one checkpoint inference uses (promotion or roll-back), once its file is seen to load.

    Raises CheckpointNotLoadableError, the active checkpoint unchanged, when it does not; with
    ``keep_better_active``, CheckpointBelowActiveError rather than replace a better model; with ``replacing`` (the id
    of the checkpoint the person was told it replaces, None for none), ActiveCheckpointChangedError when another is
    active now. A change is recorded in the checkpoint's history as ``by``'s doing when given, with ``why`` ("when
    training run 7 succeeded") after it.
    """
    from training.loading import checkpoint_load_model
    from training.ml.checkpoints import CheckpointError

    try:
        checkpoint_load_model(checkpoint=checkpoint)
    except (CheckpointError, ValueError) as exc:
        # Staff read this through the API and the admin: the file is named as recorded, relative to CHECKPOINT_DIR,
        # never by where this server keeps it.
        reason = str(exc).replace(f"{Path(settings.CHECKPOINT_DIR).resolve()}/", "")
        raise CheckpointNotLoadableError(
            f"{checkpoint} cannot be loaded ({reason}); the active model is unchanged."
        ) from exc
    with transaction.atomic():
        activations_serialise()
        if not Checkpoint.objects.select_for_update().filter(pk=checkpoint.pk).exists():
            # Deleted since it was loaded: deactivating the others would leave no model active at all.
            raise CheckpointNotLoadableError(f"{checkpoint} has been deleted; the active model is unchanged.")
        # Compared under the lock: an activation finishing meanwhile is the one compared with.
        if keep_better_active and (better := _active_checkpoint_better(checkpoint=checkpoint)) is not None:
            active, compared = better
            raise CheckpointBelowActiveError(checkpoint=checkpoint, active=active, compared=compared)
        replaced = Checkpoint.objects.filter(is_active=True).exclude(pk=checkpoint.pk).first()
        if replacing is not ... and replacing != (replaced.pk if replaced is not None else None):
            raise ActiveCheckpointChangedError(f"the active checkpoint is now {replaced or 'none'}")
        if replaced is not None:
            Checkpoint.objects.filter(pk=replaced.pk).update(is_active=False)
        changed = Checkpoint.objects.filter(pk=checkpoint.pk, is_active=False).update(is_active=True)
        if changed and by is not None:
            staff_action_record(user=by, obj=checkpoint, message=f"Activated{why}, {_replacing(replaced)}.")
            if replaced is not None:
                staff_action_record(user=by, obj=replaced, message=f"Deactivated{why}: checkpoint {checkpoint.pk} "
                                    "replaced it.")
    checkpoint.refresh_from_db()
    who = by.get_username() if by is not None else "a command"
    if changed:
        logger.info("checkpoint %s is now active, %s, by %s%s", checkpoint.pk, _replacing(replaced), who, why)
    else:
        logger.info("checkpoint %s was already active (asked by %s)", checkpoint.pk, who)
    return checkpoint


def _replacing(replaced: Checkpoint | None) -> str:
    if replaced is None:
        return "when none was active"
    # The accuracy it was chosen by: validation, or test for a checkpoint from before the validation split.
    if replaced.validation_accuracy is not None:
        accuracy = f", {replaced.validation_accuracy:.2%} validation accuracy"
    elif replaced.test_accuracy is not None:
        accuracy = f", {replaced.test_accuracy:.2%} test accuracy"
    else:
        accuracy = ""
    return f"replacing checkpoint {replaced.pk} ({replaced.architecture}{accuracy})"
