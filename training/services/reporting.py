"""What one attempt of a run writes while it trains: progress, heartbeats, cancel checks, its epoch checkpoints."""
from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from django.db import DatabaseError, connection, transaction

from mnistsite.database_connections import connection_reopen_if_lost, is_transient
from mnistsite.database_now import Now
from training.models import TrainingRun
from training.services.registration import checkpoint_register
from training.services.run_files import checkpoint_file_remove_unregistered, checkpoint_file_save, run_dir

logger = logging.getLogger(__name__)

PROGRESS_WRITE_EVERY_S = 2.0
CANCEL_CHECK_EVERY_S = 1.0
# After a report failed on a lost connection, how long training goes on before the next one tries the database: a
# database out of reach holds each try for its connect_timeout, which every step would otherwise wait out. Well
# inside TRAINING_STALE_AFTER_SECONDS, so a database back soon sees the heartbeat again before the reaper would.
DATABASE_RETRY_AFTER_S = 30.0

ProgressHook = Callable[[float, int, int, float], None]


class RunReporter:
    """The callbacks ``fit`` calls: progress, cancellation and per-epoch checkpoints, all tied to one attempt.

    Every write is conditional on the run still being running under this attempt,
    so a worker that the reaper gave up on stops by itself instead of fighting
    the attempt that replaced it.
    """

    def __init__(
        self, *, run: TrainingRun, train_config, steps_per_epoch: int, on_progress: ProgressHook | None
    ) -> None:
        self.run_id = run.pk
        self.run_dir = run_dir(run)
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

    def _training_goes_on(self, exc: DatabaseError, *, what: str) -> bool:
        """After a report or a check failed on the database: whether training goes on without it.

        Training needs no database between its reports, so a lost connection costs one report, not the attempt and
        the epoch under way; the next opens a fresh connection. Should the database stay away past
        TRAINING_STALE_AFTER_SECONDS, the reaper hands the run over, and this attempt's next write finds it gone.
        """
        if not is_transient(exc) or connection.in_atomic_block:
            return False
        logger.warning("training run %s: %s failed on a lost database connection; training goes on (%s)",
                       self.run_id, what, exc)
        connection_reopen_if_lost()
        self._last_write = self._last_check = time.monotonic() + DATABASE_RETRY_AFTER_S
        return True

    def started(self, *, device: str) -> None:
        self._update(device=device, total_steps=self.steps_per_epoch)

    def progress(self, fraction: float, epoch: int, step: int, eta_seconds: float) -> None:
        if self.hook is not None:
            self.hook(fraction, epoch, step, eta_seconds)
        now = time.monotonic()
        if now - self._last_write < PROGRESS_WRITE_EVERY_S:
            return
        self._last_write = now
        try:
            self._update(
                progress=round(min(max(self.overall(fraction), 0.0), 1.0), 4),
                current_epoch=epoch,
                current_step=step,
                eta_seconds=round(eta_seconds, 1),
            )
        except DatabaseError as exc:
            if not self._training_goes_on(exc, what="its progress report"):
                raise

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
        try:
            row = TrainingRun.objects.filter(pk=self.run_id).values("status", "attempts", "cancel_requested").first()
        except DatabaseError as exc:
            if not self._training_goes_on(exc, what="its cancel check"):
                raise
            return False
        if row is None or row["status"] != TrainingRun.Status.RUNNING or row["attempts"] != self.attempt:
            self.lost = True
            return True
        self._cancel_requested = row["cancel_requested"]
        return self._cancel_requested

    def epoch_end(self, epoch: int, model, optimizer, metrics: dict[str, Any]) -> None:
        try:
            self._epoch_checkpoint_save(epoch=epoch, model=model, optimizer=optimizer, metrics=metrics)
        except DatabaseError as exc:
            # Its file is removed, unregistered: a resume starts from the epoch checkpoint before it.
            if not self._training_goes_on(exc, what=f"registering epoch {epoch}'s checkpoint"):
                raise

    def _epoch_checkpoint_save(self, *, epoch: int, model, optimizer, metrics: dict[str, Any]) -> None:
        if self.claim_lost():
            return
        path = self.file_path(f"epoch-{epoch}.pt")
        digest, _size = checkpoint_file_save(
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
                    # Epochs are judged on the validation set only: the test set is the final model's alone.
                    test_accuracy=None,
                    validation_accuracy=metrics.get("validation_accuracy"),
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
                    validation_accuracy=metrics.get("validation_accuracy"),
                )
            registered = True
        finally:
            if not registered:
                checkpoint_file_remove_unregistered(path=path)
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
