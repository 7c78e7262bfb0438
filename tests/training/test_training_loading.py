"""Registered checkpoints load back verified: round trip, corruption and hash mismatch."""
import pytest
import torch
from django.conf import settings

from training.loading import checkpoint_load_model
from training.ml.checkpoints import CheckpointError
from training.selectors import checkpoint_file_path


def test_a_registered_checkpoint_loads_back_the_same_model_in_eval_mode(make_checkpoint):
    checkpoint, original = make_checkpoint()
    loaded = checkpoint_load_model(checkpoint=checkpoint, device="cpu")
    x = torch.rand(4, 1, 28, 28)
    assert not loaded.training
    assert torch.equal(loaded(x), original(x))


def test_a_checkpoint_with_flipped_bytes_is_refused(make_checkpoint):
    checkpoint, _ = make_checkpoint()
    path = checkpoint_file_path(checkpoint=checkpoint)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="sha256"):
        checkpoint_load_model(checkpoint=checkpoint, device="cpu")


def test_a_checkpoint_whose_recorded_hash_differs_is_refused(make_checkpoint):
    checkpoint, _ = make_checkpoint()
    checkpoint.sha256 = "0" * 64
    with pytest.raises(CheckpointError, match="does not match"):
        checkpoint_load_model(checkpoint=checkpoint, device="cpu")


def test_a_missing_checkpoint_file_is_a_clear_error(make_checkpoint):
    checkpoint, _ = make_checkpoint()
    checkpoint_file_path(checkpoint=checkpoint).unlink()
    with pytest.raises(CheckpointError, match="does not exist"):
        checkpoint_load_model(checkpoint=checkpoint, device="cpu")


def test_a_stored_path_escaping_the_checkpoint_dir_is_refused(make_checkpoint):
    checkpoint, _ = make_checkpoint()
    checkpoint.path = "../../etc/passwd"
    with pytest.raises(ValueError, match="outside CHECKPOINT_DIR"):
        checkpoint_load_model(checkpoint=checkpoint, device="cpu")
    assert settings.CHECKPOINT_DIR.is_dir()
