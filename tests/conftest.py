"""Fixtures shared by the whole suite: isolated file storage, users, real worker processes and broker queues."""
from pathlib import Path

import pytest

from tests.processes import start_worker

# A small real model trained once per session, and real MNIST digits, for every folder of tests.
pytest_plugins = ["tests.classifier.fixtures"]

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"


@pytest.fixture(scope="session")
def django_db_setup(django_db_setup):
    """The test database, dropped at the end only after the process's listening connection to it is closed."""
    from classifier.completion import listener_stop

    yield
    listener_stop()


@pytest.fixture(autouse=True)
def isolated_storage(settings, tmp_path_factory):
    """Every test writes uploads and checkpoints to its own folders, never the repo's."""
    root = tmp_path_factory.mktemp("storage")
    settings.MEDIA_ROOT = root / "media"
    settings.CHECKPOINT_DIR = root / "checkpoints"
    settings.MEDIA_ROOT.mkdir()
    settings.CHECKPOINT_DIR.mkdir()
    return root


@pytest.fixture(autouse=True)
def fresh_cache():
    """Throttle counters and log-in lockouts of one test must not leak into the next."""
    from django.core.cache import cache

    cache.clear()
    yield
    cache.clear()


@pytest.fixture
def user(django_user_model):
    return django_user_model.objects.create_user(username="alice", password="correct horse battery")


@pytest.fixture
def other_user(django_user_model):
    return django_user_model.objects.create_user(username="bob", password="correct horse battery")


@pytest.fixture
def staff_user(django_user_model):
    return django_user_model.objects.create_user(
        username="staff", password="correct horse battery", is_staff=True, is_superuser=True
    )


@pytest.fixture
def artifacts_dir() -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS


@pytest.fixture
def start_celery_worker(transactional_db, isolated_storage, tmp_path):
    """Starts real `celery worker` processes on the real broker, sharing the test database and files.

    Keyword arguments go to ``tests.processes.start_worker`` (settings overrides
    among them); every worker started is stopped after the test.
    """
    from mnistsite.celery import app

    # Messages left by an earlier test must not reach this test's worker.
    with app.connection_for_write() as conn:
        for queue in ("inference", "training"):
            conn.default_channel.queue_purge(queue)
    workers = []

    def start(**kwargs):
        workers.append(start_worker(log_dir=tmp_path / f"logs-{len(workers)}", **kwargs))
        return workers[-1]

    yield start
    # Killed, not stopped: the test is over, and Celery's warm shutdown takes about 2 s a worker (its pool's timers, the
    # broker's last wait, the interpreter's exit). What a killed worker held stays in the broker's set of unacknowledged
    # messages, which goes too, so that no later test's worker gets it back.
    for worker in workers:
        worker.stop(graceful=False)
    with app.connection_for_write() as conn:
        conn.default_channel.client.delete("unacked", "unacked_index")


@pytest.fixture
def celery_worker_process(start_celery_worker):
    """One real `celery worker` process with the default settings."""
    return start_celery_worker()


def _broker_queue(name: str):
    from mnistsite.celery import app
    from tests.broker import BrokerQueue

    queue = BrokerQueue(app, name)
    queue.purge()
    yield queue
    queue.purge()


@pytest.fixture
def published():
    """Prediction tasks sent to the real broker's inference queue during the test (it starts empty)."""
    yield from _broker_queue("inference")


@pytest.fixture
def training_queue():
    """Training tasks sent to the real broker's training queue during the test (it starts empty)."""
    yield from _broker_queue("training")


@pytest.fixture
def broker_down(settings):
    """Publishing goes where no broker listens, for the whole test."""
    from tests.processes import NO_BROKER_URL, broker_switched

    with broker_switched(settings, NO_BROKER_URL):
        yield
