"""Writes for training runs and checkpoints, a module per concern; every public name is re-exported here."""
from training.services.activation import (
    ActiveCheckpointChangedError,
    CheckpointBelowActiveError,
    CheckpointNotLoadableError,
    checkpoint_activate,
)
from training.services.cancellation import TrainingRunStateError, training_run_cancel
from training.services.deletion import (
    CheckpointInUseError,
    CheckpointsPruned,
    DeletedCheckpoint,
    checkpoint_delete,
    checkpoints_delete,
    checkpoints_prune,
)
from training.services.execution import TrainingDeviceUnavailableError, training_run_execute
from training.services.queuing import (
    ARCHITECTURE_CHOICES,
    DEVICE_CHOICES,
    MAX_BATCH_SIZE,
    MAX_EPOCHS,
    MAX_LEARNING_RATE,
    MAX_SEED,
    MAX_TRAIN_SUBSET,
    MIN_BATCH_SIZE,
    MIN_TRAIN_SUBSET,
    training_run_create,
    training_run_publish,
)
from training.services.reaping import MAX_ATTEMPTS, STALE_ERROR, UNPUBLISHED_REPUBLISH_AFTER_S, training_runs_reap
from training.services.registration import CheckpointPathError, checkpoint_register
from training.services.reporting import CANCEL_CHECK_EVERY_S, PROGRESS_WRITE_EVERY_S, ProgressHook
from training.services.run_files import ABANDONED_TEMP_FILE_AGE_S

__all__ = [
    "ABANDONED_TEMP_FILE_AGE_S",
    "ARCHITECTURE_CHOICES",
    "CANCEL_CHECK_EVERY_S",
    "DEVICE_CHOICES",
    "MAX_ATTEMPTS",
    "MAX_BATCH_SIZE",
    "MAX_EPOCHS",
    "MAX_LEARNING_RATE",
    "MAX_SEED",
    "MAX_TRAIN_SUBSET",
    "MIN_BATCH_SIZE",
    "MIN_TRAIN_SUBSET",
    "PROGRESS_WRITE_EVERY_S",
    "STALE_ERROR",
    "UNPUBLISHED_REPUBLISH_AFTER_S",
    "ActiveCheckpointChangedError",
    "CheckpointBelowActiveError",
    "CheckpointInUseError",
    "CheckpointNotLoadableError",
    "CheckpointPathError",
    "CheckpointsPruned",
    "DeletedCheckpoint",
    "ProgressHook",
    "TrainingDeviceUnavailableError",
    "TrainingRunStateError",
    "checkpoint_activate",
    "checkpoint_delete",
    "checkpoint_register",
    "checkpoints_delete",
    "checkpoints_prune",
    "training_run_cancel",
    "training_run_create",
    "training_run_execute",
    "training_run_publish",
    "training_runs_reap",
]
