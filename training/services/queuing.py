"""Starting training runs: validate and store a queued run, and send its message to the trainers."""
from __future__ import annotations

import logging
import uuid
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import transaction

from mnistsite.action_log import staff_action_record
from mnistsite.database_now import Now
from training.models import TrainingRun

logger = logging.getLogger(__name__)

ARCHITECTURE_CHOICES = ("cnn", "mlp")
DEVICE_CHOICES = ("auto", "cpu", "cuda")
MAX_EPOCHS = 100
MAX_BATCH_SIZE = 8192
# Above it every run diverges at once.
MAX_LEARNING_RATE = 10
# Batch normalisation needs two images to train on.
MIN_BATCH_SIZE = 2
MIN_TRAIN_SUBSET = 2
# MNIST's training set less its validation images: a larger subset would be stored while the run trains on these.
MAX_TRAIN_SUBSET = 55_000
# TrainingRun.seed is a 32-bit integer column.
MAX_SEED = 2**31 - 1


def training_run_create(
    *,
    created_by: Any | None,
    architecture: str,
    epochs: int,
    batch_size: int,
    learning_rate: float,
    seed: int = 0,
    augment: bool = True,
    device: str = "auto",
    activate_on_success: bool = False,
    train_subset: int | None = None,
    enqueue: bool = True,
) -> TrainingRun:
    """Validate and store a queued run; unless ``enqueue`` is false, publish it once the transaction commits."""
    errors: dict[str, str] = {}
    if architecture not in ARCHITECTURE_CHOICES:
        errors["architecture"] = f"Choose one of {', '.join(ARCHITECTURE_CHOICES)}."
    if not 1 <= int(epochs) <= MAX_EPOCHS:
        errors["epochs"] = f"Epochs must be between 1 and {MAX_EPOCHS}."
    if not MIN_BATCH_SIZE <= int(batch_size) <= MAX_BATCH_SIZE:
        errors["batch_size"] = f"Batch size must be between {MIN_BATCH_SIZE} and {MAX_BATCH_SIZE}."
    if not 0 < float(learning_rate) <= MAX_LEARNING_RATE:
        errors["learning_rate"] = f"Learning rate must be greater than 0 and at most {MAX_LEARNING_RATE}."
    if not 0 <= int(seed) <= MAX_SEED:
        errors["seed"] = f"The seed must be between 0 and {MAX_SEED}."
    if device not in DEVICE_CHOICES:
        errors["device"] = f"Choose one of {', '.join(DEVICE_CHOICES)}."
    if train_subset is not None and not MIN_TRAIN_SUBSET <= int(train_subset) <= MAX_TRAIN_SUBSET:
        errors["train_subset"] = (
            f"The training subset must hold between {MIN_TRAIN_SUBSET} and {MAX_TRAIN_SUBSET:,} images "
            f"(MNIST has {MAX_TRAIN_SUBSET:,} training images besides the 5,000 held out for validation)."
        )
    # Activating when done is activating a checkpoint, which the admin and the API allow only to staff allowed to
    # change checkpoints; starting a run must not be a way around that. Commands (created_by None) are trusted.
    if activate_on_success and created_by is not None and not created_by.has_perm("training.change_checkpoint"):
        errors["activate_on_success"] = (
            "Activating the model when done needs the permission to change checkpoints; leave this off."
        )
    if errors:
        raise ValidationError(errors)

    with transaction.atomic():
        run = TrainingRun.objects.create(
            created_by=created_by,
            architecture=architecture,
            epochs=int(epochs),
            batch_size=int(batch_size),
            learning_rate=float(learning_rate),
            seed=int(seed),
            augment=bool(augment),
            requested_device=device,
            activate_on_success=bool(activate_on_success),
            train_subset=int(train_subset) if train_subset is not None else None,
        )
        if created_by is not None:
            staff_action_record(user=created_by, obj=run, message="Started.", added=True)
        if enqueue:
            run_id = run.pk
            transaction.on_commit(lambda: training_run_publish(run_id=run_id))
    return run


def training_run_publish(*, run_id: int) -> str | None:
    """Send the run's execute message; a broker outage leaves it queued for the reaper to re-publish."""
    from training.tasks import training_run_execute as execute_task

    task_id = str(uuid.uuid4())
    queued = TrainingRun.objects.filter(pk=run_id, status=TrainingRun.Status.QUEUED).update(
        celery_task_id=task_id, published_at=Now()
    )
    if not queued:
        # Claimed, cancelled or gone meanwhile: a message now would only be a no-op for a trainer.
        return None
    try:
        execute_task.apply_async(kwargs={"run_id": run_id}, task_id=task_id)
    except Exception:  # noqa: BLE001 - any broker failure: the run stays queued and is retried later
        if settings.CELERY_TASK_ALWAYS_EAGER:
            raise
        logger.exception("could not publish training run %s; the reaper will retry", run_id)
        TrainingRun.objects.filter(pk=run_id, celery_task_id=task_id).update(celery_task_id="", published_at=None)
        return None
    return task_id
