"""Training services: a trainer running a queued run (claim, device, resuming, outcome, activation, shutdown)."""
import logging
import math
import re
from datetime import UTC

import pytest
import torch
from celery.exceptions import SoftTimeLimitExceeded
from django.conf import settings
from django.db import connection
from torch.optim.optimizer import register_optimizer_step_post_hook

from training import services
from training.ml.atomic import sha256_file
from tests.devices import requires_cuda, requires_no_cuda
from training.models import TrainingRun

pytestmark = pytest.mark.django_db


def _create(recipe, **overrides):
    return services.training_run_create(created_by=None, enqueue=False, **{**recipe, **overrides})


def _sent_run_ids(queue) -> list[int]:
    return [message["kwargs"]["run_id"] for message in queue.messages()]


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
    assert final.validation_accuracy == run.validation_accuracy == run.metrics[-1]["validation_accuracy"]
    folder = f"runs/{run.pk}-{run.created_at.astimezone(UTC):%Y%m%dT%H%M%S%fZ}"
    assert final.path == f"{folder}/attempt-1/final.pt"
    assert final.sha256 == sha256_file(settings.CHECKPOINT_DIR / final.path)
    assert final.size == (settings.CHECKPOINT_DIR / final.path).stat().st_size
    epoch_checkpoint = run.checkpoints.get(is_final=False)
    assert epoch_checkpoint.path == f"{folder}/attempt-1/epoch-1.pt" and not epoch_checkpoint.is_active
    # Epoch checkpoints carry what they are compared by, never a test accuracy: the test set must pick nothing.
    assert epoch_checkpoint.validation_accuracy == final.validation_accuracy and epoch_checkpoint.test_accuracy is None


def test_a_runs_start_is_logged_with_its_attempt_device_images_and_epochs_as_its_end_is(tiny_recipe, caplog):
    run = _create(tiny_recipe)
    with caplog.at_level(logging.INFO, logger="training.services.execution"):
        services.training_run_execute(run_id=run.pk)
    said = [record.getMessage() for record in caplog.records if record.name == "training.services.execution"]
    assert said[0] == f"training run {run.pk} attempt 1 started: mlp on cpu, 300 images, 1 epochs"
    assert said[-1].startswith(f"training run {run.pk} succeeded: checkpoint ")


def test_a_run_trains_on_all_but_the_last_5000_training_images_and_validates_each_epoch_on_exactly_those(tiny_recipe):
    from collections import Counter

    from training.ml.architectures import Mlp
    from training.ml.data import MNIST_MEAN, MNIST_STD, load_split

    seen = {True: [], False: []}

    def record(module, args):
        if isinstance(module, Mlp):
            # Back to the uint8 pixels the batch was made from (no augmentation in this recipe).
            pixels = torch.round((args[0] * MNIST_STD + MNIST_MEAN) * 255).to(torch.uint8)
            seen[module.training].append(pixels.reshape(-1, 28 * 28))

    run = _create(tiny_recipe, train_subset=None, batch_size=500)
    handle = torch.nn.modules.module.register_module_forward_pre_hook(record)
    try:
        services.training_run_execute(run_id=run.pk)
    finally:
        handle.remove()
    run.refresh_from_db()
    assert run.status == TrainingRun.Status.SUCCEEDED, run.error
    images = load_split(settings.DATA_DIR, split="train").images.reshape(-1, 28 * 28)
    trained_on = torch.cat(seen[True])
    assert Counter(row.numpy().tobytes() for row in trained_on) == Counter(
        row.numpy().tobytes() for row in images[:55_000]
    )
    # Evaluated: the epoch on the validation set, then the final model once on the 10,000 test images.
    evaluated = torch.cat(seen[False])
    assert len(evaluated) == 5_000 + 10_000
    assert torch.equal(evaluated[:5_000], images[55_000:])
    assert run.confusion_matrix is not None and sum(map(sum, run.confusion_matrix)) == 10_000


