"""Training recipes (TrainConfig) and the full fit loop: optimiser, schedule, per-epoch validation, resume."""

from __future__ import annotations

import math
import re
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .architectures import build_model
from .augment import AugmentConfig
from .config import TrainConfig
from .data import MnistSplit, batch_count
from .engine import TrainingCancelled, TrainingDiverged, evaluate, train_one_epoch

__all__ = [
    "FitResult",
    "TrainConfig",
    "TrainingCancelled",
    "fit",
    "select_device",
]

ProgressCallback = Callable[[float, int, int, float], None]
EpochEndCallback = Callable[[int, nn.Module, torch.optim.Optimizer, dict[str, Any]], None]


@dataclass
class FitResult:
    """Outcome of :func:`fit`; ``history`` has one dict per epoch (including resumed ones).

    ``final_accuracy``, ``test_loss`` and ``confusion`` are the final model's on the test set, measured once;
    ``validation_*`` are its on the validation set, the numbers models are compared by.
    """

    model: nn.Module
    history: list[dict[str, Any]]
    final_accuracy: float
    test_loss: float
    validation_accuracy: float
    validation_loss: float
    confusion: list[list[int]]
    seconds: float
    images_per_second: float
    epochs_completed: int
    config: TrainConfig


# "cuda" or "cuda:N" with N written as torch writes it: no sign, no leading zero.
_CUDA_NAME = re.compile(r"cuda(?::(0|[1-9][0-9]*))?", re.ASCII)


