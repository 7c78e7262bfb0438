"""Training services: creating, executing, cancelling and reaping runs; registering, activating, deleting checkpoints."""
import logging
import threading
import time
from collections.abc import Callable
from datetime import UTC, timedelta

import pytest
import torch
from celery.exceptions import SoftTimeLimitExceeded
from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.management.color import no_style
from django.db import connection, transaction
from django.db.models.functions import Now
from django.utils import timezone

from training import services
from training.ml.atomic import sha256_file
from tests.devices import requires_cuda, requires_no_cuda
from tests.processes import NO_BROKER_URL, broker_switched
from training.models import Checkpoint, TrainingRun

pytestmark = pytest.mark.django_db


def _create(recipe, **overrides):
    return services.training_run_create(created_by=None, enqueue=False, **{**recipe, **overrides})


def test_creating_a_run_refuses_an_unknown_architecture_and_bad_numbers(tiny_recipe):
    with pytest.raises(ValidationError) as caught:
        services.training_run_create(
            created_by=None,
            **{**tiny_recipe, "architecture": "resnet", "epochs": 0, "learning_rate": -1, "seed": 3_000_000_000,
               "batch_size": 1, "train_subset": 1},
        )
    assert set(caught.value.message_dict) == {"architecture", "epochs", "learning_rate", "seed", "batch_size",
                                              "train_subset"}
    # A learning rate must also be at most 10: above it every run diverges at once.
    with pytest.raises(ValidationError) as too_high:
        services.training_run_create(created_by=None, **{**tiny_recipe, "learning_rate": 11})
    assert set(too_high.value.message_dict) == {"learning_rate"}
    assert not TrainingRun.objects.exists()


def _sent_run_ids(queue) -> list[int]:
    return [message["kwargs"]["run_id"] for message in queue.messages()]


def test_creating_a_run_refuses_a_training_subset_larger_than_the_mnist_training_set(tiny_recipe):
    with pytest.raises(ValidationError) as caught:
        _create(tiny_recipe, train_subset=70_000)
    assert caught.value.message_dict["train_subset"] == [
        "The training subset must hold between 2 and 60,000 images (MNIST has 60,000 training images)."
    ]
    assert not TrainingRun.objects.exists()
    assert _create(tiny_recipe, train_subset=60_000).train_subset == 60_000


