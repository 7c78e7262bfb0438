"""The full stack for benchmarks: gunicorn and Celery workers on real PostgreSQL and Redis, in a scratch database."""
from __future__ import annotations

import json
import math
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psycopg

REPO = Path(__file__).resolve().parent.parent
PG_ADMIN_URL = os.environ.get("BENCH_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
BENCH_DB = os.environ.get("BENCH_DB", "mnistsite_bench")
BROKER_URL = os.environ.get("BENCH_BROKER_URL", "redis://127.0.0.1:6379/2")
# Shared by the web processes for throttling, as docker-compose.yml configures it: a per-process cache would
# skip the Redis round trip a request makes in a real deployment.
CACHE_URL = os.environ.get("BENCH_CACHE_URL", "rediscache://127.0.0.1:6379/3")
# Inference pool processes unless a benchmark asks otherwise: what docker-compose.yml runs.
INFERENCE_CONCURRENCY = 2


# Touched once a stopped stack's media folder is deleted: when the benchmarks last deleted files by the thousand.
DELETIONS_MARKER = REPO / "var" / "bench-files-deleted"
# ext4 without a journal passes over inodes freed less than five minutes ago (its RECENTCY_DIRTY, 300 s) when it
# allocates one.
RECENT_DELETION_S = 310.0


@dataclass
class Stack:
    base_url: str
    # One API token per load generator client, each of a user of its own.
    tokens: tuple[str, ...]
    env: dict[str, str]
    workdir: Path
    # gunicorn and the Celery worker each lead a session of their own, which their children share.
    sessions: tuple[int, ...] = ()
    # What media_settle found before the stack was handed over.
    media_settle: dict | None = None


def file_create_us(directory: Path, count: int = 500) -> float:
    """Microseconds to create one small file in ``directory``: the disk's part of every stored upload.

    The tutorial stores nothing. See media_settle for why it can be fifty times its usual cost.
    """
    directory.mkdir(parents=True, exist_ok=True)
    payload = bytes(300)
    started = time.perf_counter()
    for index in range(count):
        (directory / f"{index}.png").write_bytes(payload)
    return round((time.perf_counter() - started) * 1e6 / count, 1)


def media_settle(media_root: Path, *, marker: Path = DELETIONS_MARKER, recent_s: float = RECENT_DELETION_S) -> dict:
    """Wait until the benchmarks' last deletion of a stack's files is ``recent_s`` old; how long that took, and what
    creating a file in ``media_root`` then costs.

    This machine's root file system is ext4 without a journal, which, when it
    allocates an inode, passes over every inode freed in the last one to five
    minutes, one by one. After a stack's thousands of files were deleted, the
    next stack's uploads found that range at some point of their run, and
    creating each file cost 0.2-1 ms of kernel CPU instead of about 20 µs,
    charged to the web processes, until those inodes aged: a service that is
    not deleting files by the thousand does not see it. The probe's files stay
    until the stack's folder goes.
    """
    started = time.monotonic()
    try:
        age = time.time() - marker.stat().st_mtime
    except FileNotFoundError:
        age = math.inf
    if age < recent_s:
        time.sleep(recent_s - age)
    return {
        "waited_s": round(time.monotonic() - started, 1),
        "file_create_us": file_create_us(media_root / "file-create-probe" / "settled", count=200),
    }


def _media_delete(media_root: Path) -> None:
    """Delete a stopped stack's uploads now, and say when (see media_settle), not whenever its caller's folder goes."""
    shutil.rmtree(media_root, ignore_errors=True)
    DELETIONS_MARKER.parent.mkdir(parents=True, exist_ok=True)
    DELETIONS_MARKER.touch()


def database_recreate() -> None:
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{BENCH_DB}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{BENCH_DB}"')


def _flush_broker() -> None:
    import redis

    redis.Redis.from_url(BROKER_URL).flushdb()


def stack_env(workdir: Path, **overrides: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        DJANGO_SETTINGS_MODULE="mnistsite.settings.production",
        SECRET_KEY=secrets.token_urlsafe(48),
        ALLOWED_HOSTS="127.0.0.1,localhost",
        SECURE_SSL_REDIRECT="false",
        DATABASE_URL=f"postgres://postgres@127.0.0.1:5432/{BENCH_DB}",
        CELERY_BROKER_URL=BROKER_URL,
        CACHE_URL=CACHE_URL,
        MEDIA_ROOT=str(workdir / "media"),
        CHECKPOINT_DIR=str(workdir / "checkpoints"),
        DATA_DIR=env.get("DATA_DIR", str(REPO / "data")),
        UPLOAD_THROTTLE_RATE="1000000/minute",
        LOG_LEVEL="WARNING",
        PYTHONUNBUFFERED="1",
    )
    env.update(overrides)
    return env


def manage(env: dict[str, str], *args: str) -> str:
    result = subprocess.run(
        [sys.executable, "manage.py", *args], cwd=REPO, env=env, check=True, capture_output=True, text=True
    )
    return result.stdout


# As many users as the loads have clients at most: beyond PREDICTION_WAITS_PER_USER, one user's waits stop after a second.
CLIENTS = 16
_CLIENTS_CREATE = f"""
from django.contrib.auth import get_user_model
from accounts.services import api_token_create
for index in range({CLIENTS}):
    user = get_user_model().objects.create_user(username=f"bench{{index}}")
    print(api_token_create(user=user, name="bench")[1])
"""


def _clients_create(env: dict[str, str]) -> tuple[str, ...]:
    """Users for the load generator's clients, and an API token of each, in one process."""
    return tuple(manage(env, "shell", "--no-imports", "-c", _CLIENTS_CREATE).split())


def auth_headers(stack: Stack) -> list[dict[str, str]]:
    """Each load generator client's headers: client i signs in as user i."""
    return [{"Authorization": f"Token {token}"} for token in stack.tokens]


def _start(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    return subprocess.Popen(
        args, cwd=REPO, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True
    )


def wait_http(url: str, *, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    raise TimeoutError(f"{url} did not answer in {timeout}s")


def _wait_log(path: Path, needle: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if needle in path.read_text(errors="replace"):
            return
        time.sleep(0.2)
    raise TimeoutError(f"{path.name} never printed {needle!r}:\n{path.read_text(errors='replace')[-3000:]}")


def _refuse_busy_port(port: int) -> None:
    # A server left over from an earlier run would answer instead of ours, with other code and other files.
    with socket.socket() as probe:
        if probe.connect_ex(("127.0.0.1", port)) == 0:
            raise RuntimeError(f"something already listens on port {port}; stop it before benchmarking")


@contextmanager
def running_stack(
    workdir: Path,
    *,
    port: int = 8765,
    web_workers: int | None = None,
    web_threads: int | None = None,
    worker_concurrency: int | None = None,
):
    """Migrate a fresh database, train a small model, then serve it with gunicorn and a Celery worker.

    Processes and threads come from gunicorn.conf.py and INFERENCE_CONCURRENCY unless given.
    """
    _refuse_busy_port(port)
    workdir.mkdir(parents=True, exist_ok=True)
    env = stack_env(workdir)
    database_recreate()
    _flush_broker()
    manage(env, "migrate", "--noinput")
    tokens = _clients_create(env)
    # Serving cost does not depend on how well the weights were trained, so a short run will do.
    manage(env, "train", "--sync", "--activate", "--subset", "2000", "--epochs", "1")
    processes = [
        _start(
            [sys.executable, "-m", "gunicorn", "mnistsite.wsgi:application", "--bind", f"127.0.0.1:{port}",
             *(["--workers", str(web_workers)] if web_workers else []),
             *(["--threads", str(web_threads)] if web_threads else [])],
            env, workdir / "gunicorn.log",
        ),
        _start(
            [sys.executable, "-m", "celery", "-A", "mnistsite", "worker", "-Q", "inference",
             "-c", str(worker_concurrency or INFERENCE_CONCURRENCY), "--without-gossip", "--without-mingle",
             "--without-heartbeat", "--loglevel", "INFO"],
            env, workdir / "worker.log",
        ),
    ]
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz", timeout=60)
        _wait_log(workdir / "worker.log", "ready.", 60)
        settled = media_settle(Path(env["MEDIA_ROOT"]))
        yield Stack(
            base_url=f"http://127.0.0.1:{port}", tokens=tokens, env=env, workdir=workdir,
            sessions=tuple(process.pid for process in processes), media_settle=settled,
        )
    finally:
        for process in processes:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for process in processes:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
        _media_delete(Path(env["MEDIA_ROOT"]))


def print_report(report: dict) -> None:
    print(json.dumps(report, indent=2))
