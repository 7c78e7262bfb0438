"""Registering a checkpoint file that lies inside CHECKPOINT_DIR and is the file written, with its sha256 and size."""
from __future__ import annotations

from pathlib import Path

from django.conf import settings
from django.db import transaction

from training.ml.atomic import sha256_file
from training.models import Checkpoint, TrainingRun
from training.services.activation import checkpoint_activate


class CheckpointPathError(ValueError):
    """A checkpoint file lies outside CHECKPOINT_DIR, is no file, is not the file written, or is another run's."""


def checkpoint_register(
    *,
    path: Path,
    run: TrainingRun | None,
    epoch: int,
    test_accuracy: float | None,
    architecture: str,
    validation_accuracy: float | None = None,
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
                "validation_accuracy": validation_accuracy,
                "is_final": is_final,
            },
        )
        if activate:
            checkpoint = checkpoint_activate(checkpoint=checkpoint)
    return checkpoint