def test_creating_a_run_publishes_it_only_after_the_transaction_commits(
    tiny_recipe, training_queue, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        run = services.training_run_create(created_by=None, **tiny_recipe)
    assert training_queue.messages() == []
    for callback in callbacks:
        callback()
    run.refresh_from_db()
    (message,) = training_queue.messages()
    assert message["task"] == "training.tasks.training_run_execute"
    assert (message["kwargs"], message["id"]) == ({"run_id": run.pk}, run.celery_task_id)
    assert run.status == TrainingRun.Status.QUEUED


def test_a_run_whose_message_could_not_be_published_is_republished_by_the_reaper(tiny_recipe, training_queue, settings):
    with broker_switched(settings, NO_BROKER_URL):
        run = _create(tiny_recipe)
        assert services.training_run_publish(run_id=run.pk) is None
    run.refresh_from_db()
    assert run.celery_task_id == ""
    outcome = services.training_runs_reap(now=timezone.now() + timedelta(minutes=5))
    assert outcome["republished"] == [run.pk]
    assert _sent_run_ids(training_queue) == [run.pk]


def _publish_and_lose(run, queue):
    """Send the run's message, then lose it the way a broker restarted without its data would."""
    assert services.training_run_publish(run_id=run.pk)
    assert _sent_run_ids(queue) == [run.pk]
    queue.purge()
    run.refresh_from_db()
    return run


def test_publishing_a_run_that_is_no_longer_queued_sends_nothing(tiny_recipe, training_queue):
    run = _create(tiny_recipe)
    TrainingRun.objects.filter(pk=run.pk).update(status=TrainingRun.Status.RUNNING, attempts=1)
    assert services.training_run_publish(run_id=run.pk) is None
    assert training_queue.messages() == []


def test_a_queued_run_whose_message_was_lost_is_sent_again_once_no_run_is_running(
    tiny_recipe, training_queue, settings
):
    run = _publish_and_lose(_create(tiny_recipe), training_queue)
    assert run.published_at is not None
    soon = run.published_at + timedelta(seconds=settings.TRAINING_REPUBLISH_AFTER_SECONDS - 5)
    assert services.training_runs_reap(now=soon)["republished"] == []
    later = run.published_at + timedelta(seconds=settings.TRAINING_REPUBLISH_AFTER_SECONDS + 5)
    assert services.training_runs_reap(now=later)["republished"] == [run.pk]
    (message,) = training_queue.messages()
    resent = TrainingRun.objects.get(pk=run.pk)
    assert message["id"] == resent.celery_task_id != run.celery_task_id
    assert resent.published_at > run.published_at and resent.status == TrainingRun.Status.QUEUED


def test_a_queued_run_whose_message_still_waits_for_a_trainer_is_not_sent_again_until_it_is_lost(
    tiny_recipe, training_queue, settings
):
    run = _create(tiny_recipe)
    assert services.training_run_publish(run_id=run.pk)  # no trainer is up to take it
    run.refresh_from_db()
    later = run.published_at + timedelta(seconds=settings.TRAINING_REPUBLISH_AFTER_SECONDS + 5)
    assert services.training_runs_reap(now=later)["republished"] == []
    # Lost after all (here taken off the queue by reading it): then it is sent again.
    assert _sent_run_ids(training_queue) == [run.pk]
    assert services.training_runs_reap(now=later)["republished"] == [run.pk]
    assert _sent_run_ids(training_queue) == [run.pk]


def test_a_lost_message_is_sent_again_even_while_another_runs_message_waits_for_a_trainer(
    tiny_recipe, training_queue, settings
):
    lost = _publish_and_lose(_create(tiny_recipe), training_queue)
    waiting = _create(tiny_recipe)
    assert services.training_run_publish(run_id=waiting.pk)
    later = lost.published_at + timedelta(seconds=settings.TRAINING_REPUBLISH_AFTER_SECONDS + 5)
    # One message for two queued runs: one was lost, and which one the queue cannot say, so both go again.
    assert sorted(services.training_runs_reap(now=later)["republished"]) == sorted([lost.pk, waiting.pk])
    # Now a message waits for each: nothing more is sent, however long no trainer comes.
    assert services.training_runs_reap(now=later + timedelta(hours=1))["republished"] == []
    assert sorted(_sent_run_ids(training_queue)) == sorted([waiting.pk, lost.pk, waiting.pk])


def test_a_queued_run_waiting_behind_a_running_one_is_not_sent_again(tiny_recipe, training_queue, settings):
    waiting = _publish_and_lose(_create(tiny_recipe), training_queue)
    later = waiting.published_at + timedelta(seconds=settings.TRAINING_REPUBLISH_AFTER_SECONDS + 5)
    busy = _create(tiny_recipe)
    # Its trainer is alive: the heartbeat is fresh at the reaper's "now".
    TrainingRun.objects.filter(pk=busy.pk).update(
        status=TrainingRun.Status.RUNNING, attempts=1, started_at=timezone.now(), heartbeat_at=later
    )
    assert services.training_runs_reap(now=later)["republished"] == []
    assert training_queue.messages() == []


def test_a_tiny_run_trains_and_registers_a_verified_activated_checkpoint(tiny_recipe):
    run = _create(tiny_recipe, activate_on_success=True)
    result = services.training_run_execute(run_id=run.pk)
    run.refresh_from_db()
    assert result is not None and run.status == TrainingRun.Status.SUCCEEDED, run.error
    assert run.progress == 1.0 and run.device == "cpu" and run.attempts == 1
    assert [row["epoch"] for row in run.metrics] == [1]
    assert len(run.confusion_matrix) == 10 and sum(map(sum, run.confusion_matrix)) == 10_000
    final = run.checkpoints.get(is_final=True)
    assert final.is_active and final.test_accuracy == run.test_accuracy
    folder = f"runs/{run.pk}-{run.created_at.astimezone(UTC):%Y%m%dT%H%M%S%fZ}"
    assert final.path == f"{folder}/attempt-1/final.pt"
    assert final.sha256 == sha256_file(settings.CHECKPOINT_DIR / final.path)
    assert final.size == (settings.CHECKPOINT_DIR / final.path).stat().st_size
    epoch_checkpoint = run.checkpoints.get(is_final=False)
    assert epoch_checkpoint.path == f"{folder}/attempt-1/epoch-1.pt" and not epoch_checkpoint.is_active


def test_a_cnn_run_the_form_allows_of_exactly_five_steps_succeeds(tiny_recipe):
    # The one-cycle schedule's warm-up is a fifth of the steps: one step here, which torch divided by zero over.
    run = _create(tiny_recipe, architecture="cnn", epochs=1, batch_size=2, train_subset=10, learning_rate=0.1)
    services.training_run_execute(run_id=run.pk)
    run.refresh_from_db()
    assert run.status == TrainingRun.Status.SUCCEEDED, run.error
    assert run.total_steps == 5 and len(run.metrics) == 1


def _as_a_database_created_empty():
    """What a database volume recreated empty holds: no runs, no checkpoints, and ids starting again at 1."""
    Checkpoint.objects.all().delete()
    TrainingRun.objects.all().delete()
    tables = [{"table": model._meta.db_table, "column": "id"} for model in (TrainingRun, Checkpoint)]
    with connection.cursor() as cursor:
        for statement in connection.ops.sequence_reset_by_name_sql(no_style(), tables):
            cursor.execute(statement)


def test_a_database_recreated_empty_does_not_write_over_the_checkpoints_the_earlier_one_left(tiny_recipe):
    from training.ml.checkpoints import load_checkpoint
    from training.selectors import checkpoint_file_path

    _as_a_database_created_empty()
    earlier = _create(tiny_recipe)
    services.training_run_execute(run_id=earlier.pk)
    left = {checkpoint_file_path(checkpoint=c): c.sha256 for c in Checkpoint.objects.filter(run=earlier)}
    assert len(left) == 2  # epoch 1 and final

    # The checkpoint volume kept, the database started again: its first run is run 1 again.
    _as_a_database_created_empty()
    later = _create(tiny_recipe, seed=1)
    assert later.pk == earlier.pk
    services.training_run_execute(run_id=later.pk)
    later.refresh_from_db()
    assert later.status == TrainingRun.Status.SUCCEEDED, later.error
    assert not {checkpoint_file_path(checkpoint=c) for c in later.checkpoints.all()} & set(left)
    for path, sha256 in left.items():
        load_checkpoint(path, expected_sha256=sha256)


def test_a_run_refuses_to_write_over_a_checkpoint_file_it_did_not_write(tiny_recipe):
    from training.ml.architectures import build_model
    from training.ml.checkpoints import save_checkpoint

    run = TrainingRun.objects.get(pk=_create(tiny_recipe).pk)
    foreign = services._run_dir(run) / "attempt-1" / "epoch-1.pt"
    sha256, _size = save_checkpoint(
        foreign, model=build_model("mlp", {"hidden": 16}), config=None, epoch=1, metrics={}
    )
    services.training_run_execute(run_id=run.pk)
    run.refresh_from_db()
    assert run.status == TrainingRun.Status.FAILED
    assert "was not written by this run; refusing to write over it" in run.error
    assert sha256_file(foreign) == sha256 and not run.checkpoints.exists()


def test_a_file_that_appears_while_a_run_writes_its_checkpoint_is_kept_and_the_run_fails_saying_why(
    tiny_recipe, monkeypatch
):
    run = TrainingRun.objects.get(pk=_create(tiny_recipe).pk)
    foreign = services._run_dir(run) / "attempt-1" / "epoch-1.pt"
    save = torch.save

    def another_writer_gets_there_first(obj, f, *args, **kwargs):
        # Lands after the run looked at the name and before its file takes it.
        if not foreign.exists():
            foreign.parent.mkdir(parents=True, exist_ok=True)
            foreign.write_bytes(b"another run's checkpoint")
        return save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", another_writer_gets_there_first)
    services.training_run_execute(run_id=run.pk)
    run.refresh_from_db()
    assert run.status == TrainingRun.Status.FAILED
    assert "was not written by this run; refusing to write over it" in run.error
    assert foreign.read_bytes() == b"another run's checkpoint" and not run.checkpoints.exists()
    assert [p.name for p in foreign.parent.iterdir()] == ["epoch-1.pt"]  # no temporary file left


def test_a_resumed_attempt_writes_its_own_epoch_checkpoint_again_when_that_one_no_longer_loads(tiny_recipe):
    run = _create(tiny_recipe, epochs=3)

    def shut_down_in_epoch_three(fraction, epoch, step, eta):
        if epoch == 3:
            raise SystemExit(15)

    with pytest.raises(SystemExit):
        services.training_run_execute(run_id=run.pk, on_progress=shut_down_in_epoch_three)
    second = run.checkpoints.get(epoch=2)
    (settings.CHECKPOINT_DIR / second.path).write_bytes(b"damaged")
    epochs_trained = set()
    services.training_run_execute(run_id=run.pk, on_progress=lambda f, epoch, s, e: epochs_trained.add(epoch))
    run.refresh_from_db()
    assert run.status == TrainingRun.Status.SUCCEEDED, run.error
    assert epochs_trained == {2, 3} and run.attempts == 1
    second.refresh_from_db()
    assert second.path.endswith("attempt-1/epoch-2.pt")
    assert second.sha256 == sha256_file(settings.CHECKPOINT_DIR / second.path)


@requires_cuda
def test_a_run_asking_for_the_gpu_trains_there_and_its_checkpoint_serves_on_the_cpu(tiny_recipe):
    from training.loading import checkpoint_load_model

    run = _create(tiny_recipe, architecture="cnn", learning_rate=0.1, augment=True, device="cuda", train_subset=2000)
    services.training_run_execute(run_id=run.pk)
    run.refresh_from_db()
    assert run.status == TrainingRun.Status.SUCCEEDED, run.error
    assert run.device == "cuda" and run.test_accuracy > 0.8
    model = checkpoint_load_model(checkpoint=run.checkpoints.get(is_final=True), device=torch.device("cpu"))
    assert {parameter.device.type for parameter in model.parameters()} == {"cpu"}


@requires_no_cuda
def test_a_run_asking_for_a_missing_gpu_fails_saying_what_was_asked_and_what_to_do(tiny_recipe):
    run = _create(tiny_recipe, device="cuda")
    services.training_run_execute(run_id=run.pk)
    run.refresh_from_db()
    assert run.status == TrainingRun.Status.FAILED
    assert run.error == (
        'This run asked for device "cuda", but the trainer that took it has no CUDA GPU. Start a new run with '
        'device "auto" or "cpu", or run the trainers on a machine with a GPU (docker-compose.gpu.yml).'
    )
    assert not run.checkpoints.exists()


@requires_no_cuda
def test_a_run_on_a_trainer_told_to_use_a_gpu_it_lacks_fails_saying_which_setting_to_change(tiny_recipe, settings):
    settings.TORCH_DEVICE = "cuda"
    run = _create(tiny_recipe, device="auto")
    services.training_run_execute(run_id=run.pk)
    run.refresh_from_db()
    assert run.status == TrainingRun.Status.FAILED
    assert run.error.startswith('This trainer\'s TORCH_DEVICE is "cuda", but it has no CUDA GPU. Set TORCH_DEVICE')


def test_a_run_succeeds_without_activation_unless_asked(tiny_recipe, make_checkpoint):
    active, _ = make_checkpoint(activate=True)
    run = _create(tiny_recipe)
    services.training_run_execute(run_id=run.pk)
    active.refresh_from_db()
    assert active.is_active
    assert not run.checkpoints.filter(is_active=True).exists()


def test_a_run_asked_to_activate_when_done_keeps_a_better_active_checkpoint_and_says_why(
    tiny_recipe, make_checkpoint, caplog
):
    better, _ = make_checkpoint(activate=True, accuracy=0.9954)
    run = _create(tiny_recipe, activate_on_success=True)
    with caplog.at_level(logging.WARNING, logger="training.services"):
        services.training_run_execute(run_id=run.pk)
    run.refresh_from_db()
    better.refresh_from_db()
    final = run.checkpoints.get(is_final=True)
    assert run.status == TrainingRun.Status.SUCCEEDED and run.test_accuracy < 0.9954
    assert better.is_active and not final.is_active
    note = (
        f"Not activated: its {run.test_accuracy:.2%} test accuracy is below the active checkpoint's 99.54% "
        f"(checkpoint {better.pk}, mlp); activate checkpoint {final.pk} by hand to use it anyway."
    )
    assert run.error == note
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING] == [
        f"training run {run.pk}: {note}"
    ]
    # Staff activating it by hand still can.
    services.checkpoint_activate(checkpoint=final)
    final.refresh_from_db()
    assert final.is_active