@pytest.mark.parametrize("lost", ["the permission", "the account"])
def test_a_run_whose_starter_lost_the_right_to_change_checkpoints_registers_its_model_without_activating_it(
    tiny_recipe, django_user_model, lost
):
    from django.contrib.auth.models import Permission

    starter = django_user_model.objects.create_user(username="trainer", password="x9!kQ2#vLp", is_staff=True)
    starter.user_permissions.add(*Permission.objects.filter(codename__in=["add_trainingrun", "change_checkpoint"]))
    run = services.training_run_create(created_by=starter, enqueue=False, **{**tiny_recipe, "activate_on_success": True})
    if lost == "the permission":
        starter.user_permissions.clear()
    else:
        django_user_model.objects.filter(pk=starter.pk).update(is_active=False)

    services.training_run_execute(run_id=run.pk)

    run.refresh_from_db()
    assert run.status == TrainingRun.Status.SUCCEEDED
    assert not run.checkpoints.get(is_final=True).is_active
    assert "Not made active: trainer may no longer change checkpoints; activate it by hand." in run.error


def test_a_cnn_run_the_form_allows_of_exactly_five_steps_succeeds(tiny_recipe):
    # The one-cycle schedule's warm-up is a fifth of the steps: one step here, which torch divided by zero over.
    run = _create(tiny_recipe, architecture="cnn", epochs=1, batch_size=2, train_subset=10, learning_rate=0.1)
    services.training_run_execute(run_id=run.pk)
    run.refresh_from_db()
    assert run.status == TrainingRun.Status.SUCCEEDED, run.error
    assert run.total_steps == 5 and len(run.metrics) == 1


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
    with caplog.at_level(logging.WARNING, logger="training.services.execution"):
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


def test_a_run_asked_to_activate_when_done_compares_validation_accuracies_not_test_ones(tiny_recipe, make_checkpoint):
    # The active model tests far worse but validates better: validation decides, and the message says so.
    better, _ = make_checkpoint(activate=True, accuracy=0.01, validation_accuracy=0.9954)
    run = _create(tiny_recipe, activate_on_success=True)
    services.training_run_execute(run_id=run.pk)
    run.refresh_from_db()
    better.refresh_from_db()
    final = run.checkpoints.get(is_final=True)
    assert run.status == TrainingRun.Status.SUCCEEDED and run.test_accuracy > 0.01
    assert run.validation_accuracy < 0.9954
    assert better.is_active and not final.is_active
    assert run.error == (
        f"Not activated: its {run.validation_accuracy:.2%} validation accuracy is below the active checkpoint's "
        f"99.54% (checkpoint {better.pk}, mlp); activate checkpoint {final.pk} by hand to use it anyway."
    )


def test_a_run_asked_to_activate_when_done_replaces_a_model_that_tests_better_but_validates_worse(
    tiny_recipe, make_checkpoint
):
    worse, _ = make_checkpoint(activate=True, accuracy=0.9954, validation_accuracy=0.01)
    run = _create(tiny_recipe, activate_on_success=True)
    services.training_run_execute(run_id=run.pk)
    run.refresh_from_db()
    assert run.test_accuracy < 0.9954 and run.error == ""
    assert run.checkpoints.get(is_final=True).is_active


def test_a_run_whose_model_learned_nothing_succeeds_but_says_so_and_replaces_no_better_model(
    tiny_recipe, make_checkpoint
):
    active, _ = make_checkpoint(activate=True, accuracy=0.5)
    # Three hundred images, one epoch: too little for the CNN's recipe, which stays at chance.
    run = _create(tiny_recipe, architecture="cnn", device="cpu", activate_on_success=True)
    services.training_run_execute(run_id=run.pk)
    run.refresh_from_db()
    assert run.status == TrainingRun.Status.SUCCEEDED and run.test_accuracy < 0.2
    assert run.error.startswith(
        f"Its model learned next to nothing: {run.test_accuracy:.2%} test accuracy, where guessing scores 10%; "
        "train on more images or for more epochs. Not activated: its "
    )
    active.refresh_from_db()
    assert active.is_active


@pytest.mark.parametrize(("learning_rate", "advice"), [
    (5.0, "its learning rate, 5, is likely too high (the recipe's is 0.1)"),
    (0.1, "train on more images or for more epochs"),
])
def test_the_note_on_a_model_that_learned_nothing_says_what_to_change(learning_rate, advice):
    from training.services.execution import _learned_nothing_note

    run = TrainingRun(architecture="cnn", learning_rate=learning_rate)
    assert _learned_nothing_note(run=run, accuracy=0.25) == ""
    assert _learned_nothing_note(run=run, accuracy=0.1029) == (
        f"Its model learned next to nothing: 10.29% test accuracy, where guessing scores 10%; {advice}."
    )


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


