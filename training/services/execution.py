"""Running a queued training run on a trainer: claim it, resume and train it, and record how it ended."""
from __future__ import annotations

import logging

from celery.exceptions import SoftTimeLimitExceeded
from django.conf import settings
from django.db import DatabaseError, transaction
from django.db.models import F, Max
from django.db.models.functions import Coalesce

from mnistsite.database_connections import connection_reopen_if_lost, is_transient
from mnistsite.database_now import Now
from training.ml.config import TrainConfig
from training.models import Checkpoint, TrainingRun
from training.services.activation import CheckpointBelowActiveError, checkpoint_activate
from training.services.queuing import training_run_publish
from training.services.registration import checkpoint_register
from training.services.reporting import ProgressHook, RunReporter
from training.services.run_files import (
    checkpoint_file_remove_unregistered,
    checkpoint_file_save,
    run_abandoned_temp_files_remove,
)

logger = logging.getLogger(__name__)


class TrainingDeviceUnavailableError(Exception):
    """The run asks for a device this trainer lacks; the message, a sentence for staff, becomes the run's error."""


def _train_config_for(run: TrainingRun) -> TrainConfig:
    config = TrainConfig.default_for(run.architecture)
    config.epochs = run.epochs
    config.batch_size = run.batch_size
    config.lr = run.learning_rate
    config.seed = run.seed
    config.augment = run.augment
    return config


# Twice what guessing scores among ten digits.
LEARNED_NOTHING_BELOW = 0.2


