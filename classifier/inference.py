"""The per-process model cache and batch prediction of PIL images with the active checkpoint."""
from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch
from django.conf import settings
from PIL import Image

from classifier.statements import checkpoint_unchanged
from training.loading import checkpoint_load_model
from training.ml.preprocess import EmptyImageError, Interrupts, Prepared, prepare_batch, to_tensor, to_uint8
from training.ml.serving import inference_model
from training.models import Checkpoint
from training.selectors import checkpoint_get, checkpoint_get_active

logger = logging.getLogger(__name__)

__all__ = [
    "DigitResult",
    "EmptyImageError",
    "LoadedModel",
    "NoActiveCheckpointError",
    "TorchDeviceError",
    "model_for_active_checkpoint",
    "model_for_checkpoint",
    "model_for_checkpoint_id",
    "predict_images",
    "torch_device",
    "torch_device_check",
]


class NoActiveCheckpointError(Exception):
    """No checkpoint has been activated yet, so there is nothing to predict with."""


@dataclass(frozen=True)
class LoadedModel:
    checkpoint_id: int
    # The digest of the file it was loaded from: a database recreated or restored under a running worker can give
    # the same id to another model.
    sha256: str
    model: torch.nn.Module
    device: torch.device


@dataclass(frozen=True)
class DigitResult:
    digit: int
    confidence: float
    probabilities: list[float]
    # The 28x28 uint8 picture the model actually saw, row by row.
    input_pixels: bytes
    compute_ms: float
    several_digits: bool = False


_lock = threading.Lock()
_cached: LoadedModel | None = None
_threads_configured = False


def _configure_threads() -> None:
    global _threads_configured
    if not _threads_configured:
        torch.set_num_threads(settings.TORCH_NUM_THREADS)
        _threads_configured = True


# PyTorch's NVML-based availability check is the one documented not to initialise CUDA (so not to spoil forks).
_NVML_CHECK = "PYTORCH_NVML_BASED_CUDA_CHECK"


class TorchDeviceError(Exception):
    """TORCH_DEVICE asks for a GPU that PyTorch cannot see on this host."""


def torch_device_check() -> None:
    """Refuse TORCH_DEVICE=cuda where PyTorch sees no GPU, without initialising CUDA in this process.

    A worker runs this before its pool forks: a parent that had initialised CUDA
    would leave its children unable to use the GPU at all.
    """
    if settings.TORCH_DEVICE != "cuda":
        return
    saved = os.environ.get(_NVML_CHECK)
    os.environ[_NVML_CHECK] = "1"
    try:
        available = torch.cuda.is_available()
    finally:
        if saved is None:
            del os.environ[_NVML_CHECK]
        else:
            os.environ[_NVML_CHECK] = saved
    if not available:
        raise TorchDeviceError(
            "TORCH_DEVICE is cuda, but PyTorch sees no CUDA GPU on this host "
            f"(PyTorch {torch.__version__}, built for CUDA {torch.version.cuda or 'none'}). "
            "Give this worker a GPU, or set TORCH_DEVICE to auto or cpu."
        )


def torch_device() -> torch.device:
    """The device from settings; "auto" asks CUDA only here, inside the process that will use it."""
    choice = settings.TORCH_DEVICE
    if choice == "cuda" or (choice == "auto" and torch.cuda.is_available()):
        return torch.device("cuda")
    return torch.device("cpu")


def model_for_checkpoint(*, checkpoint: Checkpoint) -> LoadedModel:
    """The checkpoint's model, loaded at most once per process while it stays the one asked for."""
    global _cached
    with _lock:
        if _cached is not None and (_cached.checkpoint_id, _cached.sha256) == (checkpoint.pk, checkpoint.sha256):
            return _cached
        _configure_threads()
        device = torch_device()
        started = time.perf_counter()
        model = inference_model(checkpoint_load_model(checkpoint=checkpoint, device=device))
        previous = _cached
        _cached = LoadedModel(checkpoint_id=checkpoint.pk, sha256=checkpoint.sha256, model=model, device=device)
        logger.info(
            "loaded checkpoint %s on %s in %.0f ms (replacing %s)",
            checkpoint.pk,
            device,
            (time.perf_counter() - started) * 1000,
            previous.checkpoint_id if previous else None,
        )
        return _cached


