"""Predictions executed by a REAL Celery worker process on the real broker."""
import io
import time

import pytest

from classifier import services
from classifier.models import Prediction
from mnistsite.celery import app
from tests.devices import requires_cuda

pytestmark = pytest.mark.worker


def wait_for(prediction_id: int, *, timeout: float = 60) -> Prediction:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        prediction = Prediction.objects.get(pk=prediction_id)
        if prediction.status in ("done", "failed"):
            return prediction
        time.sleep(0.1)
    raise AssertionError(f"prediction {prediction_id} still {prediction.status} after {timeout}s")


def test_the_task_is_routed_to_the_inference_queue_with_json_and_late_acks():
    from classifier.tasks import predictions_execute

    assert app.amqp.router.route({}, predictions_execute.name)["queue"].name == "inference"
    assert predictions_execute.acks_late and predictions_execute.time_limit
    assert predictions_execute.autoretry_for


def test_an_upload_is_predicted_by_a_real_worker(celery_worker_process, user, digit_png, active_checkpoint):
    (submitted,) = services.predictions_submit(owner=user, files=[(io.BytesIO(digit_png(0)), "seven.png")], source="file")
    prediction = wait_for(submitted.pk)
    assert prediction.status == "done", prediction.error
    assert prediction.digit == 7
    assert sum(prediction.probabilities) == pytest.approx(1.0, abs=1e-6)
    assert prediction.checkpoint_id == active_checkpoint.pk
    assert len(prediction.input_pixels) == 28 * 28 and prediction.queue_ms is not None and prediction.compute_ms > 0


@requires_cuda
def test_worker_pool_processes_forked_from_one_parent_each_predict_on_the_gpu(
    start_celery_worker, user, digit_png, active_checkpoint, mnist_image, settings
):
    # CUDA cannot be used in a child forked after the parent initialised it, so this fails
    # if anything touches the GPU before the pool forks.
    settings.INFERENCE_BATCH_SIZE = 1  # one message per image, so both pool processes get some
    worker = start_celery_worker(concurrency=2, TORCH_DEVICE="cuda", INFERENCE_BATCH_SIZE="1")
    files = [(io.BytesIO(digit_png(index)), f"{index}.png") for index in range(8)]
    submitted = services.predictions_submit(owner=user, files=files, source="file")
    done = [wait_for(prediction.pk) for prediction in submitted]
    assert [p.status for p in done] == ["done"] * 8, [p.error for p in done]
    assert {p.device for p in done} == {"cuda"}
    assert sum(p.digit == mnist_image(index)[1] for index, p in enumerate(done)) >= 6
    assert worker.log().count("loaded checkpoint") == 2, worker.log()


def test_a_persons_upload_is_read_before_a_staff_re_run_queued_ahead_of_it(
    start_celery_worker, user, digit_png, active_checkpoint, settings
):
    # One prediction a message, here and in the worker: predictions are then read in the order their messages are taken.
    settings.INFERENCE_BATCH_SIZE = 1
    earlier = [services.upload_create(owner=user, file=io.BytesIO(digit_png(i)), source="file") for i in range(6)]
    rerun = services.predictions_rerun(uploads=earlier, priority=services.PRIORITY_BULK)
    (mine,) = services.predictions_submit(owner=user, files=[(io.BytesIO(digit_png(0)), "seven.png")], source="file")

    start_celery_worker(INFERENCE_BATCH_SIZE="1")

    read = [wait_for(prediction.pk) for prediction in [mine, *rerun]]
    assert all(prediction.status == "done" for prediction in read), [p.error for p in read]
    assert read[0].started_at < min(prediction.started_at for prediction in read[1:])


