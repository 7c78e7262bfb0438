"""`make run`: prepare data, database, demo account and model, then serve with a worker until Ctrl-C."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlparse, urlunparse

import environ
import redis
from kombu.utils.url import maybe_sanitize_url

REPO = Path(__file__).resolve().parent.parent
# PORT and CELERY_BROKER_URL are read here, before Django reads .env: without this they would apply to the
# settings but not to the port served or the broker chosen. The environment wins over the file, as in the settings.
environ.Env.read_env(REPO / ".env", overwrite=False)
PYTHON = sys.executable


def port_read(environment: Mapping[str, str]) -> int:
    """PORT, or 8000; a value that is no port stops the start naming it, as the settings do theirs."""
    raw = environment.get("PORT")
    if raw is None:
        return 8000
    try:
        port = int(raw)
    except ValueError:
        empty = "; unset it for the default" if not raw.strip() else ""
        raise SystemExit(f"PORT={raw!r} is not a whole number{empty}.") from None
    if not 1 <= port <= 65535:
        raise SystemExit(f"PORT must be from 1 to 65535 (it is {port}).")
    return port


HOST, PORT = "127.0.0.1", port_read(os.environ)


# As in docker-compose.yml: a stopped trainer makes Celery's cold shutdown, which queues its run again at once to
# resume from its last epoch checkpoint. A warm one would wait for a run of hours, until stop_all's grace ran out and
# the run was killed under the worker.
TRAINER_ENV = {"REMAP_SIGTERM": "SIGQUIT"}
# Ignored by git with the rest of var/: the demo account's random password, for later starts to print again.
DEMO_PASSWORD_FILE = Path("var") / "demo-password"


def say(message: str) -> None:
    print(f"==> {message}", flush=True)


def redis_answers(url: str, *, timeout: float = 1.0) -> bool:
    # Through redis-py, as the broker will connect: a password, a database number or TLS (rediss://) in the URL
    # count, and a Redis that refuses them does not answer.
    client = redis.Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout)
    try:
        return bool(client.ping())
    except (redis.RedisError, OSError):
        return False
    finally:
        client.close()


class StartRefused(Exception):
    """What stops `make run` before it starts anything, said as it is."""


def choose_broker(env: dict[str, str]) -> None:
    # Set empty (`CELERY_BROKER_URL=` in .env), it means the default, as in the settings.
    url = env["CELERY_BROKER_URL"] = env.get("CELERY_BROKER_URL") or "redis://127.0.0.1:6379/0"
    try:
        # The password stays off the terminal.
        shown = maybe_sanitize_url(url)
        urlparse(url).port  # noqa: B018 - raises for a port that is no number
    except ValueError:
        # Such as a password with an unencoded "/", whose rest is read as the port: the error would quote it.
        raise StartRefused(
            "CELERY_BROKER_URL could not be read: percent-encode @ / : ? and # in its user and password "
            "(%40 %2F %3A %3F %23)."
        ) from None
    if urlparse(url).scheme not in {"redis", "rediss"}:
        say(f"Broker: {shown}")
        return
    if redis_answers(url):
        say(f"Broker: Redis at {shown}")
        return
    env["CELERY_BROKER_URL"] = "filesystem://"
    say(
        f"No Redis answers at {shown}: using the embedded broker (Kombu's filesystem transport in var/broker). "
        "Start Redis (or fix the URL's password) and run again for the real one."
    )


def port_unavailable(host: str, port: int) -> str | None:
    """Why gunicorn could not listen on host:port (another program serves there), or None when it can."""
    with socket.socket() as probe:
        # As gunicorn binds: a connection of an earlier run still closing does not count, a listener does.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            return exc.strerror or str(exc)
    return None


def child_env(environment: Mapping[str, str]) -> dict[str, str]:
    """The environment of every process started: the development settings unless others are named."""
    env = dict(environment)
    env.setdefault("DJANGO_SETTINGS_MODULE", "mnistsite.settings.dev")
    env["PYTHONUNBUFFERED"] = "1"
    # Mail sent from here (a password reset, an email confirmation) links to the port served, not the default's.
    env.setdefault("SITE_URL", f"http://{HOST}:{PORT}")
    return env


def choose_cache(env: dict[str, str]) -> None:
    """A cache every web process shares, unless CACHE_URL names one: gunicorn runs several, and a per-process
    cache let each count log-in failures and uploads on its own (8 wrong passwords before a lockout of 5).

    The broker's Redis, in the next database (as in docker-compose.yml), or files in var/cache without one.
    """
    if env.get("CACHE_URL"):
        return
    broker = urlparse(env["CELERY_BROKER_URL"])
    if broker.scheme in {"redis", "rediss"}:
        database = int(broker.path.strip("/") or 0)
        # Redis has databases 0 to 15: the last one's neighbour is the one before it.
        cache_database = database + 1 if database < 15 else database - 1
        # django-environ reads redis:// and rediss:// (TLS) as Redis caches too.
        env["CACHE_URL"] = urlunparse(broker._replace(path=f"/{cache_database}"))
    else:
        env["CACHE_URL"] = f"filecache://{REPO / 'var' / 'cache'}"
    say(f"Cache: {maybe_sanitize_url(env['CACHE_URL'])}")


def manage(*args: str, env: dict[str, str], capture: bool = False) -> str:
    # Its own session, so that Ctrl-C reaches it through us: passed on, and waited for, the command can record
    # how it stopped (a training run marks itself failed) instead of being killed a quarter second later.
    process = subprocess.Popen(
        [PYTHON, "manage.py", *args], cwd=REPO, env=env, start_new_session=True,
        stdout=subprocess.PIPE if capture else None, text=True,
    )
    try:
        output, _ = process.communicate()
        returncode = process.returncode
    except KeyboardInterrupt:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        raise
    if returncode:
        raise subprocess.CalledProcessError(returncode, ["manage.py", *args], output=output)
    return output or ""


def demo_account_ensure(*, env: dict[str, str], password_file: Path = DEMO_PASSWORD_FILE) -> str:
    """The demo account's credentials: a random password the first time, kept in ``password_file`` (relative to
    the checkout) to show again; an existing account's password is never reset."""
    return manage("ensure_demo_user", f"--password-file={password_file}", env=env, capture=True).strip()