def test_a_run_asked_to_activate_when_done_replaces_a_worse_active_checkpoint(
    tiny_recipe, make_checkpoint, staff_user
):
    from django.contrib.admin.models import LogEntry

    worse, _ = make_checkpoint(activate=True, accuracy=0.0)
    run = services.training_run_create(created_by=staff_user, enqueue=False, **tiny_recipe, activate_on_success=True)
    services.training_run_execute(run_id=run.pk)
    run.refresh_from_db()
    worse.refresh_from_db()
    final = run.checkpoints.get(is_final=True)
    assert final.is_active and not worse.is_active and run.error == ""
    # Each checkpoint's history names who asked for it, and how.
    checkpoints = LogEntry.objects.filter(content_type__model="checkpoint").order_by("pk")
    assert [(entry.user, entry.object_id, entry.get_change_message()) for entry in checkpoints] == [
        (staff_user, str(final.pk),
         f"Activated when training run {run.pk} succeeded, replacing checkpoint {worse.pk} (mlp, 0.00% test accuracy)."),
        (staff_user, str(worse.pk),
         f"Deactivated when training run {run.pk} succeeded: checkpoint {final.pk} replaced it."),
    ]


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


def test_the_next_attempt_of_a_run_clears_the_temp_files_of_writes_killed_in_the_last_and_keeps_the_files_written(
    tiny_recipe, killed_write
):
    from training.ml.atomic import atomic_write_bytes

    run = _create(tiny_recipe)
    # Its first attempt was killed while writing its final checkpoint, after writing its first epoch's.
    TrainingRun.objects.filter(pk=run.pk).update(attempts=1)
    attempt = services.run_files.run_dir(run) / "attempt-1"
    atomic_write_bytes(attempt / "epoch-1.pt", b"written whole")
    left = killed_write(attempt / "final.pt", age_s=services.ABANDONED_TEMP_FILE_AGE_S + 60)
    services.training_run_execute(run_id=run.pk)
    run.refresh_from_db()
    assert (run.status, run.attempts) == (TrainingRun.Status.SUCCEEDED, 2), run.error
    assert not left.exists() and (attempt / "epoch-1.pt").read_bytes() == b"written whole"


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


def _stored_numbers(value):
    """Every number in a stored value, nested in JSON lists and objects too."""
    if isinstance(value, dict):
        return [number for item in value.values() for number in _stored_numbers(item)]
    if isinstance(value, list):
        return [number for item in value for number in _stored_numbers(item)]
    return [value] if isinstance(value, float) else []


def _all_stored_numbers(run):
    rows = [TrainingRun.objects.filter(pk=run.pk).values().get()]
    rows += list(run.checkpoints.values())
    return _stored_numbers(rows)


def test_a_run_whose_loss_diverges_fails_saying_where_and_what_to_do_and_stores_no_model_and_no_nan(diverged_run):
    run = diverged_run
    assert run.status == TrainingRun.Status.FAILED and run.finished_at is not None
    assert re.fullmatch(
        r"Training diverged: the training loss became (nan|inf) at step \d+ of epoch 1; "
        r"lower the learning rate \(it was 1e\+06\)\.",
        run.error,
    ), run.error
    assert not run.checkpoints.exists() and not list(services.run_files.run_dir(run).rglob("*.pt"))
    assert run.metrics == [] and run.test_accuracy is None and run.eta_seconds is None
    assert all(math.isfinite(number) for number in _all_stored_numbers(run))


def test_a_diverging_run_is_logged_as_one_line_for_staff_not_as_a_crash_with_a_traceback(caplog):
    from tests.training.conftest import train_a_diverging_run

    with caplog.at_level(logging.WARNING, logger="training.services.execution"):
        train_a_diverging_run()
    [record] = caplog.records
    assert record.exc_info is None and "lower the learning rate" in record.getMessage()


