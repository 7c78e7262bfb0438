"""Fixtures for the training tests: tiny recipes, checkpoints made without a training loop, a diverged run, killed writes."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from django.conf import settings

from tests.processes import REPO

TINY = dict(architecture="mlp", epochs=1, batch_size=50, learning_rate=1e-3, seed=0, augment=False, train_subset=300)


@pytest.fixture
def tiny_recipe() -> dict:
    return dict(TINY)


# Far above the most a new run may ask for (10): what a run stored before that limit, or through the shell, may hold.
# The CNN's loss turns NaN within its first epoch at this rate.
DIVERGING_LEARNING_RATE = 1e6


def train_a_diverging_run():
    """A CNN run trained by the trainer's own service at a rate that makes its loss diverge; returns it, reloaded."""
    from training import services
    from training.models import TrainingRun

    run = services.training_run_create(created_by=None, enqueue=False, **{**TINY, "architecture": "cnn", "device": "cpu"})
    TrainingRun.objects.filter(pk=run.pk).update(learning_rate=DIVERGING_LEARNING_RATE)
    services.training_run_execute(run_id=run.pk)
    run.refresh_from_db()
    return run


@pytest.fixture
def diverged_run(db):
    return train_a_diverging_run()


@pytest.fixture
def make_checkpoint(db):
    """Save an untrained MLP as a registered checkpoint; returns (checkpoint, model)."""
    from training.ml.architectures import build_model
    from training.ml.checkpoints import save_checkpoint
    from training.services import checkpoint_register

    counter = {"n": 0}

    def make(*, activate: bool = False, accuracy: float | None = 0.5, validation_accuracy: float | None = None):
        counter["n"] += 1
        model = build_model("mlp", {"hidden": 16}).eval()
        path = settings.CHECKPOINT_DIR / "manual" / f"model-{counter['n']}.pt"
        save_checkpoint(path, model=model, config=None, epoch=1, metrics={"test_accuracy": accuracy})
        checkpoint = checkpoint_register(
            path=path, run=None, epoch=1, test_accuracy=accuracy, validation_accuracy=validation_accuracy,
            architecture="mlp", activate=activate,
        )
        return checkpoint, model

    return make


@pytest.fixture
def make_run_with_checkpoints(db, tiny_recipe):
    """A run in ``status`` with epoch checkpoints 1..``epochs`` (and a final one if asked), written as a trainer does.

    Returns (run, {"epoch-1": checkpoint, ..., "final": checkpoint}).
    """
    from training import services
    from training.ml.architectures import build_model
    from training.ml.checkpoints import save_checkpoint
    from training.models import TrainingRun

    def make(*, status: str, epochs: int = 3, final: bool = False):
        run = services.training_run_create(created_by=None, enqueue=False, **{**tiny_recipe, "epochs": epochs})
        TrainingRun.objects.filter(pk=run.pk).update(status=status)
        run.refresh_from_db()
        model = build_model("mlp", {"hidden": 16}).eval()
        names = [(f"epoch-{epoch}", epoch, False) for epoch in range(1, epochs + 1)]
        names += [("final", epochs, True)] if final else []
        checkpoints = {}
        for name, epoch, is_final in names:
            path = services.run_files.run_dir(run) / "attempt-1" / f"{name}.pt"
            digest, _size = save_checkpoint(path, model=model, config=None, epoch=epoch, metrics={})
            checkpoints[name] = services.checkpoint_register(
                path=path, run=run, epoch=epoch, test_accuracy=0.5, architecture="mlp", is_final=is_final,
                sha256=digest,
            )
        return run, checkpoints

    return make


@pytest.fixture
def predict_with(db, user):
    """Record a prediction made with a checkpoint, as a worker stores one."""
    from classifier.models import Prediction, Upload

    def predict(checkpoint):
        upload = Upload.objects.create(
            owner=user, original_name="d.png", format="PNG", size=1, width=28, height=28, sha256="0" * 64,
            source=Upload.Source.API, image="uploads/d.png",
        )
        return Prediction.objects.create(upload=upload, checkpoint=checkpoint, status=Prediction.Status.DONE, digit=3)

    return predict


# Writes half a file through atomic_writer, says so, and waits to be killed.
_KILLED_WRITER = """
import sys, time
from pathlib import Path
from training.ml.atomic import atomic_writer
with atomic_writer(Path(sys.argv[1])) as handle:
    handle.write(b"half a checkpoint")
    handle.flush()
    print("written", flush=True)
    time.sleep(600)
"""


@pytest.fixture
def killed_write():
    """Start writing ``path`` atomically in another process and SIGKILL it midway; returns the temp file left behind.

    The file's time is set ``age_s`` back, as it would be that long after the kill.
    """

    def kill(path: Path, *, age_s: float = 0.0) -> Path:
        writer = subprocess.Popen(
            [sys.executable, "-c", _KILLED_WRITER, str(path)], cwd=REPO, stdout=subprocess.PIPE, text=True
        )
        try:
            assert writer.stdout.readline().strip() == "written"
        finally:
            writer.send_signal(signal.SIGKILL)
            writer.wait(timeout=30)
            writer.stdout.close()
        [left] = path.parent.glob(f".{path.name}.*.part")
        assert left.read_bytes() == b"half a checkpoint" and not path.exists()
        if age_s:
            then = time.time() - age_s
            os.utime(left, (then, then))
        return left

    return kill
