"""Read-only queries for training runs and checkpoints."""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

from django.conf import settings
from django.db.models import (
    Case, Count, DurationField, Exists, ExpressionWrapper, F, Min, OuterRef, Q, QuerySet, Subquery, When,
)
from django.db.models.functions import Coalesce

from mnistsite.database_now import Now
from training.models import Checkpoint, TrainingRun


def checkpoint_get_active() -> Checkpoint | None:
    return Checkpoint.objects.filter(is_active=True).first()


def checkpoint_get(*, checkpoint_id: int) -> Checkpoint:
    return Checkpoint.objects.select_related("run").get(pk=checkpoint_id)


def checkpoint_list() -> QuerySet[Checkpoint]:
    return Checkpoint.objects.select_related("run")


@dataclass(frozen=True)
class AccuracyComparison:
    """Two checkpoints' accuracies of one kind, ``"validation"`` or ``"test"``, the first's first."""

    kind: str
    accuracy: float
    other_accuracy: float

    @property
    def is_below(self) -> bool:
        return self.accuracy < self.other_accuracy


def checkpoint_accuracies_compared(*, checkpoint: Checkpoint, other: Checkpoint) -> AccuracyComparison | None:
    """The accuracies to choose between two checkpoints by; None when they share none.

    Validation accuracies when both have one: the test set must never pick a model, or its accuracy stops being an
    unbiased estimate. Checkpoints from before the validation split have only a test accuracy, and are compared
    by that, as they always were.
    """
    for kind in ("validation", "test"):
        accuracy, other_accuracy = getattr(checkpoint, f"{kind}_accuracy"), getattr(other, f"{kind}_accuracy")
        if accuracy is not None and other_accuracy is not None:
            return AccuracyComparison(kind=kind, accuracy=accuracy, other_accuracy=other_accuracy)
    return None


def checkpoint_file_path(*, checkpoint: Checkpoint) -> Path:
    """The absolute file of a checkpoint; refuses stored paths that escape CHECKPOINT_DIR."""
    root = Path(settings.CHECKPOINT_DIR).resolve()
    path = (root / checkpoint.path).resolve()
    if not path.is_relative_to(root):
        raise ValueError(f"checkpoint {checkpoint.pk} path {checkpoint.path!r} lies outside CHECKPOINT_DIR")
    return path


def _predictions_made_with(checkpoint_ref) -> Exists:
    # Prediction is classifier's model, reached through the relation rather than imported: training stays free of
    # the app that depends on it.
    prediction = Checkpoint._meta.get_field("predictions").related_model
    return Exists(prediction.objects.filter(checkpoint=checkpoint_ref))


def checkpoint_list_that_predicted() -> QuerySet[Checkpoint]:
    """The checkpoints that made predictions, and the active one, newest first: those a filter of predictions offers.

    Every run registers one a epoch; the few that ever served are the ones worth filtering by.
    """
    return Checkpoint.objects.filter(Q(is_active=True) | _predictions_made_with(OuterRef("pk"))).order_by("-created_at")


def checkpoint_list_prunable() -> QuerySet[Checkpoint]:
    """The epoch checkpoints nothing needs any more, oldest first.

    Those of finished runs (an unfinished run may still resume from any of its
    own) and those whose run is gone, neither active nor named by a prediction.
    A run that ended without a final checkpoint (failed, cancelled) keeps its
    newest epoch checkpoint: its only model, which may still be activated. An
    epoch checkpoint whose run is gone is no run's to resume from, and nothing
    tells whether it was a failed run's last one: it goes, while final
    checkpoints, with a run or without, all stay.
    """
    newest_epoch = Checkpoint.objects.filter(run=OuterRef("run"), is_final=False).order_by("-epoch").values("epoch")
    has_final = Checkpoint.objects.filter(run=OuterRef("run"), is_final=True)
    return (
        Checkpoint.objects.filter(is_final=False, is_active=False)
        .filter(Q(run__status__in=TrainingRun.FINISHED) | Q(run__isnull=True))
        .exclude(_predictions_made_with(OuterRef("pk")))
        .exclude(Q(run__isnull=False) & Q(epoch=Subquery(newest_epoch[:1])) & ~Exists(has_final))
        .order_by("created_at", "pk")
    )


