"""Atomic, hash-verified model checkpoints that load with ``torch.load(weights_only=True)``."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import __version__
from .architectures import model_config, model_from_config
from .atomic import atomic_write_bytes

CHECKPOINT_FORMAT = "mnistsite-checkpoint"
CHECKPOINT_FORMAT_VERSION = 1
_REQUIRED_KEYS = ("format", "format_version", "model_config", "state_dict", "epoch")


class CheckpointError(Exception):
    """A checkpoint is missing, altered, corrupt, unsafe or does not fit its model."""


def _to_cpu(value: Any) -> Any:
    # GPU or channels_last tensors are stored as plain CPU tensors so any host can load them.
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().contiguous()
    if isinstance(value, dict):
        return {k: _to_cpu(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_to_cpu(v) for v in value)
    return value


def _config_mismatches(config: dict[str, Any], state_dict: dict[str, Any]) -> list[str]:
    """How the weights ``config`` builds differ from ``state_dict`` by name and shape; empty when they fit.

    The model is built on the meta device: shapes without memory or initialisation, so checking costs no copy.
    """
    try:
        with torch.device("meta"):
            rebuilt = model_from_config(dict(config)).state_dict()
    except (TypeError, ValueError) as exc:
        return [f"cannot build a model from the config ({exc})"]
    problems = [f"the config's model needs {key!r}, which this model lacks" for key in rebuilt if key not in state_dict]
    problems += [f"this model's {key!r} has no place in the config's model" for key in state_dict if key not in rebuilt]
    for key, tensor in state_dict.items():
        if key in rebuilt and tuple(tensor.shape) != tuple(rebuilt[key].shape):
            problems.append(f"{key!r} has shape {tuple(tensor.shape)} here, {tuple(rebuilt[key].shape)} by the config")
    return problems


def save_checkpoint(
    path: Path,
    *,
    model: nn.Module,
    config: dict[str, Any] | None,
    epoch: int,
    metrics: dict[str, Any],
    optimizer: torch.optim.Optimizer | None = None,
    extra: dict[str, Any] | None = None,
    overwrite: bool = True,
) -> tuple[str, int]:
    """Write a checkpoint atomically and return ``(sha256 hex, size in bytes)``.

    With ``overwrite`` false, a file already at ``path`` is kept and FileExistsError
    raised, in the same step as the write.

    ``config`` is the ``{"arch": ..., **fields}`` dict from :func:`model_config`
    (derived from ``model`` when ``None``). ``metrics`` and ``extra`` must hold only
    plain data (numbers, strings, lists, dicts, tensors) so that a
    ``weights_only`` load can read them back.

    An explicit ``config`` that cannot rebuild ``model``'s weights (names and
    shapes) raises ``ValueError`` and writes nothing: such a file would only
    fail when loaded.
    """
    state_dict = model.state_dict()
    if config is not None and (problems := _config_mismatches(config, state_dict)):
        shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
        raise ValueError(f"refusing to save {Path(path).name}: its model config does not fit the model: {shown}")
    payload = {
        "format": CHECKPOINT_FORMAT,
        "format_version": CHECKPOINT_FORMAT_VERSION,
        "model_config": dict(config) if config is not None else model_config(model),
        "state_dict": _to_cpu(state_dict),
        "epoch": int(epoch),
        "metrics": dict(metrics),
        "optimizer": _to_cpu(optimizer.state_dict()) if optimizer is not None else None,
        "extra": dict(extra or {}),
        "torch_version": str(torch.__version__),
        "project_version": __version__,
    }
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    data = buffer.getvalue()
    digest = atomic_write_bytes(Path(path), data, overwrite=overwrite)
    return digest, len(data)


def load_checkpoint(
    path: Path, *, expected_sha256: str, device: str | torch.device = "cpu"
) -> tuple[nn.Module, dict[str, Any]]:
    """Verify, load and rebuild: returns ``(model in eval mode on device, payload dict on the CPU)``.

    The file's sha256 is checked before any byte is deserialised, deserialising
    uses ``weights_only=True`` (no arbitrary code), and the model is only returned
    after a strict ``load_state_dict`` succeeded. Every failure raises
    :class:`CheckpointError`.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {path} does not exist") from None
    except OSError as exc:
        raise CheckpointError(f"checkpoint {path} cannot be read: {exc}") from exc
    actual = hashlib.sha256(data).hexdigest()
    if actual != expected_sha256.lower():
        raise CheckpointError(
            f"checkpoint {path.name} sha256 {actual} does not match expected {expected_sha256}; refusing to load"
        )
    try:
        # Always onto the CPU first: a missing GPU then shows as such below, not as a corrupt file.
        payload = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - truncation, corruption and unsafe globals all land here
        raise CheckpointError(f"checkpoint {path.name} is corrupt or contains disallowed objects: {exc}") from exc
    if not isinstance(payload, dict) or any(key not in payload for key in _REQUIRED_KEYS):
        raise CheckpointError(f"checkpoint {path.name} lacks the keys {list(_REQUIRED_KEYS)}")
    if payload["format"] != CHECKPOINT_FORMAT or payload["format_version"] != CHECKPOINT_FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint {path.name} has format {payload['format']!r} v{payload['format_version']!r}, "
            f"expected {CHECKPOINT_FORMAT!r} v{CHECKPOINT_FORMAT_VERSION}"
        )
    try:
        model = model_from_config(payload["model_config"])
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"checkpoint {path.name} has an invalid model config: {exc}") from exc
    try:
        model.load_state_dict(payload["state_dict"], strict=True)
    except (RuntimeError, TypeError, AttributeError) as exc:
        raise CheckpointError(f"checkpoint {path.name} weights do not fit its model: {exc}") from exc
    return model.to(device).eval(), payload