def test_a_run_asked_to_activate_when_done_replaces_an_active_checkpoint_it_equals(tiny_recipe):
    # Training is reproducible on the CPU: the same recipe twice reaches the same accuracy.
    first = _create(tiny_recipe, activate_on_success=True)
    services.training_run_execute(run_id=first.pk)
    second = _create(tiny_recipe, activate_on_success=True)
    services.training_run_execute(run_id=second.pk)
    first.refresh_from_db()
    second.refresh_from_db()
    assert second.test_accuracy == first.test_accuracy
    assert second.checkpoints.get(is_final=True).is_active and second.error == ""


def test_a_run_asked_to_activate_when_done_replaces_a_worse_active_checkpoint(tiny_recipe, make_checkpoint):
    worse, _ = make_checkpoint(activate=True, accuracy=0.0)
    run = _create(tiny_recipe, activate_on_success=True)
    services.training_run_execute(run_id=run.pk)
    run.refresh_from_db()
    worse.refresh_from_db()
    assert run.checkpoints.get(is_final=True).is_active and not worse.is_active and run.error == ""


def test_a_run_asked_to_activate_when_done_replaces_a_better_active_checkpoint_that_no_longer_loads(
    tiny_recipe, make_checkpoint
):
    # Every prediction fails with it (ensure_model trains a quick model to replace it): keeping it helps nobody.
    broken, _ = make_checkpoint(activate=True, accuracy=0.9954)
    (settings.CHECKPOINT_DIR / broken.path).unlink()
    run = _create(tiny_recipe, activate_on_success=True)
    services.training_run_execute(run_id=run.pk)
    run.refresh_from_db()
    broken.refresh_from_db()
    assert run.checkpoints.get(is_final=True).is_active and not broken.is_active and run.error == ""


def test_a_redelivered_run_message_does_not_train_twice(tiny_recipe):
    run = _create(tiny_recipe)
    first = services.training_run_execute(run_id=run.pk)
    assert first is not None
    assert services.training_run_execute(run_id=run.pk) is None
    run.refresh_from_db()
    # Training again would have counted an attempt, restarted the clock and written more checkpoints.
    assert run.attempts == 1 and run.status == TrainingRun.Status.SUCCEEDED
    assert (run.started_at, run.finished_at) == (first.started_at, first.finished_at)
    assert run.checkpoints.count() == 2


def test_a_run_that_is_already_running_is_not_executed_again(tiny_recipe):
    run = _create(tiny_recipe)
    TrainingRun.objects.filter(pk=run.pk).update(status=TrainingRun.Status.RUNNING, attempts=1)
    assert services.training_run_execute(run_id=run.pk) is None
    run.refresh_from_db()
    assert run.status == TrainingRun.Status.RUNNING and run.attempts == 1
    assert run.progress == 0 and not run.checkpoints.exists()


def test_a_run_that_raises_is_marked_failed_with_the_error(tiny_recipe, settings, tmp_path):
    # The checkpoint folder is a file: the first checkpoint cannot be written.
    settings.CHECKPOINT_DIR = tmp_path / "checkpoints"
    settings.CHECKPOINT_DIR.write_text("not a folder")
    run = _create(tiny_recipe)
    services.training_run_execute(run_id=run.pk)
    run.refresh_from_db()
    assert run.status == TrainingRun.Status.FAILED and run.finished_at is not None
    assert run.error.startswith(("FileExistsError", "NotADirectoryError")), run.error
    assert not run.checkpoints.exists()


def test_cancelling_a_queued_run_cancels_it_at_once(tiny_recipe):
    run = services.training_run_cancel(run=_create(tiny_recipe))
    assert run.status == TrainingRun.Status.CANCELLED and run.finished_at is not None
    assert services.training_run_execute(run_id=run.pk) is None


@pytest.mark.parametrize(
    ("status", "message"),
    [
        (TrainingRun.Status.SUCCEEDED, "has already succeeded; it cannot be cancelled."),
        (TrainingRun.Status.FAILED, "has already failed; it cannot be cancelled."),
        (TrainingRun.Status.CANCELLED, "is already cancelled."),
    ],
)
def test_cancelling_a_finished_run_says_in_words_what_became_of_it(tiny_recipe, status, message):
    run = _create(tiny_recipe)
    TrainingRun.objects.filter(pk=run.pk).update(status=status)
    with pytest.raises(services.TrainingRunStateError) as caught:
        services.training_run_cancel(run=run)
    assert str(caught.value) == f"Run {run.pk} {message}"