def select_device(name: str = "auto") -> torch.device:
    """"auto" (CUDA when available), "cpu", "cuda" or "cuda:N"; a device this machine lacks raises ``ValueError``.

    Checked here, before any work: torch accepts "cuda:5" on a machine with one GPU and only fails at the
    first tensor moved there, deep in a run.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    match = _CUDA_NAME.fullmatch(name)
    if match is None:
        raise ValueError(f"unknown device {name!r}; use 'auto', 'cpu', 'cuda' or 'cuda:N'")
    if not torch.cuda.is_available():
        raise ValueError(f"device {name!r} was requested but CUDA is not available on this machine")
    if match.group(1) is not None:
        index, count = int(match.group(1)), torch.cuda.device_count()
        if index >= count:
            have = "cuda:0" if count == 1 else f"cuda:0 to cuda:{count - 1}"
            raise ValueError(
                f"there is no device {name!r}: this machine has {count} CUDA GPU{'s' if count != 1 else ''} ({have})"
            )
    return torch.device(name)


def _make_optimizer(config: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    # Weight decay on BatchNorm scales and biases only hurts, so those are exempt.
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, nesterov=True)
    if config.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=config.lr)
    if config.optimizer == "adam":
        return torch.optim.Adam(groups, lr=config.lr)
    raise ValueError(f"unknown optimizer {config.optimizer!r}")


MOMENTUM_CYCLE_HALF_WIDTH = 0.05


def _make_scheduler(
    config: TrainConfig, optimizer: torch.optim.Optimizer, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LRScheduler | None:
    if config.schedule == "constant":
        return None
    if config.schedule == "onecycle":
        total_steps = config.epochs * steps_per_epoch
        pct_start = config.warmup_fraction
        if pct_start * total_steps < 1:
            # A warm-up shorter than one step has no room to warm up in: torch's schedule then runs from its end, the
            # one step of a one-step run at a thousandth of the rate. Runs that short (a smoke test's) keep the peak.
            return None
        if float(pct_start * total_steps) - 1 == 0:
            # torch ends the warm-up at step pct_start * total_steps - 1 and divides by that phase's length: a warm-up
            # of exactly one step (20% of five) is a phase of length zero, a ZeroDivisionError at the first step. A
            # hair shorter, the rate starts at its peak, as it does for a warm-up shorter than one step.
            pct_start = math.nextafter(pct_start, 0.0)
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer,
            max_lr=config.lr,
            total_steps=total_steps,
            pct_start=pct_start,
            div_factor=10.0,
            final_div_factor=100.0,
            # The schedule cycles momentum (Adam's beta1) against the rate, by default between 0.85 and 0.95
            # whatever the optimizer was given: centred on the config's, so that ``momentum`` means something.
            base_momentum=max(config.momentum - MOMENTUM_CYCLE_HALF_WIDTH, 0.0),
            max_momentum=min(config.momentum + MOMENTUM_CYCLE_HALF_WIDTH, 0.999),
        )
    raise ValueError(f"unknown schedule {config.schedule!r}")


def _seed_epoch(seed: int, epoch: int) -> torch.Generator:
    # Seeding per epoch (the batch/augment generator and the global RNG dropout uses) makes a
    # resumed run draw exactly what an uninterrupted one would.
    epoch_seed = seed * 1_000_003 + epoch
    torch.manual_seed(epoch_seed)
    return torch.Generator().manual_seed(epoch_seed)


def _diverged(what: str, *, config: TrainConfig) -> TrainingDiverged:
    return TrainingDiverged(f"{what}; lower the learning rate (it was {config.lr:g})")


def _all_finite(model: nn.Module) -> bool:
    """Whether every floating-point parameter and buffer of ``model`` is finite; one device sync in all."""
    checks = [torch.isfinite(t).all() for t in model.state_dict().values() if t.is_floating_point()]
    return bool(torch.stack(checks).all()) if checks else True


def fit(
    *,
    config: TrainConfig,
    train: MnistSplit,
    validation: MnistSplit,
    test: MnistSplit,
    device: torch.device,
    on_progress: ProgressCallback | None = None,
    should_stop: Callable[[], bool] | None = None,
    on_epoch_end: EpochEndCallback | None = None,
    resume_from: Mapping[str, Any] | None = None,
) -> FitResult:
    """Train ``config.arch`` on ``train``, evaluating on ``validation`` after every epoch and on ``test`` once.

    ``validation`` must be held out of ``train`` (``data.split_validation``): each epoch's row and checkpoint are
    judged by it. ``test`` is evaluated on the final model only, so nothing is ever chosen by it and its accuracy
    stays an unbiased estimate.

    Seeds torch's global RNG from ``config.seed`` (per epoch), so a run is
    reproducible on CPU; thread count is left to the caller.

    - ``on_progress(fraction, epoch, step, eta_seconds)``: at most every
      ``config.progress_interval_s`` and at each epoch's last step (epoch/step 1-based).
    - ``should_stop()``: polled before every step; true raises :class:`TrainingCancelled`.
    - A loss, or after an epoch weights or a validation loss, that is no finite number raises
      :class:`TrainingDiverged`, the loss checked as often as progress is reported.
    - ``on_epoch_end(epoch, model, optimizer, metrics)``: ``metrics`` is this epoch's
      row plus ``"history"`` (all rows so far); saving it as a checkpoint's metrics
      (with the optimizer state) makes that checkpoint resumable.
    - ``resume_from``: a checkpoint payload (``load_checkpoint(...)[1]``) with
      ``state_dict``, ``epoch`` and optionally ``optimizer`` and ``metrics["history"]``.
    """
    device = torch.device(device)
    if len(train) == 0:
        raise ValueError("no training images to train on")
    torch.manual_seed(config.seed)
    model = build_model(config.arch, config.model).to(device)
    memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
    model = model.to(memory_format=memory_format)
    train_dev, validation_dev = train.to(device), validation.to(device)
    steps_per_epoch = batch_count(len(train_dev), batch_size=config.batch_size)
    optimizer = _make_optimizer(config, model)
    scheduler = _make_scheduler(config, optimizer, steps_per_epoch)
    augment_config = AugmentConfig(**config.augmentation)

    start_epoch = 0
    history: list[dict[str, Any]] = []
    if resume_from is not None:
        model.load_state_dict(resume_from["state_dict"], strict=True)
        start_epoch = int(resume_from["epoch"])
        history = list((resume_from.get("metrics") or {}).get("history", []))
        if scheduler is not None:
            # The schedule is a pure function of the step count, so replaying it is exact.
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                for _ in range(start_epoch * steps_per_epoch):
                    scheduler.step()
        if resume_from.get("optimizer") is not None:
            optimizer.load_state_dict(resume_from["optimizer"])

    total_steps = max(config.epochs - start_epoch, 0) * steps_per_epoch
    started = time.perf_counter()
    last_report = -math.inf
    done_before_epoch = 0
    train_seconds = 0.0
    trained_images = 0
    validated = None

    for epoch in range(start_epoch + 1, config.epochs + 1):
        epoch_started = time.perf_counter()

        def on_step(step: int, steps: int, loss: torch.Tensor, *, _epoch: int = epoch) -> None:
            nonlocal last_report
            now = time.perf_counter()
            if now - last_report < config.progress_interval_s and step != steps:
                return
            last_report = now
            # Read only as often as progress is reported (reading waits for the device): weights gone NaN stay NaN,
            # and the rest of the epoch would only be time lost.
            value = float(loss)
            if not math.isfinite(value):
                raise _diverged(f"the training loss became {value} at step {step} of epoch {_epoch}", config=config)
            if on_progress is None:
                return
            done = done_before_epoch + step
            eta = (now - started) / done * (total_steps - done)
            on_progress(done / total_steps, _epoch, step, eta)

        stats = train_one_epoch(
            model=model,
            optimizer=optimizer,
            scheduler=scheduler,
            images=train_dev.images,
            labels=train_dev.labels,
            batch_size=config.batch_size,
            device=device,
            generator=_seed_epoch(config.seed, epoch),
            augment=config.augment,
            augment_config=augment_config,
            label_smoothing=config.label_smoothing,
            memory_format=memory_format,
            on_step=on_step,
            should_stop=should_stop,
        )
        # Before the epoch's checkpoint: a model of NaN weights must never be saved, let alone served.
        if not math.isfinite(stats.loss):
            raise _diverged(f"the training loss became {stats.loss} in epoch {epoch}", config=config)
        # The epoch's loss was computed before each step, so the last step's weights are checked themselves.
        if not _all_finite(model):
            raise _diverged(f"the weights stopped being finite numbers in epoch {epoch}", config=config)
        done_before_epoch += stats.steps
        train_seconds += stats.seconds
        trained_images += stats.n
        validated = evaluate(
            model=model, images=validation_dev.images, labels=validation_dev.labels, device=device,
            batch_size=config.eval_batch_size,
        )
        # Finite but huge weights can still overflow the logits.
        if not math.isfinite(validated.loss):
            raise _diverged(f"the validation loss became {validated.loss} in epoch {epoch}", config=config)
        row = {
            "epoch": epoch,
            "train_loss": stats.loss,
            "train_accuracy": stats.accuracy,
            "validation_loss": validated.loss,
            "validation_accuracy": validated.accuracy,
            "images_per_second": stats.images_per_second,
            "seconds": time.perf_counter() - epoch_started,
            "lr": optimizer.param_groups[0]["lr"],
        }
        history.append(row)
        if on_epoch_end is not None:
            on_epoch_end(epoch, model, optimizer, {**row, "history": [dict(r) for r in history]})

    if validated is None:
        # Resumed with no epoch left to train: the checkpoint's model is the final one.
        validated = evaluate(
            model=model, images=validation_dev.images, labels=validation_dev.labels, device=device,
            batch_size=config.eval_batch_size,
        )
    test_dev = test.to(device)
    result = evaluate(
        model=model, images=test_dev.images, labels=test_dev.labels, device=device, batch_size=config.eval_batch_size
    )
    return FitResult(
        model=model,
        history=history,
        final_accuracy=result.accuracy,
        test_loss=result.loss,
        validation_accuracy=validated.accuracy,
        validation_loss=validated.loss,
        confusion=result.confusion,
        seconds=time.perf_counter() - started,
        images_per_second=trained_images / train_seconds if train_seconds > 0 else 0.0,
        epochs_completed=max(config.epochs, start_epoch),
        config=config,
    )
