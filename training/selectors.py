"""Read-only queries for training runs and checkpoints."""
from django.db.models import QuerySet

from training.models import Checkpoint, TrainingRun


def checkpoint_get_active() -> Checkpoint | None:
    return Checkpoint.objects.filter(is_active=True).first()


def checkpoint_list() -> QuerySet[Checkpoint]:
    return Checkpoint.objects.select_related("run")


def training_run_list() -> QuerySet[TrainingRun]:
    return TrainingRun.objects.select_related("created_by")