def checkpoint_deletion_refusal(*, checkpoint: Checkpoint) -> str | None:
    """Why this checkpoint must not be deleted, in a sentence for staff; None when it may be."""
    if checkpoint.is_active:
        return f"{checkpoint} is the active checkpoint: activate another one before deleting it."
    if Checkpoint.objects.filter(pk=checkpoint.pk).filter(_predictions_made_with(OuterRef("pk"))).exists():
        return f"{checkpoint} made predictions, which keep naming the model that made them: it cannot be deleted."
    if checkpoint.run_id is not None:
        status = TrainingRun.objects.filter(pk=checkpoint.run_id).values_list("status", flat=True).first()
        if status is not None and status not in TrainingRun.FINISHED:
            return (
                f"{checkpoint} belongs to run {checkpoint.run_id}, which is still {status} and may resume from it: "
                "delete it once the run has finished."
            )
    return None


# An idle trainer takes a run within seconds, and the reaper (every minute) sends a message that never reached the
# broker again after a minute: a run queued longer than this while no trainer is busy has no trainer to take it.
NO_TRAINER_WARNING_AFTER = timedelta(minutes=2)


def _queued_since() -> Coalesce:
    # A run queued again (its trainer died or stopped) has waited since then, not since it was created: not since its
    # last heartbeat either, which is TRAINING_STALE_AFTER_SECONDS old or more once the reaper queues it again. A run
    # queued again before queued_at was kept has only its last heartbeat to tell.
    return Coalesce("queued_at", "heartbeat_at", "created_at")


def _with_untaken_for(runs: QuerySet[TrainingRun]) -> QuerySet[TrainingRun]:
    """Annotate ``untaken_for``: how long a queued run has waited, null for other runs and while a trainer is busy.

    A busy trainer (a running run whose heartbeat is fresh) takes queued runs one after another: waiting behind it
    says nothing about trainers being up. Also ``ran_for``, what ``TrainingRun.duration_seconds`` reads: the start
    was the database's clock, so an unfinished run's time so far is too, not this host's.
    """
    fresh = Now() - timedelta(seconds=settings.TRAINING_STALE_AFTER_SECONDS)
    busy = Exists(TrainingRun.objects.filter(status=TrainingRun.Status.RUNNING, heartbeat_at__gte=fresh))
    waited = ExpressionWrapper(Now() - _queued_since(), output_field=DurationField())
    return runs.annotate(
        untaken_for=Case(When(~busy, status=TrainingRun.Status.QUEUED, then=waited), output_field=DurationField()),
        ran_for=ExpressionWrapper(Coalesce("finished_at", Now()) - F("started_at"), output_field=DurationField()),
    )


def training_run_list() -> QuerySet[TrainingRun]:
    """Runs, each annotated as ``training_run_untaken_for`` needs."""
    return _with_untaken_for(TrainingRun.objects.select_related("created_by"))


def training_run_get(*, run_id: int) -> TrainingRun:
    """One run, annotated as ``training_run_untaken_for`` needs."""
    return _with_untaken_for(TrainingRun.objects.select_related("created_by")).get(pk=run_id)


def training_run_untaken_for(*, run: TrainingRun) -> timedelta | None:
    """How long this queued run has waited with no trainer at work, once that is long enough to doubt one is up.

    None otherwise, and for a run not read through ``training_run_list`` or ``training_run_get``.
    """
    untaken_for = getattr(run, "untaken_for", None)
    return untaken_for if untaken_for is not None and untaken_for >= NO_TRAINER_WARNING_AFTER else None


def training_run_oldest_queued_seconds() -> float:
    """How long the longest-waiting queued run has waited since it was last queued; 0 when none is.

    Counted on the database's clock, which wrote the times it starts from: every web process answers alike, whatever
    its own clock says.
    """
    waited = ExpressionWrapper(Now() - Min(_queued_since()), output_field=DurationField())
    longest = TrainingRun.objects.filter(status=TrainingRun.Status.QUEUED).aggregate(waited=waited)["waited"]
    return max(0.0, longest.total_seconds()) if longest is not None else 0.0


def training_run_counts() -> dict[str, int]:
    """How many runs are in each state, every state listed."""
    counts = dict.fromkeys(TrainingRun.Status.values, 0)
    counts.update(TrainingRun.objects.values_list("status").annotate(Count("id")).order_by())
    return counts


def training_runs_running() -> QuerySet[TrainingRun]:
    return TrainingRun.objects.filter(status=TrainingRun.Status.RUNNING).order_by("pk")