def test_a_staff_re_run_whose_backlog_the_sweeper_sends_again_still_waits_behind_a_persons_upload(
    start_celery_worker, user, digit_png, active_checkpoint, settings
):
    import datetime as dt

    from django.utils import timezone

    settings.INFERENCE_BATCH_SIZE = 1
    earlier = [services.upload_create(owner=user, file=io.BytesIO(digit_png(i)), source="file") for i in range(6)]
    rerun = services.predictions_rerun(uploads=earlier, priority=services.PRIORITY_BULK)
    # A long re-run's backlog waits past the republish age only because it is long; the sweeper sends it again.
    long_ago = timezone.now() - dt.timedelta(seconds=settings.PREDICTION_REPUBLISH_AFTER_SECONDS + 60)
    Prediction.objects.filter(pk__in=[p.pk for p in rerun]).update(created_at=long_ago, published_at=long_ago)
    assert services.predictions_sweep() == len(rerun)
    (mine,) = services.predictions_submit(owner=user, files=[(io.BytesIO(digit_png(0)), "seven.png")], source="file")

    start_celery_worker(INFERENCE_BATCH_SIZE="1")

    read = [wait_for(prediction.pk) for prediction in [mine, *rerun]]
    assert all(prediction.status == "done" for prediction in read), [p.error for p in read]
    assert read[0].started_at < min(prediction.started_at for prediction in read[1:])


def test_a_redelivered_message_keeps_one_result_and_is_not_recomputed(celery_worker_process, user, digit_png, active_checkpoint):
    from classifier.tasks import predictions_execute

    upload = services.upload_create(owner=user, file=io.BytesIO(digit_png(1)), source="file")
    (prediction,) = services.predictions_create(uploads=[upload], publish=False)
    predictions_execute.apply_async(args=[[prediction.pk]])
    first = wait_for(prediction.pk)
    # The same message again, as after a lost acknowledgement.
    predictions_execute.apply_async(args=[[prediction.pk]])
    celery_worker_process.wait_for_output("already running or finished", timeout=30)
    again = Prediction.objects.get(pk=prediction.pk)
    assert (again.finished_at, again.compute_ms, again.digit) == (first.finished_at, first.compute_ms, first.digit)
    assert Prediction.objects.filter(upload=upload).count() == 1


def test_a_newly_activated_checkpoint_is_used_without_restarting_the_worker(
    celery_worker_process, user, digit_png, active_checkpoint, register_checkpoint, always_seven_model_file
):
    (first,) = services.predictions_submit(owner=user, files=[(io.BytesIO(digit_png(1)), "two.png")], source="file")
    before = wait_for(first.pk)
    assert before.digit == 2 and before.checkpoint_id == active_checkpoint.pk

    seven = register_checkpoint(always_seven_model_file, name="seven")
    (second,) = services.predictions_submit(owner=user, files=[(io.BytesIO(digit_png(1)), "two.png")], source="file")
    after = wait_for(second.pk)
    assert after.checkpoint_id == seven.pk
    assert after.digit == 7  # the always-seven model really answered
    assert celery_worker_process.log().count("loaded checkpoint") == 2


def test_a_checkpoint_staff_roll_back_from_and_delete_never_answers_again_in_a_worker_that_had_it_loaded(
    celery_worker_process, user, digit_png, active_checkpoint, register_checkpoint, always_seven_model_file,
    django_capture_on_commit_callbacks,
):
    from training import services as training_services
    from training.models import Checkpoint

    seven = register_checkpoint(always_seven_model_file, name="seven")
    (first,) = services.predictions_submit(owner=user, files=[(io.BytesIO(digit_png(1)), "two.png")], source="file")
    assert wait_for(first.pk).checkpoint_id == seven.pk  # the worker now holds the always-seven model

    training_services.checkpoint_activate(checkpoint=active_checkpoint)
    # A checkpoint that made predictions is kept for their sake: they go first, then the checkpoint and its file.
    with django_capture_on_commit_callbacks(execute=True):
        services.upload_delete(upload=first.upload)
        training_services.checkpoint_delete(checkpoint=seven)
    assert not Checkpoint.objects.filter(pk=seven.pk).exists()

    (second,) = services.predictions_submit(owner=user, files=[(io.BytesIO(digit_png(1)), "two.png")], source="file")
    after = wait_for(second.pk)
    assert (after.status, after.checkpoint_id, after.digit) == ("done", active_checkpoint.pk, 2), after.error
    assert f"loaded checkpoint {active_checkpoint.pk} on cpu" in celery_worker_process.log()


