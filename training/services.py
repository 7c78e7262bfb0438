"""Business logic that writes: training runs (create, run, cancel, reap) and checkpoints (register, activate, delete)."""
from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from celery.exceptions import SoftTimeLimitExceeded
from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import connection, transaction
from django.db.models import F, Max, Q
from django.db.models.functions import Coalesce, Now

from training.ml.atomic import sha256_file
from training.models import Checkpoint, TrainingRun

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
# MNIST's training set: a larger subset would be stored while the run trains on these 60,000.
MAX_TRAIN_SUBSET = 60_000
# TrainingRun.seed is a 32-bit integer column.
MAX_SEED = 2**31 - 1
# A run whose worker died is restarted (from its last epoch checkpoint) at most this many times in all.
MAX_ATTEMPTS = 3
PROGRESS_WRITE_EVERY_S = 2.0
CANCEL_CHECK_EVERY_S = 1.0
# A queued run whose message never reached the broker is re-published after this long.
UNPUBLISHED_REPUBLISH_AFTER_S = 60
STALE_ERROR = "worker stopped responding"
# A checkpoint is written in seconds, its temp file's time moving with every write: one untouched for this long in a
# run's folder is what a write killed midway left (SIGKILL, a power cut), never removed otherwise.
ABANDONED_TEMP_FILE_AGE_S = 60

ProgressHook = Callable[[float, int, int, float], None]


class TrainingRunStateError(Exception):
    """The run is not in a state that allows the requested change."""


class CheckpointPathError(ValueError):
    """A checkpoint file lies outside CHECKPOINT_DIR, is no file, is not the file written, or is another run's."""


class CheckpointNotLoadableError(Exception):
    """The checkpoint's file is missing, changed or unreadable: activating it would fail every prediction."""


class TrainingDeviceUnavailableError(Exception):
    """The run asks for a device this trainer lacks; the message, a sentence for staff, becomes the run's error."""


class CheckpointBelowActiveError(Exception):
    """Activating when done would replace an active checkpoint whose test accuracy is higher; the message says so."""

    def __init__(self, *, checkpoint: Checkpoint, active: Checkpoint) -> None:
        super().__init__(
            f"Not activated: its {checkpoint.test_accuracy:.2%} test accuracy is below the active checkpoint's "
            f"{active.test_accuracy:.2%} (checkpoint {active.pk}, {active.architecture}); activate checkpoint "
            f"{checkpoint.pk} by hand to use it anyway."
        )
        self.checkpoint = checkpoint
        self.active = active


class CheckpointInUseError(Exception):
    """A checkpoint asked to be deleted is still needed: active, named by predictions, or its run may resume from it."""

    def __init__(self, reasons: list[str]) -> None:
        super().__init__(" ".join(reasons))
        self.reasons = reasons


# ---------------------------------------------------------------------------
# Runs: creation and publishing


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
            f"(MNIST has {MAX_TRAIN_SUBSET:,} training images)."
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


# ---------------------------------------------------------------------------
# Runs: execution


def _train_config_for(run: TrainingRun):
    from training.ml.recipe import TrainConfig

    config = TrainConfig.default_for(run.architecture)
    config.epochs = run.epochs
    config.batch_size = run.batch_size
    config.lr = run.learning_rate
    config.seed = run.seed
    config.augment = run.augment
    return config


def _training_run_claim(*, run_id: int) -> TrainingRun | None:
    """Move a queued run to running; None when it is anything else (a redelivered or stale message)."""
    with transaction.atomic():
        run = TrainingRun.objects.select_for_update().filter(pk=run_id).first()
        if run is None:
            logger.warning("training run %s does not exist; ignoring its message", run_id)
            return None
        if run.status != TrainingRun.Status.QUEUED:
            logger.info("training run %s is %s, not queued; not executing it again", run_id, run.status)
            return None
        # The times the reaper compares come from the database's clock (Now()), never this host's: a trainer whose
        # clock is minutes slow would otherwise look dead to a reaper on another host and lose its healthy run.
        TrainingRun.objects.filter(pk=run.pk).update(
            status=TrainingRun.Status.RUNNING,
            attempts=F("attempts") + 1,
            started_at=Coalesce(F("started_at"), Now()),
            heartbeat_at=Now(),
            finished_at=None,
        )
        run.refresh_from_db()
    return run