def test_cancelling_a_finished_run_is_refused(tiny_recipe):
    run = _create(tiny_recipe)
    TrainingRun.objects.filter(pk=run.pk).update(status=TrainingRun.Status.SUCCEEDED)
    with pytest.raises(services.TrainingRunStateError, match="cannot be cancelled"):
        services.training_run_cancel(run=run)


def test_a_cancel_request_stops_a_running_run_at_its_next_step(tiny_recipe, monkeypatch):
    monkeypatch.setattr(services, "CANCEL_CHECK_EVERY_S", 0.0)
    run = _create(tiny_recipe, epochs=3)
    seen_epochs = set()

    def request_cancel(fraction, epoch, step, eta):
        seen_epochs.add(epoch)
        services.training_run_cancel(run=run)

    services.training_run_execute(run_id=run.pk, on_progress=request_cancel)
    run.refresh_from_db()
    assert run.status == TrainingRun.Status.CANCELLED
    assert seen_epochs == {1}
    assert not run.checkpoints.filter(is_final=True).exists()


def test_a_cancel_request_after_the_last_step_still_cancels_the_run_and_activates_nothing(tiny_recipe, monkeypatch):
    monkeypatch.setattr(services, "CANCEL_CHECK_EVERY_S", 0.0)
    run = _create(tiny_recipe, epochs=1, activate_on_success=True)
    steps = []

    def cancel_on_the_last_step(fraction, epoch, step, eta):
        steps.append(step)
        if fraction >= 1.0:
            services.training_run_cancel(run=run)

    services.training_run_execute(run_id=run.pk, on_progress=cancel_on_the_last_step)
    run.refresh_from_db()
    assert run.status == TrainingRun.Status.CANCELLED, run.error
    assert steps[-1] == run.total_steps  # trained to the end before the cancel came
    assert not run.checkpoints.filter(is_final=True).exists()
    assert not Checkpoint.objects.filter(is_active=True).exists()
    # The final file, written before the cancel was seen, is not left behind unregistered.
    assert list(services._run_dir(run).rglob("final.pt")) == []


def test_progress_is_written_to_the_run_while_it_trains(tiny_recipe, monkeypatch):
    monkeypatch.setattr(services, "PROGRESS_WRITE_EVERY_S", 0.0)
    run = _create(tiny_recipe, epochs=2)
    snapshots = []

    def snapshot(fraction, epoch, step, eta):
        snapshots.append(TrainingRun.objects.values("progress", "current_epoch", "heartbeat_at").get(pk=run.pk))

    services.training_run_execute(run_id=run.pk, on_progress=snapshot)
    # Each snapshot is taken before that call's write, so it shows the previous report.
    assert len(snapshots) >= 2
    assert snapshots[-1]["current_epoch"] >= 1 and 0 < snapshots[-1]["progress"] < 1
    assert all(s["heartbeat_at"] is not None for s in snapshots)


def test_the_end_of_an_epoch_writes_its_progress_and_last_step_together_with_its_metrics(tiny_recipe, monkeypatch):
    # Only the run's first step is written by the throttle then: what the run shows between epochs is the epoch's.
    monkeypatch.setattr(services, "PROGRESS_WRITE_EVERY_S", 3600.0)
    run = _create(tiny_recipe, epochs=2)
    between_epochs = []

    def snapshot(fraction, epoch, step, eta):
        if epoch == 2 and not between_epochs:
            between_epochs.append(TrainingRun.objects.values(
                "progress", "current_epoch", "current_step", "total_steps", "metrics"
            ).get(pk=run.pk))

    services.training_run_execute(run_id=run.pk, on_progress=snapshot)
    (shown,) = between_epochs
    assert [row["epoch"] for row in shown["metrics"]] == [1]
    assert (shown["progress"], shown["current_epoch"], shown["current_step"]) == (0.5, 1, shown["total_steps"])


def _make_stale(run, *, attempts):
    old = timezone.now() - timedelta(seconds=settings.TRAINING_STALE_AFTER_SECONDS + 30)
    TrainingRun.objects.filter(pk=run.pk).update(
        status=TrainingRun.Status.RUNNING, attempts=attempts, started_at=old, heartbeat_at=old
    )


def test_the_reaper_fails_a_stale_run_that_has_used_all_its_attempts(tiny_recipe):
    run = _create(tiny_recipe)
    _make_stale(run, attempts=services.MAX_ATTEMPTS)
    assert services.training_runs_reap()["failed"] == [run.pk]
    run.refresh_from_db()
    assert run.status == TrainingRun.Status.FAILED and "worker stopped responding" in run.error


def test_the_reaper_leaves_a_run_with_a_fresh_heartbeat_alone(tiny_recipe):
    run = _create(tiny_recipe)
    TrainingRun.objects.filter(pk=run.pk).update(
        status=TrainingRun.Status.RUNNING, attempts=1, started_at=timezone.now(), heartbeat_at=timezone.now()
    )
    assert services.training_runs_reap() == {"requeued": [], "failed": [], "cancelled": [], "republished": []}
    run.refresh_from_db()
    assert run.status == TrainingRun.Status.RUNNING


def test_a_run_on_a_trainer_whose_clock_is_slow_is_not_taken_for_dead(tiny_recipe, monkeypatch):
    # The trainer and the reaper run on different hosts; only the database's clock is the same for both.
    right_time = timezone.now
    monkeypatch.setattr(timezone, "now", lambda: right_time() - timedelta(minutes=3))
    run = _create(tiny_recipe)
    outcomes = []

    def reap_on_a_host_whose_clock_is_right(fraction, epoch, step, eta):
        with monkeypatch.context() as reaper_host:
            reaper_host.setattr(timezone, "now", right_time)
            outcomes.append(services.training_runs_reap())

    services.training_run_execute(run_id=run.pk, on_progress=reap_on_a_host_whose_clock_is_right)
    run.refresh_from_db()
    assert outcomes and all(outcome["requeued"] == [] for outcome in outcomes)
    assert (run.status, run.attempts) == (TrainingRun.Status.SUCCEEDED, 1), run.error


def test_a_heartbeat_on_the_databases_clock_is_fresh_to_a_reaper_whose_clock_runs_ahead(tiny_recipe, monkeypatch):
    run = _create(tiny_recipe)
    TrainingRun.objects.filter(pk=run.pk).update(
        status=TrainingRun.Status.RUNNING, attempts=1, started_at=Now(), heartbeat_at=Now()
    )
    right_time = timezone.now
    monkeypatch.setattr(timezone, "now", lambda: right_time() + timedelta(minutes=3))
    assert services.training_runs_reap() == {"requeued": [], "failed": [], "cancelled": [], "republished": []}
    assert TrainingRun.objects.get(pk=run.pk).status == TrainingRun.Status.RUNNING