def _as_a_database_recreated_empty():
    """No uploads, predictions or checkpoints left, and checkpoint ids starting again at 1."""
    from django.core.management.color import no_style
    from django.db import connection

    from classifier.models import Upload
    from training.models import Checkpoint

    Upload.objects.all().delete()
    Checkpoint.objects.all().delete()
    with connection.cursor() as cursor:
        for statement in connection.ops.sequence_reset_by_name_sql(
            no_style(), [{"table": Checkpoint._meta.db_table, "column": "id"}]
        ):
            cursor.execute(statement)


def test_a_worker_never_answers_with_the_model_it_holds_for_a_checkpoint_id_that_now_names_another_model(
    celery_worker_process, user, digit_png, register_checkpoint, trained_model_file, always_seven_model_file
):
    _as_a_database_recreated_empty()
    trained = register_checkpoint(trained_model_file, name="trained")
    (first,) = services.predictions_submit(owner=user, files=[(io.BytesIO(digit_png(1)), "two.png")], source="file")
    assert wait_for(first.pk).digit == 2  # the worker now holds the trained model, as checkpoint 1

    # The database volume recreated empty (or an older dump restored) while the worker runs on: its first
    # checkpoint is checkpoint 1 again, another model.
    _as_a_database_recreated_empty()
    seven = register_checkpoint(always_seven_model_file, name="seven")
    assert seven.pk == trained.pk

    (second,) = services.predictions_submit(owner=user, files=[(io.BytesIO(digit_png(1)), "two.png")], source="file")
    after = wait_for(second.pk)
    assert (after.status, after.checkpoint_id, after.digit) == ("done", seven.pk, 7), after.error
    assert celery_worker_process.log().count("loaded checkpoint") == 2


def test_the_sweeper_task_publishes_what_the_broker_missed(celery_worker_process, user, digit_png, active_checkpoint, settings):
    upload = services.upload_create(owner=user, file=io.BytesIO(digit_png(2)), source="file")
    (prediction,) = services.predictions_create(uploads=[upload], publish=False)  # as if the broker had been down
    settings.PREDICTION_REPUBLISH_AFTER_SECONDS = 0
    time.sleep(0.05)
    assert services.predictions_sweep() == 1
    assert wait_for(prediction.pk).status == "done"


def test_the_files_of_a_large_deletion_are_removed_by_a_real_worker_after_peoples_uploads(
    start_celery_worker, user, other_user, digit_png, active_checkpoint, monkeypatch
):
    from pathlib import Path

    from accounts.services import account_delete
    from classifier.services import files

    paths = [Path(services.upload_create(owner=user, file=io.BytesIO(digit_png(i)), source="file").image.path)
             for i in range(5)]
    monkeypatch.setattr(files, "FILES_DELETE_HERE_MAX", 2)  # here; the worker removes a message's 2 itself
    account_delete(user=user)
    (mine,) = services.predictions_submit(owner=other_user, files=[(io.BytesIO(digit_png(0)), None)], source="file")

    worker = start_celery_worker()

    def removals() -> list[str]:
        return [line for line in worker.log().splitlines()
                if "tasks.upload_files_delete[" in line and "succeeded" in line]

    deadline = time.monotonic() + 30
    while len(removals()) < 3 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert len(removals()) == 3, worker.log()
    assert not any(path.exists() for path in paths)
    assert wait_for(mine.pk).status == "done"
    # Queued after the removals, the upload was taken first.
    assert worker.log().index("tasks.predictions_execute[") < worker.log().index("tasks.upload_files_delete["), \
        worker.log()
