"""Workers and beat touch their heartbeat files from their own loops, and only while they reach the broker."""
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mnistsite.celery import app
from mnistsite.heartbeat import HeartbeatScheduler
from tests.processes import REPO, ManagedProcess, broker_switched, child_env, start_process
from tests.reliability.conftest import RedisServer, free_port, wait_until

# Short, so that a test sees several touches in a few seconds.
INTERVAL = 1


@pytest.fixture
def private_broker(tmp_path, settings) -> Iterator[RedisServer]:
    """A running redis-server of the test's own, which it may stop: the machine's shared Redis is never stopped."""
    server = RedisServer(free_port(), tmp_path / "redis")
    with broker_switched(settings, server.url):
        try:
            server.start()
            yield server
        finally:
            server.stop()


def _heartbeat_env(path: Path) -> dict[str, str]:
    return {"CELERY_HEARTBEAT_FILE": str(path), "CELERY_HEARTBEAT_INTERVAL": str(INTERVAL)}


def _touched_at(path: Path) -> int | None:
    try:
        return path.stat().st_mtime_ns
    except FileNotFoundError:
        return None


def _touched_after(path: Path, previous: int | None, *, timeout: float, process: ManagedProcess) -> int:
    """Wait for the file to be touched again (or to appear); its new time."""
    return wait_until(
        lambda: (touched := _touched_at(path)) is not None and touched != previous and touched,
        timeout=timeout, interval=0.05,
        what=lambda: f"{path} to be touched after {previous}:\n{process.log()[-3000:]}\n{process.stacks()}",
    )


@pytest.mark.worker
def test_a_trainer_goes_on_touching_its_heartbeat_file_while_a_training_run_takes_its_only_pool_process(
    private_broker, start_celery_worker, tmp_path
):
    from training import services
    from training.models import TrainingRun

    heartbeat = tmp_path / "heartbeat"
    # As docker-compose.yml runs the trainer: one pool process, which the run keeps busy.
    trainer = start_celery_worker(queues="training", concurrency=1, **_heartbeat_env(heartbeat))
    run = services.training_run_create(
        created_by=None, architecture="mlp", epochs=20, batch_size=64, learning_rate=1e-3,
        augment=False, train_subset=20000, device="cpu",
    )
    try:
        wait_until(lambda: TrainingRun.objects.get(pk=run.pk).status == TrainingRun.Status.RUNNING, timeout=120,
                   what=lambda: f"the run to start:\n{trainer.log()[-3000:]}")
        touched = _touched_at(heartbeat)
        for _ in range(3):
            touched = _touched_after(heartbeat, touched, timeout=60, process=trainer)
        run.refresh_from_db()
        assert run.status == TrainingRun.Status.RUNNING, "the run ended before the touches were seen"
    finally:
        trainer.kill()  # the run has nothing left to show; a warm shutdown would wait for it to finish
        trainer.popen.wait(timeout=30)


@pytest.mark.worker
# With `--beat`, as `make run` starts its worker: the beat inside it, which goes on passing while the broker is
# gone, leaves the worker's file alone.
@pytest.mark.parametrize("embedded_beat", [False, True], ids=["alone", "with-embedded-beat"])
def test_a_worker_stops_touching_its_heartbeat_file_while_its_broker_is_gone_and_starts_again_once_it_is_back(
    private_broker, start_celery_worker, tmp_path, embedded_beat
):
    heartbeat = tmp_path / "heartbeat"
    beat_args = ["--beat", "--schedule", str(tmp_path / "schedule")] if embedded_beat else []
    worker = start_celery_worker(queues="inference", extra_args=beat_args, **_heartbeat_env(heartbeat))
    _touched_after(heartbeat, _touched_after(heartbeat, None, timeout=60, process=worker), timeout=60,
                   process=worker)

    private_broker.stop()
    # Within a second or two. Workers started with Celery's own heartbeat events sometimes did not notice until the
    # broker was back: a heartbeat send, retrying inside the loop, held it (start_worker's --without-heartbeat).
    worker.wait_for_output("Connection to broker lost", timeout=60)
    left_at = _touched_at(heartbeat)
    time.sleep(5 * INTERVAL)
    assert _touched_at(heartbeat) == left_at, "the file was touched while the broker was gone"

    private_broker.start()
    _touched_after(heartbeat, left_at, timeout=120, process=worker)
    assert worker.popen.poll() is None


@pytest.mark.worker
def test_a_worker_whose_heartbeat_folder_does_not_exist_refuses_to_start_and_says_why(start_celery_worker, tmp_path):
    missing = tmp_path / "missing" / "heartbeat"
    with pytest.raises(RuntimeError, match="exited with 1") as stopped:
        start_celery_worker(CELERY_HEARTBEAT_FILE=str(missing))
    assert f"CELERY_HEARTBEAT_FILE: the folder {missing.parent} does not exist." in str(stopped.value)


def test_a_heartbeat_interval_under_a_second_is_refused():
    result = subprocess.run(
        [sys.executable, "manage.py", "check"], cwd=REPO, capture_output=True, text=True, timeout=120,
        env={**child_env(), "CELERY_HEARTBEAT_INTERVAL": "0"},
    )
    assert result.returncode != 0
    assert "CELERY_HEARTBEAT_INTERVAL must be a number of seconds, 1 or more." in result.stderr


@pytest.mark.worker
def test_beat_touches_its_heartbeat_file_between_the_tasks_it_sends_and_removes_it_when_it_stops(
    private_broker, tmp_path
):
    heartbeat = tmp_path / "heartbeat"
    beat = start_process(
        name="beat",
        args=[sys.executable, "-m", "celery", "-A", "mnistsite", "beat", "--loglevel", "INFO",
              "--schedule", str(tmp_path / "schedule")],
        log_dir=tmp_path / "logs", env=child_env(**_heartbeat_env(heartbeat)),
    )
    try:
        touched = None
        # Each within less time than the first scheduled task is due in (30 s): beat wakes up for its file.
        for _ in range(3):
            touched = _touched_after(heartbeat, touched, timeout=25, process=beat)
    finally:
        beat.stop()
    assert beat.popen.returncode == 0, beat.log()[-3000:]
    assert not heartbeat.exists()


def test_beat_leaves_its_heartbeat_file_stale_after_a_failed_send_until_a_send_reaches_the_broker(
    private_broker, settings, tmp_path
):
    heartbeat = tmp_path / "heartbeat"
    settings.CELERY_HEARTBEAT_FILE = str(heartbeat)
    scheduler = HeartbeatScheduler(app=app, schedule_filename=str(tmp_path / "schedule"))
    try:
        entry = scheduler.schedule["sweep-pending-predictions"]
        producer = scheduler.producer  # connected now, as beat's is once it sent its first task
        scheduler.tick()
        assert heartbeat.exists()

        private_broker.stop()
        heartbeat.unlink()
        scheduler.apply_entry(entry, producer=producer)  # logs the failure and carries on, as in beat
        scheduler.tick()
        assert not heartbeat.exists()

        private_broker.start()
        scheduler.apply_entry(entry, producer=producer)
        scheduler.tick()
        assert heartbeat.exists()
    finally:
        scheduler.close()
