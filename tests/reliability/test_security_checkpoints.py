"""Checkpoint files are data, never code: pickles, altered files and escaping paths are refused."""
import os
import pickle
import shutil
from pathlib import Path

import pytest
import torch
from django.conf import settings

from training.loading import checkpoint_load_model
from training.ml.checkpoints import CheckpointError
from training.models import Checkpoint
from training.selectors import checkpoint_file_path
from training.services import CheckpointPathError, checkpoint_register


class _Touch:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _register(path: Path) -> Checkpoint:
    return checkpoint_register(path=path, run=None, epoch=1, test_accuracy=None, architecture="mlp")


@pytest.mark.parametrize("container", ["raw pickle", "torch.save zip"])
def test_a_registered_checkpoint_carrying_a_pickle_payload_is_refused_and_never_executed(db, tmp_path, container):
    marker = tmp_path / "pwned"
    target = Path(settings.CHECKPOINT_DIR) / "evil.pt"
    payload = {"format": "mnistsite-checkpoint", "format_version": 1, "epoch": 1, "state_dict": _Touch(str(marker)),
               "model_config": {"arch": "mlp"}}
    if container == "raw pickle":
        target.write_bytes(pickle.dumps(payload))
    else:
        torch.save(payload, target)
    # Registered with its true sha256, as if an attacker could write into CHECKPOINT_DIR: the hash alone is not trust.
    checkpoint = _register(target)

    with pytest.raises(CheckpointError, match="corrupt or contains disallowed objects"):
        checkpoint_load_model(checkpoint=checkpoint)
    assert not marker.exists()


def test_a_checkpoint_whose_bytes_differ_from_the_registered_sha256_is_refused(db, trained_model_file, always_seven_model_file):
    target = Path(settings.CHECKPOINT_DIR) / "model.pt"
    shutil.copyfile(trained_model_file, target)
    checkpoint = _register(target)
    checkpoint_load_model(checkpoint=checkpoint)  # the genuine file loads

    # Swapped for another perfectly valid checkpoint: still refused, because it is not the registered one.
    shutil.copyfile(always_seven_model_file, target)
    with pytest.raises(CheckpointError, match="does not match"):
        checkpoint_load_model(checkpoint=checkpoint)


@pytest.mark.parametrize("stored_path", ["../../etc/passwd", "/etc/passwd", "runs/../../outside.pt"])
def test_a_checkpoint_path_escaping_the_checkpoint_dir_never_reaches_the_loader(db, stored_path, tmp_path):
    # A row edited in the database (or a crafted admin input) pointing outside CHECKPOINT_DIR.
    checkpoint = Checkpoint.objects.create(path=stored_path, epoch=1, architecture="mlp", sha256="0" * 64, size=1)
    with pytest.raises(ValueError, match="outside CHECKPOINT_DIR"):
        checkpoint_file_path(checkpoint=checkpoint)
    with pytest.raises(ValueError, match="outside CHECKPOINT_DIR"):
        checkpoint_load_model(checkpoint=checkpoint)


def test_registering_a_file_outside_the_checkpoint_dir_is_refused(db, trained_model_file):
    with pytest.raises(CheckpointPathError):
        _register(trained_model_file)  # lives in a pytest temp folder, not CHECKPOINT_DIR
    with pytest.raises(CheckpointPathError):
        _register(Path(settings.CHECKPOINT_DIR) / ".." / "media")
    assert not Checkpoint.objects.exists()


def test_no_api_request_can_choose_a_checkpoint_file(staff_user, client):
    # Checkpoints are created only by training; the API offers no field or endpoint taking a path.
    from api.serializers import TrainingRunCreateSerializer
    from training.models import TrainingRun

    client.force_login(staff_user)
    assert client.post("/api/v1/checkpoints/", {"path": "../../etc/passwd"}, content_type="application/json"
                       ).status_code == 405
    body = {"path": "../../etc/passwd", "checkpoint": "../../etc/passwd", "architecture": "mlp", "epochs": 1,
            "batch_size": 8, "learning_rate": 0.01}
    response = client.post("/api/v1/training-runs/", body, content_type="application/json")
    assert response.status_code == 202, response.content[:300]
    run = TrainingRun.objects.get()
    assert "etc/passwd" not in str(TrainingRun.objects.filter(pk=run.pk).values().get())
    # No writable field of the one endpoint that creates anything names a file.
    writable = {name for name, field in TrainingRunCreateSerializer().fields.items() if not field.read_only}
    assert not {name for name in writable if "path" in name or "file" in name or "checkpoint" in name}
