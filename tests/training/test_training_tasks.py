"""Training tasks through a real Celery worker process, and the task wrappers' idempotence."""
import time
from datetime import timedelta
from pathlib import Path

import pytest
from django.conf import settings
from django.utils import timezone

from training import services, tasks
from training.ml.atomic import sha256_file
from training.models import TrainingRun


def _wait_for(run_id: int, predicate, *, timeout: float, worker=None) -> TrainingRun:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run = TrainingRun.objects.get(pk=run_id)
        if predicate(run):
            return run
        time.sleep(0.3)
    log = worker.log()[-4000:] if worker is not None else ""
    raise AssertionError(f"run {run_id} stuck in {run.status} ({run.progress:.0%}, {run.error}):\n{log}")


@pytest.mark.worker
def test_a_tiny_run_trains_end_to_end_in_a_real_worker(celery_worker_process, tiny_recipe):
    run = services.training_run_create(created_by=None, activate_on_success=True, **tiny_recipe)
    run = _wait_for(run.pk, lambda r: r.is_finished, timeout=120, worker=celery_worker_process)
    assert run.status == TrainingRun.Status.SUCCEEDED, run.error
    assert run.celery_task_id and run.device == "cpu" and run.heartbeat_at is not None
    final = run.checkpoints.get(is_final=True)
    assert final.is_active and final.test_accuracy == run.test_accuracy > 0.5
    assert final.sha256 == sha256_file(settings.CHECKPOINT_DIR / final.path)


@pytest.mark.worker
def test_a_running_run_in_a_real_worker_stops_when_cancelled(celery_worker_process, tiny_recipe):
    # Enough steps that the run is still training when the cancel request lands.
    run = services.training_run_create(
        created_by=None, **{**tiny_recipe, "epochs": 20, "batch_size": 10, "train_subset": 20_000}
    )
    _wait_for(run.pk, lambda r: r.status == TrainingRun.Status.RUNNING and r.progress > 0, timeout=90,
              worker=celery_worker_process)
    services.training_run_cancel(run=run)
    run = _wait_for(run.pk, lambda r: r.is_finished, timeout=30, worker=celery_worker_process)
    assert run.status == TrainingRun.Status.CANCELLED
    assert run.progress < 1 and not run.checkpoints.filter(is_final=True).exists()


@pytest.mark.worker
def test_a_run_longer_than_the_brokers_visibility_timeout_is_never_handed_to_a_second_trainer(
    start_celery_worker, tiny_recipe
):
    # Far longer than the test settings' visibility timeout (10 s); cancelled once that has passed.
    first = start_celery_worker(queues="training", name="trainer-1")
    run = services.training_run_create(
        created_by=None, **{**tiny_recipe, "epochs": 50, "batch_size": 10, "train_subset": 55_000}
    )
    run = _wait_for(run.pk, lambda r: r.status == TrainingRun.Status.RUNNING and r.progress > 0, timeout=90,
                    worker=first)
    second = start_celery_worker(queues="training", name="trainer-2")
    options = settings.CELERY_BROKER_TRANSPORT_OPTIONS
    # Past the timeout, and past the scans that would hand the message out again.
    time.sleep(options["visibility_timeout"] + 3 * options["unacked_restore_interval"] + 2)
    still = TrainingRun.objects.get(pk=run.pk)
    services.training_run_cancel(run=still)
    _wait_for(run.pk, lambda r: r.is_finished, timeout=60, worker=first)
    assert still.status == TrainingRun.Status.RUNNING and still.attempts == 1, "the run ended too soon to tell"
    assert run.celery_task_id not in second.log(), second.log()[-3000:]


@pytest.mark.worker
def test_a_run_queued_while_one_trainer_is_busy_goes_at_once_to_an_idle_one(start_celery_worker, tiny_recipe):
    busy = start_celery_worker(queues="training", name="trainer-1")
    long = services.training_run_create(
        created_by=None, **{**tiny_recipe, "epochs": 50, "batch_size": 10, "train_subset": 55_000}
    )
    _wait_for(long.pk, lambda r: r.status == TrainingRun.Status.RUNNING, timeout=90, worker=busy)
    # Sent while only the busy trainer listens: it must not keep the message back for itself.
    queued = services.training_run_create(created_by=None, **tiny_recipe)
    time.sleep(2)
    idle = start_celery_worker(queues="training", name="trainer-2")
    # Well inside the visibility timeout, after which Redis would hand a message kept back to the idle trainer.
    within = settings.CELERY_BROKER_TRANSPORT_OPTIONS["visibility_timeout"] / 2
    try:
        _wait_for(queued.pk, lambda r: r.status != TrainingRun.Status.QUEUED, timeout=within, worker=busy)
    finally:
        services.training_run_cancel(run=TrainingRun.objects.get(pk=long.pk))
    queued = _wait_for(queued.pk, lambda r: r.is_finished, timeout=120, worker=idle)
    assert queued.status == TrainingRun.Status.SUCCEEDED, queued.error
    assert queued.celery_task_id not in busy.log()