def test_a_run_created_on_a_web_host_whose_clock_runs_ahead_is_resent_on_time(tiny_recipe, training_queue, settings,
                                                                              monkeypatch):
    right_time = timezone.now
    monkeypatch.setattr(timezone, "now", lambda: right_time() + timedelta(minutes=5))
    with broker_switched(settings, NO_BROKER_URL):
        run = _create(tiny_recipe)
        assert services.training_run_publish(run_id=run.pk) is None
    assert abs(run.created_at - right_time()) < timedelta(minutes=1)
    monkeypatch.setattr(timezone, "now", right_time)
    assert services.training_runs_reap(now=right_time() + timedelta(minutes=1))["republished"] == [run.pk]
    assert _sent_run_ids(training_queue) == [run.pk]


def test_the_reaper_cancels_a_stale_run_that_was_asked_to_cancel(tiny_recipe):
    run = _create(tiny_recipe)
    _make_stale(run, attempts=1)
    TrainingRun.objects.filter(pk=run.pk).update(cancel_requested=True)
    assert services.training_runs_reap()["cancelled"] == [run.pk]


def test_a_stale_run_is_requeued_and_resumes_from_its_last_epoch_checkpoint(
    tiny_recipe, training_queue, django_capture_on_commit_callbacks
):
    run = _create(tiny_recipe, epochs=2)

    class WorkerDied(BaseException):
        pass

    def die_in_epoch_two(fraction, epoch, step, eta):
        if epoch == 2:
            raise WorkerDied

    with pytest.raises(WorkerDied):
        services.training_run_execute(run_id=run.pk, on_progress=die_in_epoch_two)
    first_epoch = TrainingRun.objects.get(pk=run.pk).metrics[0]
    # What a killed worker leaves behind: still "running", heartbeat going stale.
    _make_stale(run, attempts=1)

    with django_capture_on_commit_callbacks(execute=True):
        assert services.training_runs_reap()["requeued"] == [run.pk]
    assert _sent_run_ids(training_queue) == [run.pk]
    assert TrainingRun.objects.get(pk=run.pk).status == TrainingRun.Status.QUEUED

    epochs_trained = set()
    services.training_run_execute(run_id=run.pk, on_progress=lambda f, epoch, s, e: epochs_trained.add(epoch))
    run.refresh_from_db()
    assert run.status == TrainingRun.Status.SUCCEEDED, run.error
    assert epochs_trained == {2} and run.attempts == 2
    assert run.metrics[0] == first_epoch and [row["epoch"] for row in run.metrics] == [1, 2]
    assert run.error == ""


def test_the_next_attempt_of_a_run_clears_the_temp_files_of_writes_killed_in_the_last_and_keeps_the_files_written(
    tiny_recipe, killed_write
):
    from training.ml.atomic import atomic_write_bytes

    run = _create(tiny_recipe)
    # Its first attempt was killed while writing its final checkpoint, after writing its first epoch's.
    TrainingRun.objects.filter(pk=run.pk).update(attempts=1)
    attempt = services._run_dir(run) / "attempt-1"
    atomic_write_bytes(attempt / "epoch-1.pt", b"written whole")
    left = killed_write(attempt / "final.pt", age_s=services.ABANDONED_TEMP_FILE_AGE_S + 60)
    services.training_run_execute(run_id=run.pk)
    run.refresh_from_db()
    assert (run.status, run.attempts) == (TrainingRun.Status.SUCCEEDED, 2), run.error
    assert not left.exists() and (attempt / "epoch-1.pt").read_bytes() == b"written whole"


def test_the_reaper_clears_the_temp_files_of_writes_killed_in_a_run_it_gives_up_on_and_keeps_its_checkpoints(
    tiny_recipe, make_run_with_checkpoints, killed_write
):
    run, checkpoints = make_run_with_checkpoints(status=TrainingRun.Status.RUNNING, epochs=1)
    _make_stale(run, attempts=services.MAX_ATTEMPTS)
    attempt = services._run_dir(run) / "attempt-1"
    left = killed_write(attempt / "epoch-2.pt", age_s=services.ABANDONED_TEMP_FILE_AGE_S + 60)
    # A write under way (its file written to a moment ago) is left to finish.
    under_way = killed_write(attempt / "final.pt")
    assert services.training_runs_reap()["failed"] == [run.pk]
    assert not left.exists() and under_way.exists()
    assert sha256_file(settings.CHECKPOINT_DIR / checkpoints["epoch-1"].path) == checkpoints["epoch-1"].sha256


def _shut_down_in_epoch_two(fraction, epoch, step, eta):
    # What a worker's pool process raises when the worker is stopped (a cold shutdown, a terminate).
    if epoch == 2:
        raise SystemExit(15)


def test_a_run_whose_trainer_shuts_down_is_queued_again_at_once_and_resumes_without_losing_an_attempt(
    tiny_recipe, training_queue
):
    run = _create(tiny_recipe, epochs=2)
    with pytest.raises(SystemExit):
        services.training_run_execute(run_id=run.pk, on_progress=_shut_down_in_epoch_two)
    run.refresh_from_db()
    assert (run.status, run.attempts) == (TrainingRun.Status.QUEUED, 0)
    assert "resumes from its last epoch checkpoint" in run.error
    assert _sent_run_ids(training_queue) == [run.pk]

    epochs_trained = set()
    services.training_run_execute(run_id=run.pk, on_progress=lambda f, epoch, s, e: epochs_trained.add(epoch))
    run.refresh_from_db()
    assert run.status == TrainingRun.Status.SUCCEEDED and run.error == ""
    assert epochs_trained == {2} and run.attempts == 1


def test_a_run_asked_to_cancel_is_cancelled_not_queued_again_when_its_trainer_shuts_down(tiny_recipe, training_queue):
    run = _create(tiny_recipe, epochs=2)

    def cancel_then_shut_down(fraction, epoch, step, eta):
        TrainingRun.objects.filter(pk=run.pk).update(cancel_requested=True)
        raise SystemExit(15)

    with pytest.raises(SystemExit):
        services.training_run_execute(run_id=run.pk, on_progress=cancel_then_shut_down)
    assert TrainingRun.objects.get(pk=run.pk).status == TrainingRun.Status.CANCELLED
    assert training_queue.messages() == []


def test_a_run_cancelled_after_a_restart_no_longer_says_that_it_resumes(tiny_recipe, training_queue):
    # Queued again after its trainer shut down, then cancelled before a trainer took it.
    queued = _create(tiny_recipe, epochs=2)
    with pytest.raises(SystemExit):
        services.training_run_execute(run_id=queued.pk, on_progress=_shut_down_in_epoch_two)
    assert "resumes from its last epoch checkpoint" in TrainingRun.objects.get(pk=queued.pk).error
    services.training_run_cancel(run=queued)
    # Resumed once, asked to cancel, then its trainer died: the reaper cancels it.
    stale = _create(tiny_recipe)
    _make_stale(stale, attempts=2)
    TrainingRun.objects.filter(pk=stale.pk).update(
        cancel_requested=True, error="worker stopped responding (attempt 1); resuming from the last epoch checkpoint"
    )
    assert services.training_runs_reap()["cancelled"] == [stale.pk]
    for run in TrainingRun.objects.filter(pk__in=[queued.pk, stale.pk]):
        assert (run.status, run.error) == (TrainingRun.Status.CANCELLED, ""), run.pk


