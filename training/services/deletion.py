"""Deleting checkpoints, one by one or pruned, never one still needed; their files go once the deletion commits."""
from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings
from django.db import transaction

from training.models import Checkpoint
from training.services.activation import activations_serialise

logger = logging.getLogger(__name__)


class CheckpointInUseError(Exception):
    """A checkpoint asked to be deleted is still needed: active, named by predictions, or its run may resume from it."""

    def __init__(self, reasons: list[str]) -> None:
        super().__init__(" ".join(reasons))
        self.reasons = reasons


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
        activations_serialise()
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
        activations_serialise()
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
