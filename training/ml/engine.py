"""One training epoch and one evaluation pass over in-memory MNIST tensors."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .augment import AugmentConfig, augment_batch
from .data import batch_count, batch_indices, normalize, to_device, to_unit_float


class TrainingCancelled(Exception):
    """Raised inside the training loop when ``should_stop()`` returns true."""


class TrainingDiverged(ArithmeticError):
    """The loss stopped being a finite number (too high a learning rate, usually): the weights are useless."""


@dataclass
class EpochStats:
    """Running averages over one training epoch (on augmented data when enabled); plain cross-entropy, unsmoothed."""

    loss: float
    accuracy: float
    n: int
    steps: int
    seconds: float
    images_per_second: float


@dataclass
class EvalResult:
    """Test-set metrics; ``confusion[true][predicted]`` counts."""

    loss: float
    accuracy: float
    confusion: list[list[int]]
    n: int


def prepare_batch(
    images: torch.Tensor,
    *,
    augment: bool,
    generator: torch.Generator | None = None,
    augment_config: AugmentConfig | None = None,
) -> torch.Tensor:
    """uint8 N x 28 x 28 -> normalised float N x 1 x 28 x 28, augmented if asked."""
    x = to_unit_float(images)
    if augment:
        if generator is None:
            raise ValueError("augmentation needs a generator for reproducibility")
        x = augment_batch(x, generator=generator, config=augment_config)
    return normalize(x)


def train_one_epoch(
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None,
    images: torch.Tensor,
    labels: torch.Tensor,
    batch_size: int,
    device: torch.device,
    generator: torch.Generator,
    augment: bool,
    augment_config: AugmentConfig | None = None,
    label_smoothing: float = 0.0,
    memory_format: torch.memory_format = torch.contiguous_format,
    on_step: Callable[[int, int, torch.Tensor], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> EpochStats:
    """Train for one pass over ``images``/``labels`` (uint8 images, ideally already on ``device``).

    The CPU ``generator`` drives shuffling and augmentation, so a fixed seed gives
    identical weights on CPU. ``on_step(step, total_steps, loss)`` runs after every
    optimiser step (1-based step), ``loss`` the step's loss as a 0-d tensor on ``device``:
    reading it (``float(loss)``) waits for the device, so a callback reads it only when it
    reports it. ``should_stop()`` is polled before every step and a true answer raises
    :class:`TrainingCancelled`.
    """
    count = images.shape[0]
    if count == 0:
        # Else the loss of an empty batch, NaN, would read as a diverging run.
        raise ValueError("no training images to train on")
    model.train()
    images = to_device(images, device)
    labels = to_device(labels, device)
    total_steps = batch_count(count, batch_size=batch_size)
    # Accumulate on device so the loop never waits on a per-step .item() sync.
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    started = time.perf_counter()
    step = 0
    for step, index in enumerate(batch_indices(count, batch_size=batch_size, generator=generator), start=1):
        if should_stop is not None and should_stop():
            raise TrainingCancelled(f"cancelled at step {step} of {total_steps}")
        index = to_device(index, device)
        x = prepare_batch(images[index], augment=augment, generator=generator, augment_config=augment_config)
        x = x.contiguous(memory_format=memory_format)
        y = labels[index]
        logits = model(x)
        loss = F.cross_entropy(logits, y, label_smoothing=label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        with torch.no_grad():
            # Reported without label smoothing, which puts a floor under the optimised loss: comparable with
            # the test loss, which evaluate() computes the same way.
            reported = F.cross_entropy(logits.detach(), y) if label_smoothing else loss.detach()
            loss_sum += reported * y.shape[0]
            correct += (logits.argmax(1) == y).sum()
        if on_step is not None:
            on_step(step, total_steps, reported)
    # Reading the sums waits for the device, so the clock below counts all queued GPU work.
    loss, accuracy = float(loss_sum) / max(count, 1), float(correct) / max(count, 1)
    seconds = time.perf_counter() - started
    return EpochStats(
        loss=loss,
        accuracy=accuracy,
        n=count,
        steps=step,
        seconds=seconds,
        images_per_second=count / seconds if seconds > 0 else 0.0,
    )


@torch.inference_mode()
def predict_logits(*, model: nn.Module, images: torch.Tensor, device: torch.device, batch_size: int = 1000) -> torch.Tensor:
    """Logits for uint8 N x 28 x 28 images (no augmentation), returned on ``device``."""
    model.eval()
    images = to_device(images, device)
    chunks = [model(prepare_batch(images[i : i + batch_size], augment=False)) for i in range(0, images.shape[0], batch_size)]
    return torch.cat(chunks) if chunks else torch.empty(0, 10, device=device)


@torch.inference_mode()
def evaluate(
    *, model: nn.Module, images: torch.Tensor, labels: torch.Tensor, device: torch.device, batch_size: int = 1000
) -> EvalResult:
    """Mean cross-entropy, accuracy and 10x10 confusion matrix over a labelled set."""
    labels = to_device(labels, device)
    logits = predict_logits(model=model, images=images, device=device, batch_size=batch_size)
    n = labels.shape[0]
    if n == 0:
        return EvalResult(loss=0.0, accuracy=0.0, confusion=[[0] * 10 for _ in range(10)], n=0)
    loss = F.cross_entropy(logits.float(), labels, reduction="sum")
    predicted = logits.argmax(1)
    confusion = torch.bincount(labels * 10 + predicted, minlength=100).view(10, 10)
    return EvalResult(
        loss=float(loss) / n,
        accuracy=float((predicted == labels).sum()) / n,
        confusion=confusion.cpu().tolist(),
        n=n,
    )