def _run_dir(run: TrainingRun) -> Path:
    """The run's folder of checkpoints, named after its id and its creation time to the microsecond.

    Every database numbers its runs from 1: a second database sharing CHECKPOINT_DIR (a database volume recreated
    empty, another DATABASE_URL in the same checkout) would otherwise write its run 1 over the first's. The time
    is stored on the row, so every attempt of a run, resumed or not, finds the same folder; checkpoints written
    before are found through the paths their rows store.
    """
    created = run.created_at.astimezone(UTC)
    return Path(settings.CHECKPOINT_DIR) / "runs" / f"{run.pk}-{created:%Y%m%dT%H%M%S%fZ}"


def _abandoned_temp_files_remove(*, run: TrainingRun) -> None:
    """Remove what writes killed midway left in the run's folder; what is written whole under its name stays.

    Called where no attempt before may still write there usefully: as an attempt starts (the claim took the run from
    every earlier one) and as the reaper gives up on one. A failure to remove is only space kept.
    """
    from training.ml.atomic import abandoned_temp_files_remove

    removed = abandoned_temp_files_remove(_run_dir(run), older_than_s=ABANDONED_TEMP_FILE_AGE_S)
    if removed:
        logger.info("training run %s: removed %s temp files of writes killed midway", run.pk, len(removed))


def _checkpoint_save(*, path: Path, run_id: int, **checkpoint: Any) -> tuple[str, int]:
    """Write a checkpoint of this run, never over a file that no checkpoint of this run names (another run's).

    A checkpoint of its own may be written again (an attempt that resumed from an
    earlier epoch than the last one saved); any other file already there is kept,
    refused in the same step as the write, so none can appear between a check and it.
    """
    from training.ml.checkpoints import save_checkpoint

    relative = path.resolve().relative_to(Path(settings.CHECKPOINT_DIR).resolve()).as_posix()
    own = Checkpoint.objects.filter(path=relative, run_id=run_id).exists()
    try:
        return save_checkpoint(path, overwrite=own, **checkpoint)
    except FileExistsError:
        raise CheckpointPathError(f"{path} was not written by this run; refusing to write over it") from None