def training_run_progress(*, run: TrainingRun) -> dict:
    """What the admin's live progress poller needs, JSON-serialisable."""
    return {
        "id": run.pk,
        "status": run.status,
        "finished": run.is_finished,
        "progress": run.progress,
        "current_epoch": run.current_epoch,
        "epochs": run.epochs,
        "current_step": run.current_step,
        "total_steps": run.total_steps,
        "eta_seconds": run.eta_seconds,
        "device": run.device,
        "validation_accuracy": run.validation_accuracy,
        "test_accuracy": run.test_accuracy,
        "cancel_requested": run.cancel_requested,
        "error": run.error,
        "heartbeat_at": run.heartbeat_at.isoformat() if run.heartbeat_at else None,
        "duration_seconds": run.duration_seconds,
        "epochs_done": len(run.metrics or []),
    }


# ---------------------------------------------------------------------------
# Evaluation: reads a checkpoint and data, writes nothing.

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".gif", ".bmp", ".webp", ".tif", ".tiff"}


@dataclass
class Evaluation:
    """Accuracy of one checkpoint on one labelled set; ``confusion[true][predicted]`` counts."""

    checkpoint_id: int
    accuracy: float
    n: int
    confusion: list[list[int]]
    skipped: list[tuple[str, str]] = field(default_factory=list)

    @property
    def per_class(self) -> dict[int, tuple[int, int]]:
        """{digit: (correct, total)}."""
        return {digit: (row[digit], sum(row)) for digit, row in enumerate(self.confusion)}


# A name that starts with one digit and then something else: "3.png", "7_scan.jpg", "0-hand.gif". A camera's
# "20240517_142311.jpg" starts with a date, not a label.
_LABELLED_NAME = re.compile(r"[0-9](?![0-9])", re.ASCII)


def _label_for(path: Path) -> int | None:
    """The digit a folder ``7/`` gives its images, else the one a labelled file name starts with."""
    if re.fullmatch(r"[0-9]", path.parent.name, re.ASCII):
        return int(path.parent.name)
    if _LABELLED_NAME.match(path.name):
        return int(path.name[0])
    return None


def checkpoint_evaluate_mnist(*, checkpoint: Checkpoint, device: str = "auto") -> Evaluation:
    """The checkpoint's accuracy on the 10,000 MNIST test images in DATA_DIR."""
    from training.loading import checkpoint_load_model
    from training.ml.data import load_split
    from training.ml.engine import evaluate
    from training.ml.recipe import select_device

    torch_device = select_device(device)
    model = checkpoint_load_model(checkpoint=checkpoint, device=torch_device)
    test = load_split(settings.DATA_DIR, split="test")
    result = evaluate(model=model, images=test.images, labels=test.labels, device=torch_device)
    return Evaluation(checkpoint_id=checkpoint.pk, accuracy=result.accuracy, n=result.n, confusion=result.confusion)


def checkpoint_evaluate_folder(*, checkpoint: Checkpoint, directory: Path, device: str = "auto") -> Evaluation:
    """Accuracy on a folder tree of labelled images, each through the same preprocessing as uploads.

    The label is the parent folder's name when it is one digit, else the file
    name's first character when it is a digit not followed by another;
    unlabelled, unreadable and blank images are skipped.
    """
    import torch
    from PIL import Image

    from training.loading import checkpoint_load_model
    from training.ml.preprocess import preprocess, to_tensor
    from training.ml.recipe import select_device

    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"{directory} is not a directory")
    torch_device = select_device(device)
    model = checkpoint_load_model(checkpoint=checkpoint, device=torch_device)
    digits: list = []
    labels: list[int] = []
    skipped: list[tuple[str, str]] = []
    for path in sorted(p for p in directory.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES):
        label = _label_for(path)
        if label is None:
            skipped.append((str(path), "no digit label in its name or folder"))
            continue
        try:
            with Image.open(path) as image:
                digits.append(preprocess(image))
        except Exception as exc:  # noqa: BLE001 - one unreadable, huge or empty picture must not end the whole run
            skipped.append((str(path), f"{type(exc).__name__}: {exc}"))
            continue
        labels.append(label)
    confusion = [[0] * 10 for _ in range(10)]
    if digits:
        predicted: list[int] = []
        with torch.inference_mode():
            for start in range(0, len(digits), 512):
                batch = to_tensor(digits[start : start + 512]).to(torch_device)
                predicted += model(batch).argmax(1).cpu().tolist()
        for truth, guess in zip(labels, predicted):
            confusion[truth][guess] += 1
    n = len(labels)
    correct = sum(confusion[d][d] for d in range(10))
    return Evaluation(
        checkpoint_id=checkpoint.pk, accuracy=correct / n if n else 0.0, n=n, confusion=confusion, skipped=skipped
    )
