"""Starting and stopping the real processes that tests talk to: Celery workers and servers."""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from django.conf import settings
from django.db import connection

REPO = Path(__file__).resolve().parent.parent
# Nothing listens on port 1: every publish there fails at once with a connection error.
NO_BROKER_URL = "redis://127.0.0.1:1/0"


def database_url() -> str:
    """The URL of the database the tests are using right now (the test database)."""
    db = connection.settings_dict
    if db["ENGINE"] == "django.db.backends.sqlite3":
        return f"sqlite:///{db['NAME']}"
    user = db.get("USER") or ""
    password = f":{db['PASSWORD']}" if db.get("PASSWORD") else ""
    auth = f"{user}{password}@" if user else ""
    return f"postgres://{auth}{db.get('HOST') or '127.0.0.1'}:{db.get('PORT') or 5432}/{db['NAME']}"


def child_env(**overrides: str) -> dict[str, str]:
    """The environment for a child process that shares this test run's database, broker and files."""
    env = dict(os.environ)
    env.update(
        DJANGO_SETTINGS_MODULE="mnistsite.settings.test",
        DATABASE_URL=database_url(),
        CELERY_BROKER_URL=settings.CELERY_BROKER_URL,
        MEDIA_ROOT=str(settings.MEDIA_ROOT),
        DATA_DIR=str(settings.DATA_DIR),
        CHECKPOINT_DIR=str(settings.CHECKPOINT_DIR),
        CELERY_BROKER_FILESYSTEM_DIR=str(settings.CELERY_BROKER_FILESYSTEM_DIR),
        PYTHONUNBUFFERED="1",
    )
    env.update(overrides)
    return env


@dataclass
class ManagedProcess:
    """A child process in its own process group, with its output kept in a log file."""

    name: str
    popen: subprocess.Popen
    log_path: Path
    _log_file: object = field(repr=False, default=None)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stacks(self) -> str:
        """Where each Python process of the group is now (py-spy), for a test that waited on it in vain."""
        py_spy = Path(sys.executable).with_name("py-spy")
        try:
            result = subprocess.run(
                [str(py_spy), "dump", "--subprocesses", "--pid", str(self.popen.pid)],
                capture_output=True, text=True, timeout=60,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"(no stacks: {exc})"
        return result.stdout + result.stderr

    def wait_for_output(self, needle: str, *, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if needle in self.log():
                return
            if self.popen.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.popen.returncode}:\n{self.log()[-4000:]}")
            time.sleep(0.1)
        raise TimeoutError(
            f"{self.name} did not print {needle!r} in {timeout}s:\n{self.log()[-4000:]}\n{self.stacks()}"
        )

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Send a signal to the whole process group (a worker and its pool children)."""
        try:
            os.killpg(self.popen.pid, sig)
        except ProcessLookupError:
            pass

    def stop(self, *, timeout: float = 15, graceful: bool = True) -> None:
        """Stop the group as Docker stops a container (SIGTERM, SIGKILL after ``timeout``), or at once."""
        if self.popen.poll() is None:
            self.kill(signal.SIGTERM if graceful else signal.SIGKILL)
            try:
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill(signal.SIGKILL)
                self.popen.wait(timeout=timeout)
        if self._log_file is not None:
            self._log_file.close()


def start_process(*, name: str, args: list[str], log_dir: Path, env: dict[str, str]) -> ManagedProcess:
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{name}.log"
    log_file = open(log_path, "w")
    popen = subprocess.Popen(
        args, cwd=REPO, env=env, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True
    )
    return ManagedProcess(name=name, popen=popen, log_path=log_path, _log_file=log_file)


def start_worker(
    *,
    log_dir: Path,
    queues: str = "inference,training",
    concurrency: int = 1,
    name: str = "worker",
    extra_args: list[str] | None = None,
    timeout: float = 60,
    **env_overrides: str,
) -> ManagedProcess:
    """Start `celery worker` as a real process and wait until it is ready for tasks."""
    args = [
        sys.executable, "-m", "celery", "-A", "mnistsite", "worker",
        "-Q", queues, "-c", str(concurrency), "-n", f"{name}-{os.getpid()}@%h",
        "--loglevel", "INFO", "--without-gossip", "--without-mingle", "--without-heartbeat",
        *(extra_args or []),
    ]
    worker = start_process(name=name, args=args, log_dir=log_dir, env=child_env(**env_overrides))
    try:
        worker.wait_for_output("ready.", timeout=timeout)
    except BaseException:
        # Not handed to any caller's clean-up yet: left running, it would take later tests' messages.
        worker.stop()
        raise
    return worker


def _reset_producer_pools(app) -> None:
    # Celery and kombu cache connection and producer pools (kombu's per broker URL, process-wide); after a
    # switch every one of them must be rebuilt, or a later publish acquires from a closed pool.
    from kombu import pools

    if app._pool is not None:
        with contextlib.suppress(Exception):
            app._pool.force_close_all()
    app._pool = None
    with contextlib.suppress(AttributeError, KeyError):
        app.__dict__["amqp"]._producer_pool = None
    pools.reset()


@contextlib.contextmanager
def broker_switched(settings, url: str, *, transport_options: dict | None = None) -> Iterator[None]:
    """Point this test process (publishing) and the children it starts (child_env) at ``url``."""
    from mnistsite.celery import app

    previous = app.conf.broker_url
    previous_options = app.conf.broker_transport_options
    previous_env = os.environ.get("CELERY_BROKER_URL")
    settings.CELERY_BROKER_URL = url
    # Celery reads CELERY_BROKER_URL from the environment before any setting.
    os.environ["CELERY_BROKER_URL"] = url
    app.conf.broker_url = url
    if transport_options is not None:
        app.conf.broker_transport_options = transport_options
    _reset_producer_pools(app)
    try:
        yield
    finally:
        if previous_env is None:
            os.environ.pop("CELERY_BROKER_URL", None)
        else:
            os.environ["CELERY_BROKER_URL"] = previous_env
        app.conf.broker_url = previous
        app.conf.broker_transport_options = previous_options
        _reset_producer_pools(app)