def _learned_nothing_note(*, run: TrainingRun, accuracy: float) -> str:
    """Why a run that finished without error still gave a model at chance, or "" when it did not: a finite loss
    that never fell (a learning rate far too high) or too few steps. Activating it is left to the usual rule: it
    never replaces a better model that loads, and a quick smoke model (``ensure_model --subset``) still replaces
    none at all or one that no longer loads."""
    if accuracy >= LEARNED_NOTHING_BELOW:
        return ""
    recipe = TrainConfig.default_for(run.architecture)
    advice = (
        f"its learning rate, {run.learning_rate:g}, is likely too high (the recipe's is {recipe.lr:g})"
        if run.learning_rate > recipe.lr
        else "train on more images or for more epochs"
    )
    return f"Its model learned next to nothing: {accuracy:.2%} test accuracy, where guessing scores 10%; {advice}."


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

    from training.ml.data import batch_count, load_mnist, split_validation
    from training.ml.engine import TrainingCancelled, TrainingDiverged
    from training.ml.recipe import fit
    from training.ml.threads import default_num_threads

    run = _training_run_claim(run_id=run_id)
    if run is None:
        return None
    reporter: RunReporter | None = None
    # A worker process that served a prediction keeps inference's thread count (TORCH_NUM_THREADS) for good: a
    # run it takes trains on all the cores, as on a trainer of its own, and leaves inference's count as it was.
    threads_before = torch.get_num_threads()
    try:
        torch.set_num_threads(default_num_threads())
        run_abandoned_temp_files_remove(run=run)
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
        # Held out before any subset is taken: every run is judged on the same 5,000 images, never trained on.
        train, validation = split_validation(train)
        if run.train_subset:
            train = train.subset(run.train_subset)
        steps_per_epoch = batch_count(len(train), batch_size=train_config.batch_size)
        reporter = RunReporter(
            run=run, train_config=train_config, steps_per_epoch=steps_per_epoch, on_progress=on_progress
        )
        if resume_payload is not None:
            reporter.start_epoch = int(resume_payload["epoch"])
        reporter.started(device=str(device))
        # Its start, as its end is: which attempt, where, on how many images, for the operator reading the log.
        logger.info("training run %s attempt %s started: %s on %s, %s images, %s epochs", run.pk, run.attempts,
                    run.architecture, device, len(train), train_config.epochs)
        result = fit(
            config=train_config,
            train=train,
            validation=validation,
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
    except TrainingDiverged as exc:
        # The recipe's fault, not the code's: a traceback would add nothing. The metrics and epoch checkpoints of
        # the epochs before stay; the final model, whose weights are useless, is never saved.
        logger.error("training run %s diverged: %s", run.pk, exc)
        return _training_run_finish(run=run, status=TrainingRun.Status.FAILED, error=f"Training diverged: {exc}.")
    except Exception as exc:
        if is_transient(exc):
            return _training_run_requeue_after_database_loss(run=run, exc=exc)
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


def _training_run_requeue_after_database_loss(*, run: TrainingRun, exc: Exception) -> None:
    """Queue the run again at once to resume from its last epoch checkpoint, the attempt counted, or fail it once it
    has had MAX_ATTEMPTS; with the database still away, the reaper does either once it is back.

    Counted, as the reaper counts a trainer that died: a run that loses its connection every time ends. Without
    this, the run showed running, its progress frozen, until the reaper took it for a dead trainer's.
    """
    from training.services.reaping import MAX_ATTEMPTS

    logger.warning("training run %s attempt %s lost its database connection: %s", run.pk, run.attempts, exc)
    connection_reopen_if_lost()
    ours = TrainingRun.objects.filter(pk=run.pk, status=TrainingRun.Status.RUNNING, attempts=run.attempts)
    lost = f"The connection to the database was lost during attempt {run.attempts}"
    try:
        if ours.filter(cancel_requested=True).exists():
            _training_run_finish(run=run, status=TrainingRun.Status.CANCELLED, error="")
            return None
        if run.attempts >= MAX_ATTEMPTS:
            _training_run_finish(run=run, status=TrainingRun.Status.FAILED, error=f"{lost}, its last.")
            return None
        requeued = ours.update(
            status=TrainingRun.Status.QUEUED, queued_at=Now(), eta_seconds=None,
            error=f"{lost}; it resumes from its last epoch checkpoint.",
        )
    except DatabaseError:
        logger.warning("training run %s: the database is still away; the reaper will resume it", run.pk,
                       exc_info=True)
        return None
    if requeued:
        training_run_publish(run_id=run.pk)
    return None


def _training_run_finish(*, run: TrainingRun, status: str, error: str) -> TrainingRun | None:
    updated = TrainingRun.objects.filter(pk=run.pk, status=TrainingRun.Status.RUNNING, attempts=run.attempts).update(
        status=status, error=error[:10_000], finished_at=Now(), eta_seconds=None, heartbeat_at=Now()
    )
    if not updated:
        return None
    run.refresh_from_db()
    return run


def _training_run_succeed(*, run: TrainingRun, result, train_config, reporter: RunReporter) -> TrainingRun | None:
    path = reporter.file_path("final.pt")
    digest, _size = checkpoint_file_save(
        path=path,
        run_id=run.pk,
        model=result.model,
        config=None,
        epoch=result.epochs_completed,
        metrics={
            "test_accuracy": result.final_accuracy, "test_loss": result.test_loss,
            "validation_accuracy": result.validation_accuracy, "validation_loss": result.validation_loss,
            "history": result.history,
        },
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
                validation_accuracy=result.validation_accuracy,
                architecture=run.architecture,
                is_final=True,
                sha256=digest,
            )
            notes = [_learned_nothing_note(run=locked, accuracy=result.final_accuracy)]
            starter = locked.created_by
            if locked.activate_on_success and starter is not None and not starter.has_perm("training.change_checkpoint"):
                # Allowed when the run was queued, and asked again now: whoever lost the right meanwhile (left the
                # staff, deactivated) no longer changes the model everyone is served by.
                notes.append(f"Not made active: {starter} may no longer change checkpoints; activate it by hand.")
            elif locked.activate_on_success:
                try:
                    checkpoint_activate(
                        checkpoint=checkpoint, keep_better_active=True, by=locked.created_by,
                        why=f" when training run {run.pk} succeeded",
                    )
                except CheckpointBelowActiveError as exc:
                    notes.append(str(exc))
            note = " ".join(filter(None, notes))
            if note:
                logger.warning("training run %s: %s", run.pk, note)
            locked.status = TrainingRun.Status.SUCCEEDED
            locked.metrics = result.history
            locked.confusion_matrix = result.confusion
            locked.test_accuracy = result.final_accuracy
            locked.validation_accuracy = result.validation_accuracy
            locked.progress = 1.0
            locked.current_epoch = result.epochs_completed
            locked.current_step = locked.total_steps
            locked.eta_seconds = None
            # Shown to staff, as a restarted run's note is: why its model is not the active one, though asked to be,
            # or why it is worth little.
            locked.error = note
            locked.finished_at = Now()
            locked.heartbeat_at = Now()
            locked.save()
            locked.refresh_from_db(fields=["finished_at", "heartbeat_at"])
        registered = True
    finally:
        if not registered:
            # Not named by any row (taken over, cancelled, or rolled back): a file nothing would ever clean up.
            checkpoint_file_remove_unregistered(path=path)
    logger.info(
        "training run %s succeeded: checkpoint %s, validation accuracy %.4f, test accuracy %.4f", run.pk,
        checkpoint.pk, result.validation_accuracy, result.final_accuracy,
    )
    return locked