class _RunReporter:
    """The callbacks ``fit`` calls: progress, cancellation and per-epoch checkpoints, all tied to one attempt.

    Every write is conditional on the run still being running under this attempt,
    so a worker that the reaper gave up on stops by itself instead of fighting
    the attempt that replaced it.
    """

    def __init__(
        self, *, run: TrainingRun, train_config, steps_per_epoch: int, on_progress: ProgressHook | None
    ) -> None:
        self.run_id = run.pk
        self.run_dir = _run_dir(run)
        self.steps_per_epoch = steps_per_epoch
        self.start_epoch = 0
        self.attempt = run.attempts
        self.architecture = run.architecture
        self.train_config = train_config
        self.hook = on_progress
        self.lost = False
        self._last_write = -float("inf")
        self._last_check = -float("inf")
        self._cancel_requested = run.cancel_requested

    def _rows(self):
        return TrainingRun.objects.filter(pk=self.run_id, status=TrainingRun.Status.RUNNING, attempts=self.attempt)

    def _update(self, **fields: Any) -> None:
        if not self._rows().update(heartbeat_at=Now(), **fields):
            self.lost = True

    def started(self, *, device: str) -> None:
        self._update(device=device, total_steps=self.steps_per_epoch)

    def progress(self, fraction: float, epoch: int, step: int, eta_seconds: float) -> None:
        if self.hook is not None:
            self.hook(fraction, epoch, step, eta_seconds)
        now = time.monotonic()
        if now - self._last_write < PROGRESS_WRITE_EVERY_S:
            return
        self._last_write = now
        self._update(
            progress=round(min(max(self.overall(fraction), 0.0), 1.0), 4),
            current_epoch=epoch,
            current_step=step,
            eta_seconds=round(eta_seconds, 1),
        )

    def overall(self, fraction: float) -> float:
        # fit reports the share of the remaining epochs; a resumed run has some behind it already.
        epochs = self.train_config.epochs
        return (self.start_epoch + fraction * (epochs - self.start_epoch)) / epochs if epochs else 1.0

    def should_stop(self) -> bool:
        if self.lost or self._cancel_requested:
            return True
        now = time.monotonic()
        if now - self._last_check < CANCEL_CHECK_EVERY_S:
            return False
        self._last_check = now
        row = TrainingRun.objects.filter(pk=self.run_id).values("status", "attempts", "cancel_requested").first()
        if row is None or row["status"] != TrainingRun.Status.RUNNING or row["attempts"] != self.attempt:
            self.lost = True
            return True
        self._cancel_requested = row["cancel_requested"]
        return self._cancel_requested

    def epoch_end(self, epoch: int, model, optimizer, metrics: dict[str, Any]) -> None:
        if self.claim_lost():
            return
        path = self.file_path(f"epoch-{epoch}.pt")
        digest, _size = _checkpoint_save(
            path=path,
            run_id=self.run_id,
            model=model,
            config=None,
            epoch=epoch,
            metrics=metrics,
            optimizer=optimizer,
            extra={"run_id": self.run_id, "train_config": self.train_config.to_dict()},
        )
        registered = False
        try:
            with transaction.atomic():
                if self.claim_locked() is None:
                    return
                checkpoint_register(
                    path=path,
                    run=TrainingRun(pk=self.run_id),
                    epoch=epoch,
                    test_accuracy=metrics.get("test_accuracy"),
                    architecture=self.architecture,
                    is_final=False,
                    sha256=digest,
                )
                history = [dict(row) for row in metrics.get("history", [])]
                # The epoch's own progress and last step, with its metrics: the throttled reports may have left the
                # run showing a step long before, behind the metrics it now shows.
                self._update(
                    metrics=history,
                    current_epoch=epoch,
                    current_step=self.steps_per_epoch,
                    progress=round(epoch / self.train_config.epochs, 4),
                    test_accuracy=metrics.get("test_accuracy"),
                )
            registered = True
        finally:
            if not registered:
                path.unlink(missing_ok=True)
        self._last_write = time.monotonic()

    def file_path(self, name: str) -> Path:
        """Where this attempt writes its checkpoint ``name``: a folder of its own.

        An attempt the reaper gave up on may still be writing when its successor
        starts; it never writes over the successor's files, and registers none
        (``claim_locked``). An attempt stopped by a trainer's shutdown is not
        counted, and the next one writes to the same folder: it has stopped.
        """
        return self.run_dir / f"attempt-{self.attempt}" / name

    def claim_locked(self) -> TrainingRun | None:
        """The run's row, locked while this attempt still holds it, until the caller's transaction ends.

        Taken to register a file already written: the reaper locks the row to
        hand the run over, so registering and handing over take turns, and
        nobody waits on the file being written (only on it being read back once
        for its digest).
        """
        locked = self._rows().select_for_update().first()
        self.lost = self.lost or locked is None
        return locked

    def claim_lost(self) -> bool:
        """Whether the reaper or a later attempt took the run over; checked unthrottled before any write."""
        if not self.lost:
            self.lost = not self._rows().exists()
        return self.lost


