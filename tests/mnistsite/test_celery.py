"""Real Celery worker processes answer on the real broker, and run predictions on the embedded one."""
import io
import re
import time

import pytest

from mnistsite.broker import filesystem_transport_options
from mnistsite.celery import app
from tests.classifier.fixtures import png_bytes
from tests.devices import requires_no_cuda
from tests.processes import broker_switched, start_worker


def test_celery_accepts_json_only():
    assert app.conf.accept_content == ["json"]
    assert app.conf.task_serializer == "json"


@pytest.mark.worker
def test_a_real_worker_answers_a_ping_through_the_configured_broker(celery_worker_process):
    # A worker logs "ready." a moment before it listens for pings: one sent in between goes unanswered.
    for _ in range(5):
        replies = app.control.ping(timeout=2)
        if any(name.startswith("worker-") for reply in replies for name in reply):
            break
    assert any(name.startswith("worker-") for reply in replies for name in reply), replies


@pytest.mark.worker
@requires_no_cuda
def test_a_worker_told_to_use_a_missing_gpu_stops_before_taking_any_task(start_celery_worker):
    with pytest.raises(RuntimeError, match="exited with 1") as stopped:
        start_celery_worker(TORCH_DEVICE="cuda")
    assert "TORCH_DEVICE is cuda, but PyTorch sees no CUDA GPU on this host" in str(stopped.value)
    assert "ready." not in str(stopped.value)


@pytest.mark.worker
def test_a_prediction_round_trips_through_a_real_worker_on_the_embedded_filesystem_broker(
    transactional_db, active_checkpoint, settings, tmp_path, user, mnist_image
):
    from classifier import services
    from classifier.models import Prediction

    broker_dir = tmp_path / "broker"
    with broker_switched(settings, "filesystem://", transport_options=filesystem_transport_options(broker_dir)):
        worker = start_worker(
            log_dir=tmp_path / "logs", name="fs-worker", CELERY_BROKER_FILESYSTEM_DIR=str(broker_dir)
        )
        try:
            image, label = mnist_image(0)
            files = [(io.BytesIO(png_bytes(image)), "digit.png")]
            (prediction,) = services.predictions_submit(owner=user, files=files, source="file")
            deadline = time.monotonic() + 60
            while prediction.status != Prediction.Status.DONE and time.monotonic() < deadline:
                time.sleep(0.2)
                prediction.refresh_from_db()
        finally:
            worker.stop()
    assert prediction.status == Prediction.Status.DONE, worker.log()[-3000:]
    assert prediction.digit == label
    assert "filesystem" in worker.log()


def _compose_queues() -> set[str]:
    """Every queue some compose worker consumes (``-Q a,b``)."""
    from tests.processes import REPO

    compose = (REPO / "docker-compose.yml").read_text()
    return {queue for found in re.findall(r"celery -A mnistsite worker -Q ([\w,]+)", compose) for queue in found.split(",")}


def test_every_scheduled_task_exists_and_is_routed_to_a_queue_a_deployed_worker_takes():
    app.loader.import_default_modules()
    consumed = _compose_queues()
    assert consumed >= {"inference", "training"}
    for entry in app.conf.beat_schedule.values():
        assert entry["task"] in app.tasks, entry["task"]
        assert app.amqp.router.route(entry.get("options", {}), entry["task"])["queue"].name in consumed, entry["task"]


def test_the_pools_own_lines_such_as_a_killed_process_are_logged_with_the_request_id_column_not_as_errors():
    import os
    import subprocess
    import sys

    from tests.processes import REPO

    # As a worker sets its logging up, in a process of its own: Celery's setup is process-wide.
    probe = (
        "import django; django.setup()\n"
        "from mnistsite.celery import app\n"
        "app.log.setup_logging_subsystem(loglevel='INFO')\n"
        "from celery.utils.log import get_multiprocessing_logger\n"
        "get_multiprocessing_logger().error('Process %r pid:%r exited with %r', 'ForkPoolWorker-2', 5440, 'signal 9')\n"
    )
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "mnistsite.settings.dev", "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, "-c", probe], cwd=REPO, env=env, capture_output=True, text=True,
                            timeout=120)

    assert result.returncode == 0, result.stderr
    assert "Logging error" not in result.stderr, result.stderr
    assert "ERROR/MainProcess] [-] Process 'ForkPoolWorker-2' pid:5440 exited with 'signal 9'" in result.stderr


def test_scheduled_housekeeping_and_mail_are_taken_before_the_uploads_waiting_on_the_inference_queue(
    db, published, user, digit_png
):
    from classifier import services
    from classifier.services.predictions import predictions_send

    (upload,) = services.predictions_submit(owner=user, files=[(io.BytesIO(digit_png(0)), "0.png")], source="file")
    predictions_send(prediction_ids=[upload.pk])  # sent at once: this test's transaction never commits
    # As beat sends them, and as a reset link's mail is sent: after the upload, on the same queue.
    for name in ("reap-stale-training-runs", "sweep-pending-predictions"):
        entry = app.conf.beat_schedule[name]
        app.send_task(entry["task"], **entry["options"])
    app.send_task("accounts.tasks.password_reset_email_send", kwargs={"email": "alice@example.com"})

    taken = [message["task"] for message in published.messages()]

    assert taken == ["training.tasks.training_runs_reap", "classifier.tasks.predictions_sweep",
                     "accounts.tasks.password_reset_email_send", "classifier.tasks.predictions_execute"]


