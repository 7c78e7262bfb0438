"""Fixtures for the training tests: tiny recipes and checkpoints made without a training loop."""
import pytest
from django.conf import settings

TINY = dict(architecture="mlp", epochs=1, batch_size=50, learning_rate=1e-3, seed=0, augment=False, train_subset=300)


@pytest.fixture
def tiny_recipe() -> dict:
    return dict(TINY)


@pytest.fixture
def make_checkpoint(db):
    """Save an untrained MLP as a registered checkpoint; returns (checkpoint, model)."""
    from training.ml.architectures import build_model
    from training.ml.checkpoints import save_checkpoint
    from training.services import checkpoint_register

    counter = {"n": 0}

    def make(*, activate: bool = False, accuracy: float = 0.5):
        counter["n"] += 1
        model = build_model("mlp", {"hidden": 16}).eval()
        path = settings.CHECKPOINT_DIR / "manual" / f"model-{counter['n']}.pt"
        save_checkpoint(path, model=model, config=None, epoch=1, metrics={"test_accuracy": accuracy})
        checkpoint = checkpoint_register(
            path=path, run=None, epoch=1, test_accuracy=accuracy, architecture="mlp", activate=activate
        )
        return checkpoint, model

    return make
