"""A run's folder of checkpoints: where it lies, writing a checkpoint into it, clearing what killed writes left."""
from __future__ import annotations

import logging
from datetime import UTC
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import DatabaseError

from mnistsite.database_connections import connection_reopen_if_lost
from training.models import Checkpoint, TrainingRun
from training.services.registration import CheckpointPathError

logger = logging.getLogger(__name__)

# A checkpoint is written in seconds, its temp file's time moving with every write: one untouched for this long in a
# run's folder is what a write killed midway left (SIGKILL, a power cut), never removed otherwise.
ABANDONED_TEMP_FILE_AGE_S = 60


def run_dir(run: TrainingRun) -> Path:
    """The run's folder of checkpoints, named after its id and its creation time to the microsecond.

    Every database numbers its runs from 1: a second database sharing CHECKPOINT_DIR (a database volume recreated
    empty, another DATABASE_URL in the same checkout) would otherwise write its run 1 over the first's. The time
    is stored on the row, so every attempt of a run, resumed or not, finds the same folder; checkpoints written
    before are found through the paths their rows store.
    """
    created = run.created_at.astimezone(UTC)
    return Path(settings.CHECKPOINT_DIR) / "runs" / f"{run.pk}-{created:%Y%m%dT%H%M%S%fZ}"


def run_abandoned_temp_files_remove(*, run: TrainingRun) -> None:
    """Remove what writes killed midway left in the run's folder; what is written whole under its name stays.

    Called where no attempt before may still write there usefully: as an attempt starts (the claim took the run from
    every earlier one) and as the reaper gives up on one. A failure to remove is only space kept.
    """
    from training.ml.atomic import abandoned_temp_files_remove

    removed = abandoned_temp_files_remove(run_dir(run), older_than_s=ABANDONED_TEMP_FILE_AGE_S)
    if removed:
        logger.info("training run %s: removed %s temp files of writes killed midway", run.pk, len(removed))


def checkpoint_file_save(*, path: Path, run_id: int, **checkpoint: Any) -> tuple[str, int]:
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


def checkpoint_file_remove_unregistered(*, path: Path) -> None:
    """Remove a checkpoint file that this attempt wrote but whose registration did not go through.

    Kept when a row names it after all: a connection lost as the registration committed leaves the commit unknown to
    the trainer, and the row (of a run recorded as succeeded, its model perhaps made active) must not lose its file.
    Kept too when the database cannot say: a file too many is only space.
    """
    connection_reopen_if_lost()
    relative = path.resolve().relative_to(Path(settings.CHECKPOINT_DIR).resolve()).as_posix()
    try:
        named = Checkpoint.objects.filter(path=relative).exists()
    except DatabaseError:
        logger.warning("could not tell whether checkpoint file %s was registered; keeping it", path, exc_info=True)
        return
    if not named:
        path.unlink(missing_ok=True)