def test_a_run_that_diverges_after_its_first_epoch_keeps_that_epochs_metrics_and_checkpoint_and_activates_nothing(
    tiny_recipe,
):
    from training.loading import checkpoint_load_model

    run = _create(tiny_recipe, epochs=3, device="cpu", activate_on_success=True)
    steps_per_epoch = tiny_recipe["train_subset"] // tiny_recipe["batch_size"]
    steps = []

    def ruin_the_weights_at_the_first_step_of_epoch_two(optimizer, args, kwargs):
        steps.append(1)
        if len(steps) == steps_per_epoch + 1:
            with torch.no_grad():
                optimizer.param_groups[0]["params"][0].fill_(float("nan"))

    handle = register_optimizer_step_post_hook(ruin_the_weights_at_the_first_step_of_epoch_two)
    try:
        services.training_run_execute(run_id=run.pk)
    finally:
        handle.remove()
    run.refresh_from_db()
    assert run.status == TrainingRun.Status.FAILED
    assert re.fullmatch(r"Training diverged: the training loss became nan at step \d+ of epoch 2; .*", run.error)
    assert [row["epoch"] for row in run.metrics] == [1]
    # What the run showed while it trained: its epoch's validation accuracy; no final model, so no test accuracy.
    assert run.validation_accuracy == run.metrics[0]["validation_accuracy"] and run.current_epoch >= 1
    assert run.test_accuracy is None and "test_accuracy" not in run.metrics[0]
    (kept,) = run.checkpoints.all()
    assert (kept.epoch, kept.is_final, kept.is_active) == (1, False, False)
    assert kept.validation_accuracy == run.validation_accuracy and kept.test_accuracy is None
    checkpoint_load_model(checkpoint=kept)
    assert all(math.isfinite(number) for number in _all_stored_numbers(run))


@pytest.mark.django_db(transaction=True)
@pytest.mark.skipif(connection.vendor != "postgresql", reason="ends the server process of a PostgreSQL connection")
def test_a_run_that_loses_its_database_connection_as_it_finishes_is_queued_again_at_once_to_resume(
    tiny_recipe, training_queue, monkeypatch
):
    from training.services import execution

    run = _create(tiny_recipe, epochs=1)
    register = execution.checkpoint_register

    def connection_lost_as_the_final_model_is_registered(**kwargs):
        # The final registration, in its transaction, meets a server restarted (or failed over) meanwhile.
        pid = connection.connection.info.backend_pid
        killer = connection.get_new_connection(connection.get_connection_params())
        killer.execute("SELECT pg_terminate_backend(%s)", [pid])
        killer.close()
        return register(**kwargs)

    monkeypatch.setattr(execution, "checkpoint_register", connection_lost_as_the_final_model_is_registered)
    assert services.training_run_execute(run_id=run.pk) is None
    run.refresh_from_db()
    # Not left running, its progress frozen, until the reaper took it for a dead trainer's two minutes on.
    assert (run.status, run.attempts) == (TrainingRun.Status.QUEUED, 1)
    assert run.error == "The connection to the database was lost during attempt 1; it resumes from its last epoch checkpoint."
    assert _sent_run_ids(training_queue) == [run.pk]
    assert not run.checkpoints.filter(is_final=True).exists()

    monkeypatch.setattr(execution, "checkpoint_register", register)
    services.training_run_execute(run_id=run.pk)
    run.refresh_from_db()
    assert (run.status, run.attempts, run.error) == (TrainingRun.Status.SUCCEEDED, 2, "")


@pytest.mark.django_db(transaction=True)
@pytest.mark.skipif(connection.vendor != "postgresql", reason="ends the server process of a PostgreSQL connection")
def test_a_final_model_whose_registration_committed_as_the_connection_was_lost_keeps_its_file(
    tiny_recipe, training_queue, monkeypatch
):
    from django.db import OperationalError

    from training.loading import checkpoint_load_model
    from training.services import execution

    run = _create(tiny_recipe, epochs=1, activate_on_success=True)
    register, commit = execution.checkpoint_register, connection._commit
    final_registered = []

    def register_noting_the_final(**kwargs):
        final_registered.append(kwargs["is_final"])
        return register(**kwargs)

    def commit_whose_answer_is_lost():
        # The server committed; the connection died before its answer reached the trainer.
        commit()
        if final_registered and final_registered[-1]:
            final_registered.clear()
            pid = connection.connection.info.backend_pid
            killer = connection.get_new_connection(connection.get_connection_params())
            killer.execute("SELECT pg_terminate_backend(%s)", [pid])
            killer.close()
            raise OperationalError("server closed the connection unexpectedly")

    monkeypatch.setattr(execution, "checkpoint_register", register_noting_the_final)
    monkeypatch.setattr(connection, "_commit", commit_whose_answer_is_lost)
    services.training_run_execute(run_id=run.pk)
    monkeypatch.undo()
    connection.close()

    run.refresh_from_db()
    assert run.status == TrainingRun.Status.SUCCEEDED
    final = run.checkpoints.get(is_final=True)
    assert final.is_active
    # The model everyone is now served by still loads: its file was not taken for one nothing names.
    checkpoint_load_model(checkpoint=final)