def _latest_epoch_checkpoint(run: TrainingRun) -> tuple[Checkpoint, dict] | None:
    """The payload of the newest loadable epoch checkpoint of ``run``, for resuming."""
    from training.ml.checkpoints import CheckpointError, load_checkpoint
    from training.selectors import checkpoint_file_path

    for checkpoint in run.checkpoints.filter(is_final=False).order_by("-epoch"):
        try:
            _model, payload = load_checkpoint(
                checkpoint_file_path(checkpoint=checkpoint), expected_sha256=checkpoint.sha256
            )
        except (CheckpointError, ValueError) as exc:
            logger.warning("cannot resume run %s from %s: %s", run.pk, checkpoint.path, exc)
            continue
        return checkpoint, payload
    return None


def _training_device(*, run: TrainingRun):
    """The device the run trains on here; TrainingDeviceUnavailableError when it asks for a GPU this trainer lacks."""
    import torch

    from training.ml.recipe import select_device

    asked = run.requested_device if run.requested_device != "auto" else settings.TORCH_DEVICE
    if asked == "cuda" and not torch.cuda.is_available():
        if run.requested_device == "cuda":
            raise TrainingDeviceUnavailableError(
                'This run asked for device "cuda", but the trainer that took it has no CUDA GPU. Start a new run '
                'with device "auto" or "cpu", or run the trainers on a machine with a GPU (docker-compose.gpu.yml).'
            )
        raise TrainingDeviceUnavailableError(
            'This trainer\'s TORCH_DEVICE is "cuda", but it has no CUDA GPU. Set TORCH_DEVICE to "auto" or "cpu" '
            "there, or train on a machine with a GPU; then start a new run."
        )
    return select_device(asked)


def training_run_execute(*, run_id: int, on_progress: ProgressHook | None = None) -> TrainingRun | None:
    """Claim a queued run and train it to completion; a no-op (None) when the run is not queued.

    Outcomes are recorded on the run: succeeded (with a registered final
    checkpoint), cancelled, or failed with the error text. ``on_progress`` is
    an extra in-process hook (the ``train --sync`` progress bar).
    """
    import torch

    from training.ml.data import batch_count, load_mnist
    from training.ml.engine import TrainingCancelled
    from training.ml.recipe import TrainConfig, fit
    from training.ml.threads import default_num_threads

    run = _training_run_claim(run_id=run_id)
    if run is None:
        return None
    reporter: _RunReporter | None = None
    # A worker process that served a prediction keeps inference's thread count (TORCH_NUM_THREADS) for good: a
    # run it takes trains on all the cores, as on a trainer of its own, and leaves inference's count as it was.
    threads_before = torch.get_num_threads()
    try:
        torch.set_num_threads(default_num_threads())
        _abandoned_temp_files_remove(run=run)
        resume = _latest_epoch_checkpoint(run)
        train_config = _train_config_for(run)
        resume_payload = None
        if resume is not None:
            checkpoint, resume_payload = resume
            stored = (resume_payload.get("extra") or {}).get("train_config")
            if stored:
                train_config = TrainConfig.from_dict(stored)
            logger.info("resuming training run %s from epoch %s", run.pk, checkpoint.epoch)
        device = _training_device(run=run)
        train, test = load_mnist(settings.DATA_DIR)
        if run.train_subset:
            train = train.subset(run.train_subset)
        steps_per_epoch = batch_count(len(train), batch_size=train_config.batch_size)
        reporter = _RunReporter(
            run=run, train_config=train_config, steps_per_epoch=steps_per_epoch, on_progress=on_progress
        )
        if resume_payload is not None:
            reporter.start_epoch = int(resume_payload["epoch"])
        reporter.started(device=str(device))
        result = fit(
            config=train_config,
            train=train,
            test=test,
            device=device,
            on_progress=reporter.progress,
            should_stop=reporter.should_stop,
            on_epoch_end=reporter.epoch_end,
            resume_from=resume_payload,
        )
        if reporter.claim_lost():
            raise TrainingCancelled("the run was taken over")
        return _training_run_succeed(run=run, result=result, train_config=train_config, reporter=reporter)
    except TrainingCancelled:
        if reporter is not None and reporter.lost:
            logger.warning("training run %s attempt %s lost its claim; stopping quietly", run.pk, run.attempts)
            return None
        return _training_run_finish(run=run, status=TrainingRun.Status.CANCELLED, error="")
    except SoftTimeLimitExceeded:
        # Failed, not queued again: a run this slow would hold the one trainer for the limit once per attempt.
        logger.error("training run %s hit the execute task's time limit", run.pk)
        return _training_run_finish(run=run, status=TrainingRun.Status.FAILED, error=_time_limit_error(run=run))
    except TrainingDeviceUnavailableError as exc:
        logger.error("training run %s failed: %s", run.pk, exc)
        return _training_run_finish(run=run, status=TrainingRun.Status.FAILED, error=str(exc))
    except Exception as exc:
        logger.exception("training run %s failed", run.pk)
        return _training_run_finish(run=run, status=TrainingRun.Status.FAILED, error=f"{type(exc).__name__}: {exc}")
    except SystemExit:
        # The trainer is stopping (a cold shutdown, a terminate): no fault of the run's.
        _training_run_requeue_after_shutdown(run=run)
        raise
    except BaseException as exc:
        # Ctrl-C in `train --sync`: record it, then let it through.
        _training_run_finish(run=run, status=TrainingRun.Status.FAILED, error=f"{type(exc).__name__}: {exc}")
        raise
    finally:
        torch.set_num_threads(threads_before)


