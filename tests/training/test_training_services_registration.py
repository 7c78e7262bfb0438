"""Training services: registering checkpoint files, only ones inside CHECKPOINT_DIR and as written."""
from datetime import timedelta

import pytest
from django.conf import settings
from django.utils import timezone

from training import services
from training.models import Checkpoint

pytestmark = pytest.mark.django_db


def test_registering_a_checkpoint_whose_file_changed_since_it_was_written_is_refused():
    from training.ml.architectures import build_model
    from training.ml.checkpoints import save_checkpoint

    path = settings.CHECKPOINT_DIR / "manual" / "model.pt"
    digest, _size = save_checkpoint(path, model=build_model("mlp", {"hidden": 16}), config=None, epoch=1, metrics={})
    written = path.read_bytes()
    path.write_bytes(written[:-1] + bytes([written[-1] ^ 1]))
    with pytest.raises(services.CheckpointPathError, match="not the .* of the checkpoint written there"):
        services.checkpoint_register(
            path=path, run=None, epoch=1, test_accuracy=None, architecture="mlp", sha256=digest
        )
    assert not Checkpoint.objects.exists()

    path.write_bytes(written)
    checkpoint = services.checkpoint_register(
        path=path, run=None, epoch=1, test_accuracy=None, architecture="mlp", sha256=digest
    )
    assert checkpoint.sha256 == digest


def test_registering_a_file_outside_the_checkpoint_dir_is_refused(tmp_path):
    outside = tmp_path / "elsewhere.pt"
    outside.write_bytes(b"not a model")
    with pytest.raises(services.CheckpointPathError, match="not inside CHECKPOINT_DIR"):
        services.checkpoint_register(path=outside, run=None, epoch=1, test_accuracy=None, architecture="mlp")
    sneaky = settings.CHECKPOINT_DIR / ".." / "elsewhere.pt"
    with pytest.raises(services.CheckpointPathError):
        services.checkpoint_register(path=sneaky, run=None, epoch=1, test_accuracy=None, architecture="mlp")
    assert not Checkpoint.objects.exists()


def test_a_checkpoint_registered_on_a_trainer_whose_clock_is_slow_is_dated_and_listed_by_the_databases_clock(
    make_checkpoint, monkeypatch
):
    right_time = timezone.now
    earlier, _ = make_checkpoint()
    monkeypatch.setattr(timezone, "now", lambda: right_time() - timedelta(hours=3))
    later, _ = make_checkpoint()
    assert abs(later.created_at - right_time()) < timedelta(minutes=1)
    assert list(Checkpoint.objects.values_list("pk", flat=True)) == [later.pk, earlier.pk]