def start(args: list[str], *, env: dict[str, str]) -> subprocess.Popen:
    # Own process group, so Ctrl-C reaches each child once, through us.
    return subprocess.Popen(args, cwd=REPO, env=env, start_new_session=True)


def _group_alive(group: int) -> bool:
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stop_all(processes: list[subprocess.Popen], *, grace: float = 20.0) -> None:
    for process in processes:
        if process.poll() is None:
            # The leader alone: it stops its own children in order (a worker lets its pool finish the batch in hand,
            # gunicorn its requests). A SIGTERM to the whole group killed a worker's pool process mid-task.
            os.kill(process.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    for process in processes:
        try:
            process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    # A child forked while its parent was stopping (the worker's embedded beat, started as the signal came) outlives
    # it in the group, and would go on sending the beat's tasks for ever.
    for signum in (signal.SIGTERM, signal.SIGKILL):
        stragglers = [process.pid for process in processes if _group_alive(process.pid)]
        for group in stragglers:
            try:
                os.killpg(group, signum)
            except ProcessLookupError:
                pass
        settle = time.monotonic() + 2
        while stragglers and time.monotonic() < settle and any(_group_alive(group) for group in stragglers):
            time.sleep(0.05)


def celery_worker_command(env: Mapping[str, str]) -> list[str]:
    """A Celery worker's command, its queues and name to follow."""
    # --without-heartbeat: see the worker in docker-compose.yml. Celery sets the root logger's level from --loglevel
    # after Django has applied LOGGING, so it is given the level the settings read.
    return [PYTHON, "-m", "celery", "-A", "mnistsite", "worker", "--without-heartbeat",
            "--loglevel", (env.get("LOG_LEVEL") or "").strip() or "INFO"]


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main() -> int:
    # Ctrl-C and a plain `kill` both stop every child; a shell that started us in the background
    # may have left SIGINT ignored, so install the handlers explicitly.
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    # Before the data, the database and the model, which take minutes the first time: found when gunicorn starts,
    # a port in use cost all of that for a server that then stopped.
    unavailable = port_unavailable(HOST, PORT)
    if unavailable:
        say(f"{HOST}:{PORT} is taken ({unavailable}): stop what serves there, or choose another port, "
            f"e.g. PORT={PORT + 1 if PORT < 65535 else 8000} make run.")
        return 1
    env = child_env(os.environ)
    (REPO / "var").mkdir(exist_ok=True)
    try:
        choose_broker(env)
    except StartRefused as exc:
        say(str(exc))
        return 1
    choose_cache(env)

    try:
        say("MNIST data")
        manage("fetch_mnist", env=env)
        say("Database")
        manage("migrate", "--noinput", env=env)
        demo = demo_account_ensure(env=env)
        say(demo)
        say("Model")
        manage("ensure_model", env=env)
        say("Sample images")
        manage("load_samples", "--sync", env=env)
    except KeyboardInterrupt:
        say("Stopped while preparing; run it again to carry on.")
        return 130
    except subprocess.CalledProcessError as exc:
        # Its own error (a setting refused, naming it) is above; a traceback of ours after it would bury it.
        say(f"{' '.join(exc.cmd)} failed (exit status {exc.returncode}): its error is above. Fix that and run again.")
        return 1

    celery = celery_worker_command(env)
    named = {
        "The inference worker (with beat)": start(
            [*celery, "-Q", "inference", "-c", "2", "-n", "worker@%h",
             "--beat", "--schedule", str(REPO / "var" / "celerybeat-schedule")],
            env=env,
        ),
        # A trainer of its own, as in docker-compose.yml: training runs sharing the inference worker's processes
        # would leave no process to read uploads for as long as they train; each run in a fresh process, which
        # gives back the run's memory when it exits.
        "The trainer": start([*celery, "-Q", "training", "-c", "1", "--max-tasks-per-child", "1", "-n", "trainer@%h"],
                             env={**env, **TRAINER_ENV}),
        "gunicorn": start(
            # Processes and threads come from gunicorn.conf.py.
            [PYTHON, "-m", "gunicorn", "mnistsite.wsgi:application", "--bind", f"{HOST}:{PORT}"],
            env={"GUNICORN_ACCESS_LOG": "-", **env},
        ),
    }
    processes = list(named.values())
    say(f"Serving on http://{HOST}:{PORT}/ (admin at /admin/). Press Ctrl-C to stop.")
    # Again here, where it is seen: the output of the steps above has scrolled it away.
    say(demo)
    try:
        while all(process.poll() is None for process in processes):
            time.sleep(0.5)
        name, stopped = next((name, process) for name, process in named.items() if process.poll() is not None)
        # Its own error is above, among the others' output.
        say(f"{name} stopped (exit status {stopped.returncode}): its error is above. Shutting down the others.")
        return 1
    except KeyboardInterrupt:
        say("Stopping")
        return 0
    finally:
        # A second Ctrl-C must not cut the shutdown short and leave children behind.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        stop_all(processes)


if __name__ == "__main__":
    sys.exit(main())