def test_a_run_stopped_by_the_task_time_limit_fails_saying_so_and_keeps_its_epoch_checkpoints(tiny_recipe):
    from training.loading import checkpoint_load_model

    run = _create(tiny_recipe, epochs=2)

    def time_is_up_in_epoch_two(fraction, epoch, step, eta):
        # What Celery raises in the task once its soft time limit has passed.
        if epoch == 2:
            raise SoftTimeLimitExceeded()

    services.training_run_execute(run_id=run.pk, on_progress=time_is_up_in_epoch_two)
    run.refresh_from_db()
    assert run.status == TrainingRun.Status.FAILED and run.finished_at is not None
    assert run.error == (
        "Stopped by the training task's time limit (3 h) after epoch 1 of 2; its epoch checkpoints remain "
        "(the last: epoch 1) and can be activated."
    )
    (kept,) = run.checkpoints.all()
    assert (kept.epoch, kept.is_final) == (1, False)
    checkpoint_load_model(checkpoint=kept)


@pytest.fixture
def threads_as_inference_left_them():
    before = torch.get_num_threads()
    # What a worker process that served a prediction keeps: TORCH_NUM_THREADS, 1.
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_a_run_in_a_process_that_served_predictions_trains_on_all_cores_then_gives_inference_its_count_back(
    tiny_recipe, threads_as_inference_left_them
):
    from training.ml.threads import default_num_threads

    if default_num_threads() == 1:
        pytest.skip("one core: training's thread count is inference's, so the test could not tell them apart")
    run = _create(tiny_recipe)
    threads_while_training = set()
    services.training_run_execute(
        run_id=run.pk, on_progress=lambda *progress: threads_while_training.add(torch.get_num_threads())
    )
    assert TrainingRun.objects.get(pk=run.pk).status == TrainingRun.Status.SUCCEEDED
    assert threads_while_training == {default_num_threads()}
    assert torch.get_num_threads() == 1


def test_registering_a_checkpoint_whose_file_changed_since_it_was_written_is_refused():
    from training.ml.architectures import build_model
    from training.ml.checkpoints import save_checkpoint

    path = settings.CHECKPOINT_DIR / "manual" / "model.pt"
    digest, _size = save_checkpoint(path, model=build_model("mlp", {"hidden": 16}), config=None, epoch=1, metrics={})
    written = path.read_bytes()
    path.write_bytes(written[:-1] + bytes([written[-1] ^ 1]))
    with pytest.raises(services.CheckpointPathError, match="not the .* of the checkpoint written there"):
        services.checkpoint_register(
            path=path, run=None, epoch=1, test_accuracy=None, architecture="mlp", sha256=digest
        )
    assert not Checkpoint.objects.exists()

    path.write_bytes(written)
    checkpoint = services.checkpoint_register(
        path=path, run=None, epoch=1, test_accuracy=None, architecture="mlp", sha256=digest
    )
    assert checkpoint.sha256 == digest


def test_registering_a_file_outside_the_checkpoint_dir_is_refused(tmp_path):
    outside = tmp_path / "elsewhere.pt"
    outside.write_bytes(b"not a model")
    with pytest.raises(services.CheckpointPathError, match="not inside CHECKPOINT_DIR"):
        services.checkpoint_register(path=outside, run=None, epoch=1, test_accuracy=None, architecture="mlp")
    sneaky = settings.CHECKPOINT_DIR / ".." / "elsewhere.pt"
    with pytest.raises(services.CheckpointPathError):
        services.checkpoint_register(path=sneaky, run=None, epoch=1, test_accuracy=None, architecture="mlp")
    assert not Checkpoint.objects.exists()


def test_a_checkpoint_registered_on_a_trainer_whose_clock_is_slow_is_dated_and_listed_by_the_databases_clock(
    make_checkpoint, monkeypatch
):
    right_time = timezone.now
    earlier, _ = make_checkpoint()
    monkeypatch.setattr(timezone, "now", lambda: right_time() - timedelta(hours=3))
    later, _ = make_checkpoint()
    assert abs(later.created_at - right_time()) < timedelta(minutes=1)
    assert list(Checkpoint.objects.values_list("pk", flat=True)) == [later.pk, earlier.pk]


def test_activating_a_checkpoint_deactivates_the_previous_one(make_checkpoint):
    first, _ = make_checkpoint(activate=True)
    second, _ = make_checkpoint()
    services.checkpoint_activate(checkpoint=second)
    first.refresh_from_db()
    second.refresh_from_db()
    assert second.is_active and not first.is_active
    # Rolling back is the same operation.
    services.checkpoint_activate(checkpoint=first)
    assert list(Checkpoint.objects.filter(is_active=True)) == [first]


def test_a_worker_whose_run_was_taken_over_stops_without_touching_it(tiny_recipe, monkeypatch):
    monkeypatch.setattr(services, "CANCEL_CHECK_EVERY_S", 0.0)
    run = _create(tiny_recipe, epochs=2)

    def taken_over(fraction, epoch, step, eta):
        # What the reaper plus a second worker's claim look like from the first worker.
        TrainingRun.objects.filter(pk=run.pk).update(attempts=2, error="resumed elsewhere")

    assert services.training_run_execute(run_id=run.pk, on_progress=taken_over) is None
    run.refresh_from_db()
    assert run.status == TrainingRun.Status.RUNNING and run.error == "resumed elsewhere"
    assert not run.checkpoints.exists()


def test_a_worker_whose_run_was_taken_over_and_then_fails_leaves_the_successors_run_untouched(tiny_recipe, monkeypatch):
    monkeypatch.setattr(services, "CANCEL_CHECK_EVERY_S", 3600.0)  # the attempt does not notice the take-over first
    run = _create(tiny_recipe, epochs=2)

    def taken_over_then_failing(fraction, epoch, step, eta):
        # The reaper re-queued the run and a second worker claimed it; then this, the first, attempt fails.
        TrainingRun.objects.filter(pk=run.pk).update(attempts=2, error="resumed elsewhere")
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    assert services.training_run_execute(run_id=run.pk, on_progress=taken_over_then_failing) is None
    run.refresh_from_db()
    assert (run.status, run.attempts, run.error, run.finished_at) == (
        TrainingRun.Status.RUNNING, 2, "resumed elsewhere", None
    )
    assert not run.checkpoints.exists()


