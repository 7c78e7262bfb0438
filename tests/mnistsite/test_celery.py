"""Real Celery worker processes answer on the real broker, and on the embedded one."""
import pytest

from mnistsite.celery import app
from tests.processes import start_worker


def test_celery_accepts_json_only():
    assert app.conf.accept_content == ["json"]
    assert app.conf.task_serializer == "json"


@pytest.mark.worker
def test_a_real_worker_answers_a_ping_through_the_configured_broker(celery_worker_process):
    replies = app.control.ping(timeout=5)
    assert any(name.startswith("worker-") for reply in replies for name in reply)


@pytest.mark.worker
def test_a_real_worker_runs_on_the_embedded_filesystem_broker(transactional_db, tmp_path):
    broker_dir = tmp_path / "broker"
    worker = start_worker(
        log_dir=tmp_path / "logs",
        name="fs-worker",
        CELERY_BROKER_URL="filesystem://",
        CELERY_BROKER_FILESYSTEM_DIR=str(broker_dir),
    )
    try:
        assert (broker_dir / "queue").is_dir()
        assert "filesystem" in worker.log()
    finally:
        worker.stop()