def _time_limit_error(*, run: TrainingRun) -> str:
    from training.tasks import EXECUTE_SOFT_TIME_LIMIT_S

    limit = f"{EXECUTE_SOFT_TIME_LIMIT_S / 3600:g} h"
    last = run.checkpoints.filter(is_final=False).aggregate(last=Max("epoch"))["last"]
    if last is None:
        return f"Stopped by the training task's time limit ({limit}) before its first epoch finished."
    return (
        f"Stopped by the training task's time limit ({limit}) after epoch {last} of {run.epochs}; "
        f"its epoch checkpoints remain (the last: epoch {last}) and can be activated."
    )


def _training_run_requeue_after_shutdown(*, run: TrainingRun) -> None:
    """Queue the run again at once, this attempt not counted, to resume from its last epoch checkpoint."""
    ours = TrainingRun.objects.filter(pk=run.pk, status=TrainingRun.Status.RUNNING, attempts=run.attempts)
    requeued = ours.filter(cancel_requested=False).update(
        status=TrainingRun.Status.QUEUED,
        queued_at=Now(),
        attempts=F("attempts") - 1,
        eta_seconds=None,
        error="The trainer shut down during this run; it resumes from its last epoch checkpoint.",
    )
    if requeued:
        logger.warning("training run %s: the trainer is shutting down; queued again to resume", run.pk)
        training_run_publish(run_id=run.pk)
    elif ours.filter(cancel_requested=True).exists():
        _training_run_finish(run=run, status=TrainingRun.Status.CANCELLED, error="")


def _training_run_finish(*, run: TrainingRun, status: str, error: str) -> TrainingRun | None:
    updated = TrainingRun.objects.filter(pk=run.pk, status=TrainingRun.Status.RUNNING, attempts=run.attempts).update(
        status=status, error=error[:10_000], finished_at=Now(), eta_seconds=None, heartbeat_at=Now()
    )
    if not updated:
        return None
    run.refresh_from_db()
    return run


