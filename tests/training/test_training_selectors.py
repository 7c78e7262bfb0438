"""Training selectors: labelling images for evaluation, counting runs by status, and how long a queued run waits."""
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
from django.conf import settings
from PIL import Image

from mnistsite.database_now import Now
from training import selectors
from training.ml.data import load_split
from training.models import TrainingRun

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize(
    ("relative", "label"),
    [
        ("7/20240517_142311.jpg", 7),  # a phone's date-named picture in a digit folder: the folder decides
        ("3_scan.png", 3),
        ("3.png", 3),
        ("0-hand.gif", 0),
        ("nested/5/x.png", 5),
        ("20240517_142311.jpg", None),  # a date, not a label
        ("12/7_b.png", 7),  # "12" is not a digit folder; the name decides
        ("²_odd.png", None),  # a digit to Python's str.isdigit, not a label
        ("sample.png", None),
    ],
)
def test_a_folder_image_takes_its_digit_folder_else_a_name_that_starts_with_one_digit(relative, label):
    assert selectors._label_for(Path("/data") / relative) == label


def test_folder_evaluation_counts_each_image_under_its_true_digit_and_skips_what_it_cannot_read(
    make_checkpoint, tmp_path
):
    checkpoint, _model = make_checkpoint(activate=True)
    test = load_split(settings.DATA_DIR, split="test").subset(12)
    for index, (image, label) in enumerate(zip(test.images.numpy(), test.labels.tolist())):
        folder = tmp_path / str(label)
        folder.mkdir(exist_ok=True)
        # Date-like names: only the folder says which digit each one is.
        Image.fromarray(255 - np.asarray(image, dtype=np.uint8)).save(folder / f"2024051{index % 10}_{index}.png")
    (tmp_path / "4" / "broken.png").parent.mkdir(exist_ok=True)
    (tmp_path / "4" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    result = selectors.checkpoint_evaluate_folder(checkpoint=checkpoint, directory=tmp_path, device="cpu")
    expected = {digit: test.labels.tolist().count(digit) for digit in range(10)}
    assert {digit: total for digit, (_correct, total) in result.per_class.items()} == expected
    assert result.n == 12 and [Path(path).name for path, _reason in result.skipped] == ["broken.png"]


def test_run_counts_list_every_status():
    TrainingRun.objects.create(status="running", epochs=1, batch_size=64, learning_rate=0.1)
    counts = selectors.training_run_counts()
    assert counts == {"queued": 0, "running": 1, "succeeded": 0, "failed": 0, "cancelled": 0}


def _stale_running_run(tiny_recipe) -> TrainingRun:
    """A run whose trainer was killed well past TRAINING_STALE_AFTER_SECONDS ago, created an hour before."""
    from training import services

    run = services.training_run_create(created_by=None, enqueue=False, **tiny_recipe)
    stopped = Now() - timedelta(seconds=settings.TRAINING_STALE_AFTER_SECONDS + 30)
    TrainingRun.objects.filter(pk=run.pk).update(
        status=TrainingRun.Status.RUNNING, attempts=1, created_at=Now() - timedelta(hours=1),
        started_at=Now() - timedelta(hours=1), heartbeat_at=stopped,
    )
    return run


def test_a_run_the_reaper_just_queued_again_is_not_taken_for_one_no_trainer_takes(tiny_recipe):
    from training import services

    run = _stale_running_run(tiny_recipe)
    assert services.training_runs_reap()["requeued"] == [run.pk]
    assert selectors.training_run_untaken_for(run=selectors.training_run_get(run_id=run.pk)) is None
    assert selectors.training_run_oldest_queued_seconds() < 30


def test_a_run_queued_again_by_the_reaper_counts_its_wait_from_then_and_warns_once_it_is_long(tiny_recipe):
    from training import services

    run = _stale_running_run(tiny_recipe)
    services.training_runs_reap()
    # Five minutes on, no trainer has come.
    TrainingRun.objects.filter(pk=run.pk).update(queued_at=Now() - timedelta(minutes=5))
    waited = selectors.training_run_untaken_for(run=selectors.training_run_get(run_id=run.pk))
    assert waited is not None and timedelta(minutes=5) <= waited < timedelta(minutes=6)
    assert 300 <= selectors.training_run_oldest_queued_seconds() < 360
