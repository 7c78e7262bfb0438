"""Loading a registered checkpoint into a ready-to-use model, its file verified against the database hash."""
from __future__ import annotations

import torch

from training.models import Checkpoint
from training.selectors import checkpoint_file_path


def checkpoint_load_model(*, checkpoint: Checkpoint, device: torch.device | str = "cpu") -> torch.nn.Module:
    """The checkpoint's model in eval mode on ``device``.

    Raises ``training.ml.checkpoints.CheckpointError`` when the file is missing,
    corrupt, or its sha256 differs from the one recorded at registration.
    """
    from training.ml.checkpoints import load_checkpoint

    model, _payload = load_checkpoint(
        checkpoint_file_path(checkpoint=checkpoint), expected_sha256=checkpoint.sha256, device=device
    )
    return model