def _training_run_succeed(*, run: TrainingRun, result, train_config, reporter: _RunReporter) -> TrainingRun | None:
    path = reporter.file_path("final.pt")
    digest, _size = _checkpoint_save(
        path=path,
        run_id=run.pk,
        model=result.model,
        config=None,
        epoch=result.epochs_completed,
        metrics={"test_accuracy": result.final_accuracy, "test_loss": result.test_loss, "history": result.history},
        extra={"run_id": run.pk, "train_config": train_config.to_dict()},
    )
    registered = False
    try:
        with transaction.atomic():
            locked = reporter.claim_locked()
            if locked is None:
                return None
            if locked.cancel_requested:
                # Asked after the last step's check (during the final evaluation or the save): still honoured,
                # and nothing is registered or activated.
                return _training_run_finish(run=run, status=TrainingRun.Status.CANCELLED, error="")
            checkpoint = checkpoint_register(
                path=path,
                run=locked,
                epoch=result.epochs_completed,
                test_accuracy=result.final_accuracy,
                architecture=run.architecture,
                is_final=True,
                sha256=digest,
            )
            note = ""
            if locked.activate_on_success:
                try:
                    _checkpoint_activate(checkpoint=checkpoint, keep_better_active=True)
                except CheckpointBelowActiveError as exc:
                    note = str(exc)
                    logger.warning("training run %s: %s", run.pk, note)
            locked.status = TrainingRun.Status.SUCCEEDED
            locked.metrics = result.history
            locked.confusion_matrix = result.confusion
            locked.test_accuracy = result.final_accuracy
            locked.progress = 1.0
            locked.current_epoch = result.epochs_completed
            locked.current_step = locked.total_steps
            locked.eta_seconds = None
            # Shown to staff, as a restarted run's note is: why its model is not the active one, though asked to be.
            locked.error = note
            locked.finished_at = Now()
            locked.heartbeat_at = Now()
            locked.save()
            locked.refresh_from_db(fields=["finished_at", "heartbeat_at"])
        registered = True
    finally:
        if not registered:
            # Not named by any row (taken over, cancelled, or rolled back): a file nothing would ever clean up.
            path.unlink(missing_ok=True)
    logger.info(
        "training run %s succeeded: checkpoint %s, test accuracy %.4f", run.pk, checkpoint.pk, result.final_accuracy
    )
    return locked


# ---------------------------------------------------------------------------
# Runs: cancelling and reaping


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
        _abandoned_temp_files_remove(run=run)

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


# ---------------------------------------------------------------------------
# Checkpoints


def checkpoint_register(
    *,
    path: Path,
    run: TrainingRun | None,
    epoch: int,
    test_accuracy: float | None,
    architecture: str,
    is_final: bool = True,
    activate: bool = False,
    sha256: str | None = None,
) -> Checkpoint:
    """Record a checkpoint file (which must lie inside CHECKPOINT_DIR) with its sha256 and size.

    ``sha256``: the digest of the bytes written (``save_checkpoint`` returns it). When given, a file whose
    digest differs, changed or replaced since it was written, is refused rather than recorded as the checkpoint.
    """
    root = Path(settings.CHECKPOINT_DIR).resolve()
    resolved = Path(path).resolve()
    if not resolved.is_relative_to(root) or resolved == root:
        raise CheckpointPathError(f"{path} is not inside CHECKPOINT_DIR ({root}); refusing to register it")
    if not resolved.is_file():
        raise CheckpointPathError(f"{path} is not a file")
    digest = sha256_file(resolved)
    if sha256 is not None and digest != sha256.lower():
        raise CheckpointPathError(
            f"{path} has sha256 {digest}, not the {sha256} of the checkpoint written there; refusing to register it"
        )
    with transaction.atomic():
        checkpoint, _created = Checkpoint.objects.update_or_create(
            path=resolved.relative_to(root).as_posix(),
            defaults={
                "run": run,
                "epoch": int(epoch),
                "architecture": architecture,
                "sha256": digest,
                "size": resolved.stat().st_size,
                "test_accuracy": test_accuracy,
                "is_final": is_final,
            },
        )
        if activate:
            checkpoint = checkpoint_activate(checkpoint=checkpoint)
    return checkpoint