@pytest.mark.worker
def test_the_sweeper_sent_as_beat_sends_it_gets_a_never_published_prediction_computed(
    transactional_db, active_checkpoint, celery_worker_process, user, mnist_image
):
    import datetime as dt

    from django.utils import timezone

    from classifier import services
    from classifier.models import Prediction

    image, label = mnist_image(0)
    upload = services.upload_create(owner=user, file=io.BytesIO(png_bytes(image)), source="file")
    (prediction,) = services.predictions_create(uploads=[upload], publish=False)  # as if the broker had been down
    Prediction.objects.filter(pk=prediction.pk).update(created_at=timezone.now() - dt.timedelta(minutes=5))

    entry = app.conf.beat_schedule["sweep-pending-predictions"]
    app.send_task(entry["task"], **entry["options"])
    deadline = time.monotonic() + 60
    while prediction.status != Prediction.Status.DONE and time.monotonic() < deadline:
        time.sleep(0.2)
        prediction.refresh_from_db()
    assert prediction.status == Prediction.Status.DONE, celery_worker_process.log()[-3000:]
    assert prediction.digit == label


def _project_tasks() -> list:
    app.loader.import_default_modules()
    return [task for name, task in sorted(app.tasks.items()) if not name.startswith("celery.")]


def _interval_s(schedule) -> float:
    from celery.schedules import crontab

    return 86400.0 if isinstance(schedule, crontab) else float(schedule)


def test_every_task_has_a_soft_time_limit_it_is_told_of_before_the_hard_one_ends_it():
    tasks = _project_tasks()
    assert tasks
    for task in tasks:
        assert task.soft_time_limit and task.time_limit, task.name
        assert task.soft_time_limit < task.time_limit, task.name


def test_a_scheduled_task_is_ended_before_its_next_copy_is_due_so_copies_cannot_pile_up():
    # Each message expires when the next is due, so one waits at most an interval before it starts; ended by its hard
    # limit within another, at most two copies of a task ever run at once, however long each would take.
    for name, entry in app.conf.beat_schedule.items():
        interval = _interval_s(entry["schedule"])
        assert 0 < entry["options"]["expires"] <= interval, name
        assert app.tasks[entry["task"]].time_limit <= interval, name


def test_retries_are_bounded_back_off_and_come_before_a_scheduled_message_expires():
    expires = {entry["task"]: entry["options"]["expires"] for entry in app.conf.beat_schedule.values()}
    for task in _project_tasks():
        retried_for = getattr(task, "autoretry_for", ())
        if not retried_for:
            continue
        # Named failures, worth trying again; a bug would only fail the same way again.
        assert all(issubclass(exc, Exception) and exc is not Exception for exc in retried_for), task.name
        assert getattr(task, "retry_backoff", False) and 0 < task.max_retries <= 10, task.name
        # The first retry waits at most the backoff factor (with jitter, anything up to it); one due after its
        # message expired would be discarded unrun.
        if task.name in expires:
            assert int(task.retry_backoff) < expires[task.name], task.name


def _task_line(worker, *, task_id: str, timeout: float = 30) -> str:
    """The worker's log line saying that task ``task_id`` succeeded, once it has written it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        lines = [line for line in worker.log().splitlines() if f"[{task_id}] succeeded" in line]
        if lines:
            return lines[0]
        time.sleep(0.2)
    raise AssertionError(f"no line for task {task_id}:\n{worker.log()[-3000:]}")


@pytest.mark.worker
def test_a_prediction_uploaded_in_a_request_is_logged_by_its_worker_under_the_requests_id(
    transactional_db, active_checkpoint, celery_worker_process, client, user, mnist_image
):
    from django.core.files.uploadedfile import SimpleUploadedFile

    image, _ = mnist_image(0)
    client.force_login(user)

    # Published by the upload's on-commit callback, in the request's own thread.
    response = client.post("/api/v1/predictions/?wait=30", {"image": SimpleUploadedFile("d.png", png_bytes(image))},
                           HTTP_X_REQUEST_ID="upload-4711")

    assert response.status_code == 200, response.content
    deadline = time.monotonic() + 30
    while (found := re.search(r"\[upload-4711\] Task classifier\.tasks\.predictions_execute\[([0-9a-f-]+)\] succeeded",
                              celery_worker_process.log())) is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert found, celery_worker_process.log()[-3000:]
    assert "/ForkPoolWorker-" in _task_line(celery_worker_process, task_id=found[1])


@pytest.mark.worker
def test_tasks_sent_outside_any_request_as_beat_sends_them_get_an_id_of_their_own_each(celery_worker_process):
    entry = app.conf.beat_schedule["sweep-pending-predictions"]

    sent = [app.send_task(entry["task"], **entry["options"]) for _ in range(2)]

    ids = [re.search(r"\] \[([^\]]+)\] Task ", _task_line(celery_worker_process, task_id=result.id))[1]
           for result in sent]
    assert all(re.fullmatch(r"[0-9a-f]{32}", request_id) for request_id in ids), ids
    assert ids[0] != ids[1]


@pytest.mark.django_db
def test_a_task_run_eagerly_keeps_its_callers_id_or_gets_its_own_and_leaves_the_callers_as_it_was():
    from celery.signals import task_success

    from mnistsite.request_id import request_id_get, request_id_reset, request_id_set

    seen = []
    task_success.connect(lambda **kwargs: seen.append(request_id_get()), weak=False, dispatch_uid="request-id-test")
    try:
        app.loader.import_default_modules()
        sweep = app.tasks["classifier.tasks.predictions_sweep"]
        token = request_id_set(value="caller-1")
        try:
            sweep.apply().get()
            assert request_id_get() == "caller-1"
        finally:
            request_id_reset(token=token)
        sweep.apply().get()
    finally:
        task_success.disconnect(dispatch_uid="request-id-test")

    assert seen[0] == "caller-1"
    assert re.fullmatch(r"[0-9a-f]{32}", seen[1]) and request_id_get() is None
