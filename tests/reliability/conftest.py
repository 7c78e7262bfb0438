"""Fixtures for fault tests: private Redis servers, switching the broker, real workers and waiting helpers."""
from __future__ import annotations

import random
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.processes import ManagedProcess, broker_switched, start_worker


def free_port() -> int:
    """A port free now, below Linux's range for outgoing connections (from 32768), so that none takes it meanwhile.

    The server that will listen on it starts later, and a restarted one binds it again.
    """
    rng = random.Random()
    while True:
        port = rng.randrange(20000, 32768)
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port


def wait_until(predicate: Callable[[], object], *, timeout: float, interval: float = 0.1, what: str | Callable[[], str] = "") -> object:
    """Poll ``predicate`` until it returns something truthy; fail with ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what() if callable(what) else what or predicate}")
        time.sleep(interval)


class RedisServer:
    """A throw-away redis-server of our own: the machine's shared Redis is never stopped or flushed."""

    def __init__(self, port: int, log_dir: Path) -> None:
        self.port = port
        self.log_dir = log_dir
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            stdout=open(self.log_dir / f"redis-{self.port}.log", "w"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        import redis

        client = redis.Redis(host="127.0.0.1", port=self.port, socket_connect_timeout=0.5)
        wait_until(lambda: _pings(client), timeout=15, what=f"redis-server on port {self.port}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)
        self.process = None


def _pings(client) -> bool:
    try:
        return bool(client.ping())
    except Exception:  # noqa: BLE001 - not up yet
        return False


@pytest.fixture
def private_redis(tmp_path, settings) -> Iterator[RedisServer]:
    """A private redis-server (not started yet) that this test's publishing and workers use as broker."""
    server = RedisServer(free_port(), tmp_path / "redis")
    with broker_switched(settings, server.url):
        try:
            yield server
        finally:
            server.stop()


@pytest.fixture
def running_private_redis(private_redis) -> RedisServer:
    private_redis.start()
    return private_redis


@pytest.fixture
def workers(transactional_db, isolated_storage, tmp_path) -> Iterator[Callable[..., ManagedProcess]]:
    """Start real `celery worker` processes on the test's broker; every one is stopped at the end."""
    started: list[ManagedProcess] = []
    counter = iter(range(1000))

    def start(**kwargs) -> ManagedProcess:
        kwargs.setdefault("name", f"worker{next(counter)}")
        worker = start_worker(log_dir=tmp_path / "logs", **kwargs)
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.stop()


def prediction_finished(prediction_id: int):
    from classifier.models import Prediction

    prediction = Prediction.objects.get(pk=prediction_id)
    return prediction if prediction.status in ("done", "failed") else None


def wait_for_prediction(prediction_id: int, *, timeout: float = 60):
    return wait_until(lambda: prediction_finished(prediction_id), timeout=timeout, interval=0.1,
                      what=f"prediction {prediction_id} to finish")


def succeeded_count(worker: ManagedProcess, task: str = "classifier.tasks.predictions_execute") -> int:
    """How many times the worker's log says it ran ``task`` to the end."""
    return sum(1 for line in worker.log().splitlines() if f"Task {task}[" in line and " succeeded in " in line)