# Any fixed number: the key of the transaction-level advisory lock that activations take on PostgreSQL.
_ACTIVATION_LOCK_KEY = 0x6D6E6973_74616374


def _activations_serialise() -> None:
    """One activation at a time, until the caller's transaction ends.

    Locking the active row is not enough: before the first activation there is
    none, and two at once would both mark theirs active and the second would
    fail on the one-active constraint. SQLite runs one writer at a time anyway.
    """
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", [_ACTIVATION_LOCK_KEY])


def checkpoint_activate(*, checkpoint: Checkpoint) -> Checkpoint:
    """Make this the one checkpoint inference uses (promotion or roll-back), once its file is seen to load.

    Raises CheckpointNotLoadableError, the active checkpoint unchanged, when it does not.
    """
    return _checkpoint_activate(checkpoint=checkpoint, keep_better_active=False)


def _active_checkpoint_better(*, checkpoint: Checkpoint) -> Checkpoint | None:
    """The active checkpoint, when its test accuracy is higher than this one's and it loads; None otherwise.

    An active checkpoint that no longer loads fails every prediction: a model replacing it is better whatever its
    accuracy (``ensure_model`` trains a quick one for just that). Without both accuracies there is nothing to
    compare, and the checkpoint is activated as asked.
    """
    from training.loading import checkpoint_load_model
    from training.ml.checkpoints import CheckpointError

    active = Checkpoint.objects.filter(is_active=True).exclude(pk=checkpoint.pk).first()
    if active is None or active.test_accuracy is None or checkpoint.test_accuracy is None:
        return None
    if checkpoint.test_accuracy >= active.test_accuracy:
        return None
    try:
        checkpoint_load_model(checkpoint=active)
    except (CheckpointError, ValueError):
        return None
    return active


def _checkpoint_activate(*, checkpoint: Checkpoint, keep_better_active: bool) -> Checkpoint:
    """``checkpoint_activate``; with ``keep_better_active``, CheckpointBelowActiveError rather than a worse model."""
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
        _activations_serialise()
        if not Checkpoint.objects.select_for_update().filter(pk=checkpoint.pk).exists():
            # Deleted since it was loaded: deactivating the others would leave no model active at all.
            raise CheckpointNotLoadableError(f"{checkpoint} has been deleted; the active model is unchanged.")
        # Compared under the lock: an activation finishing meanwhile is the one compared with.
        if keep_better_active and (better := _active_checkpoint_better(checkpoint=checkpoint)) is not None:
            raise CheckpointBelowActiveError(checkpoint=checkpoint, active=better)
        Checkpoint.objects.filter(is_active=True).exclude(pk=checkpoint.pk).update(is_active=False)
        Checkpoint.objects.filter(pk=checkpoint.pk).update(is_active=True)
    checkpoint.refresh_from_db()
    logger.info("checkpoint %s is now active", checkpoint.pk)
    return checkpoint


@dataclass(frozen=True)
class DeletedCheckpoint:
    """What a deleted checkpoint's row said, for reporting it."""

    id: int
    run_id: int | None
    epoch: int
    path: str
    size: int


@dataclass(frozen=True)
class CheckpointsPruned:
    """The checkpoints a prune deleted, or in a dry run would have deleted."""

    checkpoints: list[DeletedCheckpoint]
    dry_run: bool

    @property
    def count(self) -> int:
        return len(self.checkpoints)

    @property
    def bytes_freed(self) -> int:
        return sum(checkpoint.size for checkpoint in self.checkpoints)