def _pool_processes(worker) -> set[int]:
    pid = worker.popen.pid
    return {int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()}


@pytest.mark.worker
def test_a_trainer_as_deployed_trains_each_run_in_a_fresh_process_and_ends_the_one_a_run_used(
    start_celery_worker, tiny_recipe
):
    # As docker-compose.yml and `make run` start it: the memory a run took goes with its process.
    trainer = start_celery_worker(queues="training", name="trainer", extra_args=["--max-tasks-per-child", "1"])
    pools = [_pool_processes(trainer)]
    for _ in range(2):
        run = services.training_run_create(created_by=None, **tiny_recipe)
        run = _wait_for(run.pk, lambda r: r.is_finished, timeout=120, worker=trainer)
        assert run.status == TrainingRun.Status.SUCCEEDED, run.error
        deadline = time.monotonic() + 30
        while (_pool_processes(trainer) & pools[-1] or not _pool_processes(trainer)) and time.monotonic() < deadline:
            time.sleep(0.2)
        pools.append(_pool_processes(trainer))
    first, second, third = pools
    assert len(first) == len(second) == len(third) == 1 and not first & second and not second & third, pools
    assert not any(Path(f"/proc/{pid}").exists() for pid in first | second)


@pytest.mark.django_db
def test_the_execute_task_run_twice_for_one_run_trains_once(tiny_recipe):
    run = services.training_run_create(created_by=None, enqueue=False, **tiny_recipe)
    tasks.training_run_execute.apply(kwargs={"run_id": run.pk})
    first = TrainingRun.objects.get(pk=run.pk)
    tasks.training_run_execute.apply(kwargs={"run_id": run.pk})
    run.refresh_from_db()
    assert run.status == TrainingRun.Status.SUCCEEDED and run.attempts == 1
    assert run.finished_at == first.finished_at and run.checkpoints.count() == first.checkpoints.count()


@pytest.mark.django_db
def test_the_reap_task_fails_a_run_whose_worker_stopped_reporting(tiny_recipe, settings):
    run = services.training_run_create(created_by=None, enqueue=False, **tiny_recipe)
    # Running on its last allowed attempt and silent for longer than the stale limit.
    long_ago = timezone.now() - timedelta(seconds=settings.TRAINING_STALE_AFTER_SECONDS + 60)
    TrainingRun.objects.filter(pk=run.pk).update(
        status=TrainingRun.Status.RUNNING, attempts=services.MAX_ATTEMPTS, started_at=long_ago, heartbeat_at=long_ago
    )
    outcome = tasks.training_runs_reap.apply().get()
    assert outcome["failed"] == [run.pk]
    assert TrainingRun.objects.get(pk=run.pk).status == TrainingRun.Status.FAILED


def test_training_runs_go_to_the_training_queue_and_the_reaper_to_the_always_free_inference_queue():
    from mnistsite.celery import app

    assert app.amqp.router.route({}, "training.tasks.training_run_execute")["queue"].name == "training"
    # A trainer busy for hours with one run must not keep dead runs from being noticed.
    assert app.amqp.router.route({}, "training.tasks.training_runs_reap")["queue"].name == "inference"


def test_periodic_messages_expire_rather_than_pile_up_while_no_worker_takes_them():
    from celery.schedules import crontab

    for entry in settings.CELERY_BEAT_SCHEDULE.values():
        schedule = entry["schedule"]
        if isinstance(schedule, crontab):  # a time of day
            assert schedule.day_of_week == set(range(7)) and len(schedule.hour) == len(schedule.minute) == 1
            schedule = 86400.0
        assert 0 < entry["options"]["expires"] <= schedule
    assert tasks.training_run_execute.soft_time_limit >= 3600