class _HeldInAnotherConnection:
    """``hold`` run in a thread's own transaction, left open until another connection is seen waiting for a lock."""

    def __init__(self, hold: Callable[[], None], *, timeout: float) -> None:
        self.held, self.waited, self.errors = threading.Event(), threading.Event(), []
        self.thread = threading.Thread(target=self._run, args=(hold, timeout))

    def _run(self, hold: Callable[[], None], timeout: float) -> None:
        try:
            with transaction.atomic():
                hold()
                self.held.set()
                deadline = time.monotonic() + timeout
                while not self.waited.is_set() and time.monotonic() < deadline:
                    with connection.cursor() as cursor:
                        # A row lock is waited for on the holder's transaction id, which names no database: matched
                        # by backend.
                        cursor.execute(
                            "SELECT count(*) FROM pg_locks WHERE NOT granted AND pid IN "
                            "(SELECT pid FROM pg_stat_activity WHERE datname = current_database())"
                        )
                        if cursor.fetchone()[0]:
                            self.waited.set()
                    time.sleep(0.02)
        except Exception as exc:  # noqa: BLE001 - reported by finish()
            self.errors.append(exc)
        finally:
            self.held.set()
            connection.close()

    def start(self) -> None:
        """Start it, and return once ``hold`` ran and its transaction is still open."""
        self.thread.start()
        assert self.held.wait(30)

    def finish(self) -> None:
        """Wait for the commit, and check that it went well and that another connection waited for it."""
        self.thread.join(60)
        assert self.errors == [] and self.waited.is_set()


@pytest.mark.django_db(transaction=True)
@pytest.mark.skipif("connection.vendor != 'postgresql'", reason="SQLite runs one writer at a time")
def test_an_attempt_taken_over_while_it_finishes_registers_nothing_and_leaves_no_file(tiny_recipe, monkeypatch):
    # No progress write after the start: the only wait for the row is then the attempt's, to register its file.
    monkeypatch.setattr(services, "PROGRESS_WRITE_EVERY_S", 3600.0)
    run = _create(tiny_recipe, epochs=1)

    def take_over():
        # The reaper taking the run over, the row locked, just as the attempt finishes: the attempt must wait for
        # the hand-over before it registers its files, then find the run gone.
        TrainingRun.objects.select_for_update().get(pk=run.pk)
        TrainingRun.objects.filter(pk=run.pk).update(attempts=2, error="resumed elsewhere")

    reaper = _HeldInAnotherConnection(take_over, timeout=60)

    def on_progress(fraction, epoch, step, eta):
        if fraction >= 1.0 and not reaper.thread.is_alive():
            reaper.start()

    assert services.training_run_execute(run_id=run.pk, on_progress=on_progress) is None
    reaper.finish()
    assert list(services._run_dir(run).rglob("*.pt")) == []
    run.refresh_from_db()
    assert run.status == TrainingRun.Status.RUNNING and run.error == "resumed elsewhere"
    assert not run.checkpoints.exists()


@pytest.mark.django_db(transaction=True)
@pytest.mark.skipif("connection.vendor != 'postgresql'", reason="SQLite runs one writer at a time")
def test_two_first_activations_at_once_both_succeed_one_after_the_other(make_checkpoint):
    first, _ = make_checkpoint()
    second, _ = make_checkpoint()
    # The first activation still uncommitted while the second starts, the moment the two used to collide, and
    # until the second is seen waiting for it.
    holder = _HeldInAnotherConnection(lambda: services.checkpoint_activate(checkpoint=first), timeout=30)
    holder.start()
    services.checkpoint_activate(checkpoint=second)
    holder.finish()
    assert list(Checkpoint.objects.filter(is_active=True)) == [second]


# ---------------------------------------------------------------------------
# Deleting checkpoints


def _file(checkpoint):
    return settings.CHECKPOINT_DIR / checkpoint.path


@pytest.mark.django_db(transaction=True)
def test_pruning_deletes_the_epoch_checkpoints_of_finished_runs_and_their_files_only_once_committed(
    make_run_with_checkpoints,
):
    run, checkpoints = make_run_with_checkpoints(status=TrainingRun.Status.SUCCEEDED, epochs=3, final=True)
    epochs = [checkpoints[f"epoch-{epoch}"] for epoch in (1, 2, 3)]
    with transaction.atomic():
        result = services.checkpoints_prune()
        assert not Checkpoint.objects.filter(pk__in=[c.pk for c in epochs]).exists()
        assert all(_file(c).exists() for c in epochs)  # the deletion may still roll back
    assert not any(_file(c).exists() for c in epochs)
    assert [c.id for c in result.checkpoints] == [c.pk for c in epochs]
    assert result.count == 3 and result.bytes_freed == sum(c.size for c in epochs) > 0
    assert list(run.checkpoints.all()) == [checkpoints["final"]] and _file(checkpoints["final"]).exists()


def test_pruning_keeps_the_active_checkpoint_those_predictions_were_made_with_and_every_one_an_unfinished_run_may_resume_from(
    make_run_with_checkpoints, predict_with, django_capture_on_commit_callbacks
):
    _, done = make_run_with_checkpoints(status=TrainingRun.Status.SUCCEEDED, epochs=3, final=True)
    services.checkpoint_activate(checkpoint=done["epoch-1"])
    predict_with(done["epoch-2"])
    _, running = make_run_with_checkpoints(status=TrainingRun.Status.RUNNING, epochs=2)
    _, requeued = make_run_with_checkpoints(status=TrainingRun.Status.QUEUED, epochs=2)
    with django_capture_on_commit_callbacks(execute=True):
        result = services.checkpoints_prune()
    assert [c.id for c in result.checkpoints] == [done["epoch-3"].pk]
    kept = [done["epoch-1"], done["epoch-2"], done["final"], *running.values(), *requeued.values()]
    assert set(Checkpoint.objects.all()) == set(kept)
    assert all(_file(c).exists() for c in kept) and not _file(done["epoch-3"]).exists()


@pytest.mark.parametrize("status", [TrainingRun.Status.FAILED, TrainingRun.Status.CANCELLED])
def test_a_run_that_ended_without_a_final_checkpoint_keeps_its_last_epoch_checkpoint_when_pruned(
    make_run_with_checkpoints, status, django_capture_on_commit_callbacks
):
    run, checkpoints = make_run_with_checkpoints(status=status, epochs=3)
    with django_capture_on_commit_callbacks(execute=True):
        services.checkpoints_prune()
    assert list(run.checkpoints.all()) == [checkpoints["epoch-3"]] and _file(checkpoints["epoch-3"]).exists()
    assert not _file(checkpoints["epoch-1"]).exists() and not _file(checkpoints["epoch-2"]).exists()


def test_epoch_checkpoints_whose_run_is_gone_are_pruned_unless_active_or_predictions_were_made_with_them(
    make_run_with_checkpoints, make_checkpoint, predict_with, django_capture_on_commit_callbacks
):
    succeeded, done = make_run_with_checkpoints(status=TrainingRun.Status.SUCCEEDED, epochs=3, final=True)
    failed, stopped = make_run_with_checkpoints(status=TrainingRun.Status.FAILED, epochs=2)
    services.checkpoint_activate(checkpoint=done["epoch-1"])
    predict_with(done["epoch-2"])
    imported, _model = make_checkpoint()  # a final checkpoint registered without a run
    # Deleted by hand: the checkpoints stay, naming no run.
    TrainingRun.objects.filter(pk__in=[succeeded.pk, failed.pk]).delete()
    assert not Checkpoint.objects.exclude(run=None).exists()

    with django_capture_on_commit_callbacks(execute=True):
        result = services.checkpoints_prune()
    pruned = [done["epoch-3"], stopped["epoch-1"], stopped["epoch-2"]]
    assert sorted(c.id for c in result.checkpoints) == sorted(c.pk for c in pruned)
    assert {c.run_id for c in result.checkpoints} == {None}
    kept = [done["epoch-1"], done["epoch-2"], done["final"], imported]
    assert set(Checkpoint.objects.all()) == set(kept)
    assert all(_file(c).exists() for c in kept) and not any(_file(c).exists() for c in pruned)