def model_forget(*, checkpoint_id: int) -> None:
    """Drop this checkpoint's cached model (it failed in use), so that the next prediction loads it afresh."""
    global _cached
    with _lock:
        if _cached is not None and _cached.checkpoint_id == checkpoint_id:
            _cached = None


_NO_ACTIVE_CHECKPOINT = "No trained model is active yet; an administrator must activate a checkpoint."


def model_for_active_checkpoint() -> tuple[Checkpoint, LoadedModel]:
    """One cheap query per call decides whether the cached model is still the active one."""
    checkpoint = checkpoint_get_active()
    if checkpoint is None:
        raise NoActiveCheckpointError(_NO_ACTIVE_CHECKPOINT)
    return checkpoint, model_for_checkpoint(checkpoint=checkpoint)


def model_for_checkpoint_id(*, checkpoint_id: int | None, sha256: str | None = None) -> LoadedModel:
    """The model of a checkpoint the caller found active, with the sha256 it read with the id (else one query).

    The id alone is not enough: a database recreated empty or restored from a dump under a running worker gives
    the same id to another model, and the held model's answers would be recorded as that one's. Raises
    Checkpoint.DoesNotExist when the row is gone (deleted since the caller found it active).
    """
    if checkpoint_id is None:
        raise NoActiveCheckpointError(_NO_ACTIVE_CHECKPOINT)
    cached = _cached
    if cached is not None and cached.checkpoint_id == checkpoint_id:
        if sha256 is None:
            if checkpoint_unchanged(checkpoint_id=checkpoint_id, sha256=cached.sha256):
                return cached
        elif sha256 == cached.sha256:
            return cached
    return model_for_checkpoint(checkpoint=checkpoint_get(checkpoint_id=checkpoint_id))


def predict_images(
    *, loaded: LoadedModel, images: Iterable[Image.Image], interrupts: Interrupts = ()
) -> list[DigitResult | Exception]:
    """Predict many images in one forward pass; an image that cannot be preprocessed gets its exception instead.

    ``images`` is read once, in order, and no image is kept after its preprocessing. ``interrupts`` are
    raised as they come, never taken for an image's failure (see :func:`prepare_batch`).
    """
    _configure_threads()
    started = time.perf_counter()
    prepared = prepare_batch(images, interrupts=interrupts)
    ready = [index for index, p in enumerate(prepared) if isinstance(p, Prepared)]
    results: list[DigitResult | Exception | None] = [p if isinstance(p, Exception) else None for p in prepared]
    if ready:
        inputs = np.stack([prepared[index].pixels for index in ready])
        with torch.inference_mode():
            logits = loaded.model(to_tensor(inputs).to(loaded.device))
            probabilities = torch.softmax(logits.float(), dim=1).cpu().numpy().astype(np.float64)
        # Renormalise in float64 so the stored ten numbers sum to 1 within rounding.
        probabilities /= probabilities.sum(axis=1, keepdims=True)
        pictures = to_uint8(inputs)
        per_image_ms = (time.perf_counter() - started) * 1000 / len(ready)
        for index, row, picture in zip(ready, probabilities, pictures, strict=True):
            digit = int(row.argmax())
            results[index] = DigitResult(
                digit=digit,
                confidence=float(row[digit]),
                probabilities=row.tolist(),
                input_pixels=picture.tobytes(),
                compute_ms=per_image_ms,
                several_digits=prepared[index].several_digits,
            )
    return results  # type: ignore[return-value]