def checkpoints_prune(*, dry_run: bool = False) -> CheckpointsPruned:
    """Delete the epoch checkpoints nothing needs (``selectors.checkpoint_list_prunable``), their files once committed.

    Files that no checkpoint names are never touched: another database sharing CHECKPOINT_DIR may own them.
    """
    from training.selectors import checkpoint_list_prunable

    with transaction.atomic():
        # Taken before reading: an activation under way either finished first (and its checkpoint is no longer a
        # candidate) or waits, and then finds its row gone.
        _activations_serialise()
        doomed = list(checkpoint_list_prunable().select_for_update(of=("self",)))
        if not dry_run:
            _checkpoints_delete_locked(checkpoints=doomed)
    return CheckpointsPruned(checkpoints=[_deleted(checkpoint) for checkpoint in doomed], dry_run=dry_run)


def checkpoint_delete(*, checkpoint: Checkpoint) -> None:
    """Delete one checkpoint and, once committed, its file; CheckpointInUseError when it is still needed."""
    checkpoints_delete(checkpoints=[checkpoint])


def checkpoints_delete(*, checkpoints: Iterable[Checkpoint]) -> int:
    """Delete these checkpoints and, once committed, their files: all of them, or none when one is still needed.

    Raises CheckpointInUseError, deleting nothing, when one is active, named by a prediction or its run
    (queued or running) may resume from it. Returns how many were deleted.
    """
    from training.selectors import checkpoint_deletion_refusal

    ids = sorted({checkpoint.pk for checkpoint in checkpoints})
    with transaction.atomic():
        _activations_serialise()
        locked = list(Checkpoint.objects.select_for_update().filter(pk__in=ids).order_by("pk"))
        reasons = [reason for checkpoint in locked if (reason := checkpoint_deletion_refusal(checkpoint=checkpoint))]
        if reasons:
            raise CheckpointInUseError(reasons)
        _checkpoints_delete_locked(checkpoints=locked)
    return len(locked)


def _deleted(checkpoint: Checkpoint) -> DeletedCheckpoint:
    return DeletedCheckpoint(
        id=checkpoint.pk, run_id=checkpoint.run_id, epoch=checkpoint.epoch, path=checkpoint.path, size=checkpoint.size
    )


def _checkpoints_delete_locked(*, checkpoints: list[Checkpoint]) -> None:
    """Delete rows the caller locked; their files go only once the caller's transaction commits."""
    if not checkpoints:
        return
    root = Path(settings.CHECKPOINT_DIR).resolve()
    paths = [root / checkpoint.path for checkpoint in checkpoints]
    # A prediction committed with one since it was checked makes this a ProtectedError: the whole deletion is rolled
    # back and every file stays. Results a worker commits after the deletion fail instead, and that worker takes its
    # batch again with the active checkpoint (classifier.services.predictions_execute).
    Checkpoint.objects.filter(pk__in=[checkpoint.pk for checkpoint in checkpoints]).delete()
    transaction.on_commit(lambda: _checkpoint_files_remove(root=root, paths=paths))


def _checkpoint_files_remove(*, root: Path, paths: list[Path]) -> None:
    for path in paths:
        # The name itself is removed, never what a link there points to; a name that leads out of CHECKPOINT_DIR
        # is left alone.
        if not path.parent.resolve().is_relative_to(root):
            logger.warning("not removing %s: it lies outside CHECKPOINT_DIR", path)
            continue
        try:
            path.unlink(missing_ok=True)
        except OSError:
            # The row is gone either way: the file is only space taken, not a checkpoint anyone can use.
            logger.exception("could not remove the file %s of a deleted checkpoint", path)
    _empty_folders_remove(root=root, folders={path.parent for path in paths})


def _empty_folders_remove(*, root: Path, folders: set[Path]) -> None:
    """Remove these folders (an attempt's) and the ones holding them (a run's) that are left empty, below the runs'."""
    keep = {root, root / "runs"}
    for folder in sorted((folder.resolve() for folder in folders), key=lambda folder: len(folder.parts), reverse=True):
        while folder not in keep and folder.is_relative_to(root):
            try:
                # Removes only an empty folder, in one step: one that anything still holds stays.
                folder.rmdir()
            except OSError:
                break
            folder = folder.parent