@pytest.mark.django_db(transaction=True)
def test_a_prune_of_checkpoints_whose_run_is_gone_removes_their_files_only_once_committed(make_run_with_checkpoints):
    run, checkpoints = make_run_with_checkpoints(status=TrainingRun.Status.SUCCEEDED, epochs=2, final=True)
    TrainingRun.objects.filter(pk=run.pk).delete()
    epochs = [checkpoints["epoch-1"], checkpoints["epoch-2"]]
    with pytest.raises(RuntimeError), transaction.atomic():
        assert services.checkpoints_prune().count == 2
        assert all(_file(c).exists() for c in epochs)
        raise RuntimeError("the caller's transaction fails after the prune")
    assert Checkpoint.objects.count() == 3 and all(_file(c).exists() for c in checkpoints.values())
    assert services.checkpoints_prune().count == 2
    assert list(Checkpoint.objects.all()) == [checkpoints["final"]] and not any(_file(c).exists() for c in epochs)


def test_a_dry_run_prune_lists_what_it_would_delete_and_deletes_nothing(
    make_run_with_checkpoints, django_capture_on_commit_callbacks
):
    _, checkpoints = make_run_with_checkpoints(status=TrainingRun.Status.SUCCEEDED, epochs=2, final=True)
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        result = services.checkpoints_prune(dry_run=True)
    assert result.dry_run
    assert [c.id for c in result.checkpoints] == [checkpoints["epoch-1"].pk, checkpoints["epoch-2"].pk]
    assert callbacks == [] and Checkpoint.objects.count() == 3
    assert all(_file(c).exists() for c in checkpoints.values())


@pytest.mark.django_db(transaction=True)
def test_a_prune_that_rolls_back_leaves_every_row_and_file(make_run_with_checkpoints):
    _, checkpoints = make_run_with_checkpoints(status=TrainingRun.Status.SUCCEEDED, epochs=2, final=True)
    with pytest.raises(RuntimeError), transaction.atomic():
        assert services.checkpoints_prune().count == 2
        raise RuntimeError("the caller's transaction fails after the prune")
    assert Checkpoint.objects.count() == 3 and all(_file(c).exists() for c in checkpoints.values())


def test_pruning_a_checkpoint_whose_file_is_already_gone_deletes_its_row_and_never_touches_files_no_row_names(
    make_run_with_checkpoints, django_capture_on_commit_callbacks, caplog
):
    run, checkpoints = make_run_with_checkpoints(status=TrainingRun.Status.SUCCEEDED, epochs=2, final=True)
    _file(checkpoints["epoch-1"]).unlink()
    # Another database's run sharing the volume, and a file of this run's folder that no row names.
    foreign = settings.CHECKPOINT_DIR / "runs" / f"{run.pk}-20200101T000000000000Z" / "attempt-1" / "epoch-1.pt"
    foreign.parent.mkdir(parents=True)
    foreign.write_bytes(b"another database's checkpoint")
    stray = _file(checkpoints["epoch-2"]).with_name("epoch-7.pt")
    stray.write_bytes(b"not a registered checkpoint")
    with django_capture_on_commit_callbacks(execute=True):
        assert services.checkpoints_prune().count == 2
    assert list(run.checkpoints.all()) == [checkpoints["final"]] and not _file(checkpoints["epoch-2"]).exists()
    assert foreign.read_bytes() == b"another database's checkpoint" and stray.exists()
    assert [record.getMessage() for record in caplog.records if record.levelno >= logging.WARNING] == []


def test_deleting_every_checkpoint_of_a_run_removes_its_emptied_folders_and_keeps_those_still_holding_files(
    make_run_with_checkpoints, django_capture_on_commit_callbacks
):
    emptied, emptied_checkpoints = make_run_with_checkpoints(status=TrainingRun.Status.SUCCEEDED, epochs=2, final=True)
    holding, holding_checkpoints = make_run_with_checkpoints(status=TrainingRun.Status.SUCCEEDED, epochs=1, final=True)
    stray = _file(holding_checkpoints["final"]).with_name("notes.txt")
    stray.write_text("kept by whoever wrote it")
    with django_capture_on_commit_callbacks(execute=True):
        services.checkpoints_delete(checkpoints=[*emptied_checkpoints.values(), *holding_checkpoints.values()])
    assert not services._run_dir(emptied).exists()
    assert stray.read_text() == "kept by whoever wrote it"
    assert (settings.CHECKPOINT_DIR / "runs").is_dir()


def test_deleting_a_checkpoint_removes_its_file_once_committed(make_checkpoint, django_capture_on_commit_callbacks):
    checkpoint, _ = make_checkpoint()
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        services.checkpoint_delete(checkpoint=checkpoint)
    assert not Checkpoint.objects.exists() and _file(checkpoint).exists()
    for callback in callbacks:
        callback()
    assert not _file(checkpoint).exists()


def test_deleting_checkpoints_that_are_still_needed_is_refused_and_deletes_none_of_those_asked(
    make_checkpoint, make_run_with_checkpoints, predict_with, django_capture_on_commit_callbacks
):
    active, _ = make_checkpoint(activate=True)
    used, _ = make_checkpoint()
    predict_with(used)
    _, running = make_run_with_checkpoints(status=TrainingRun.Status.RUNNING, epochs=1)
    unneeded, _ = make_checkpoint()
    asked = [active, used, running["epoch-1"], unneeded]
    with django_capture_on_commit_callbacks(execute=True), pytest.raises(services.CheckpointInUseError) as refused:
        services.checkpoints_delete(checkpoints=asked)
    assert refused.value.reasons == [
        f"{active} is the active checkpoint: activate another one before deleting it.",
        f"{used} made predictions, which keep naming the model that made them: it cannot be deleted.",
        f"{running['epoch-1']} belongs to run {running['epoch-1'].run_id}, which is still running and may resume "
        "from it: delete it once the run has finished.",
    ]
    assert Checkpoint.objects.count() == 4 and all(_file(c).exists() for c in asked)


def test_activating_a_checkpoint_deleted_since_it_was_read_leaves_the_active_one_active(make_checkpoint):
    active, _ = make_checkpoint(activate=True)
    deleted, _ = make_checkpoint()
    Checkpoint.objects.filter(pk=deleted.pk).delete()  # its file stays: loading it still succeeds
    with pytest.raises(services.CheckpointNotLoadableError, match="has been deleted"):
        services.checkpoint_activate(checkpoint=deleted)
    assert Checkpoint.objects.get(is_active=True) == active
