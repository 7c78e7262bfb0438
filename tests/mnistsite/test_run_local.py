"""`make run` (scripts/run_local.py) reads .env for what it decides itself and finds Redis as the broker will."""
import os
import re
import runpy
import shutil
import socket
import subprocess
import sys
import time

import pytest

from tests.processes import NO_BROKER_URL, REPO, child_env

RUN_LOCAL = runpy.run_path(str(REPO / "scripts" / "run_local.py"), run_name="run_local")


@pytest.fixture
def redis_with_password(tmp_path):
    """A Redis server of the test's own that asks for a password (the shared one asks for none)."""
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--requirepass", "s3cret",
         "--save", "", "--appendonly", "no", "--dir", str(tmp_path)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise
                time.sleep(0.05)
        yield port
    finally:
        server.terminate()
        server.wait(timeout=10)


def test_make_run_finds_the_redis_it_is_given_and_falls_back_when_none_answers(settings):
    assert RUN_LOCAL["redis_answers"](settings.CELERY_BROKER_URL) is True
    assert RUN_LOCAL["redis_answers"](NO_BROKER_URL) is False


def test_make_run_uses_a_redis_that_asks_for_a_password_only_with_the_right_one(redis_with_password):
    port = redis_with_password
    assert RUN_LOCAL["redis_answers"](f"redis://:s3cret@127.0.0.1:{port}/0") is True
    assert RUN_LOCAL["redis_answers"](f"redis://:wrong@127.0.0.1:{port}/0") is False
    assert RUN_LOCAL["redis_answers"](f"redis://127.0.0.1:{port}/0") is False


def test_make_run_keeps_the_brokers_password_off_the_terminal(redis_with_password, capsys):
    env = {"CELERY_BROKER_URL": f"redis://:s3cret@127.0.0.1:{redis_with_password}/0"}
    RUN_LOCAL["choose_broker"](env)
    assert env["CELERY_BROKER_URL"].startswith("redis://:s3cret@")
    out = capsys.readouterr().out
    assert "Broker: Redis at" in out and "s3cret" not in out


def test_make_run_gives_the_demo_account_a_random_password_shows_it_and_never_resets_it(
    transactional_db, django_user_model, tmp_path
):
    env = child_env(DEBUG="true")
    kept = tmp_path / "demo-password"

    first = RUN_LOCAL["demo_account_ensure"](env=env, password_file=kept)

    demo = django_user_model.objects.get(username="demo")
    shown = re.search(r"password '([^']+)'", first).group(1)
    assert demo.is_superuser and demo.check_password(shown) and kept.read_text().strip() == shown
    # The password the README once published for it.
    assert not demo.check_password("mnist-demo-2026")

    second = RUN_LOCAL["demo_account_ensure"](env=env, password_file=kept)

    assert django_user_model.objects.get(username="demo").password == demo.password
    assert f"password {shown!r}" in second


def test_make_run_leaves_an_existing_demo_accounts_password_and_says_how_to_set_one(
    transactional_db, django_user_model, tmp_path
):
    django_user_model.objects.create_superuser(username="demo", password="the-Operators-own-1")

    said = RUN_LOCAL["demo_account_ensure"](env=child_env(DEBUG="true"), password_file=tmp_path / "demo-password")

    assert django_user_model.objects.get(username="demo").check_password("the-Operators-own-1")
    assert "manage.py changepassword demo" in said


def test_make_run_reads_the_port_and_the_broker_from_env_and_the_environment_wins_over_it(tmp_path):
    # A copy beside a .env of its own, so the test neither needs nor touches the repository's .env.
    (tmp_path / "scripts").mkdir()
    shutil.copy(REPO / "scripts" / "run_local.py", tmp_path / "scripts" / "run_local.py")
    (tmp_path / ".env").write_text("PORT=8123\nCELERY_BROKER_URL=redis://127.0.0.1:6379/7\nLOG_LEVEL=DEBUG\n")
    show = (
        "import os, runpy, sys; script = runpy.run_path(sys.argv[1], run_name='run_local'); "
        "print(script['PORT'], os.environ['CELERY_BROKER_URL'], os.environ['LOG_LEVEL'])"
    )
    env = {key: value for key, value in os.environ.items() if key not in {"PORT", "CELERY_BROKER_URL"}}
    result = subprocess.run(
        [sys.executable, "-c", show, str(tmp_path / "scripts" / "run_local.py")],
        cwd=REPO, env={**env, "LOG_LEVEL": "WARNING"}, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["8123", "redis://127.0.0.1:6379/7", "WARNING"]


def test_stopping_make_run_also_stops_a_child_left_behind_by_a_process_that_already_exited():
    # The shape of the worker whose embedded beat was forked as Ctrl-C came: the leader is gone, its child is not.
    leader = RUN_LOCAL["start"]([sys.executable, "-c", (
        "import subprocess, sys, time; "
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)']); "
        "print(child.pid, flush=True)"
    )], env=dict(os.environ))
    leader.wait(timeout=30)
    assert os.killpg(leader.pid, 0) is None  # the child still holds the group

    RUN_LOCAL["stop_all"]([leader], grace=1)

    with pytest.raises(ProcessLookupError):
        os.killpg(leader.pid, 0)


@pytest.mark.worker
def test_stopping_make_run_during_a_training_run_queues_the_run_again_without_a_lost_worker_error(start_celery_worker):
    from tests.reliability.conftest import wait_until
    from training import services
    from training.models import Checkpoint, TrainingRun

    # The trainer as `make run` starts it.
    trainer = start_celery_worker(queues="training", concurrency=1, extra_args=["--max-tasks-per-child", "1"],
                                  **RUN_LOCAL["TRAINER_ENV"])
    run = services.training_run_create(
        created_by=None, architecture="mlp", epochs=20, batch_size=64, learning_rate=1e-3,
        augment=False, train_subset=20000, device="cpu",
    )
    wait_until(lambda: Checkpoint.objects.filter(run=run, epoch=1).exists(), timeout=120,
               what=lambda: f"the first epoch checkpoint:\n{trainer.log()[-3000:]}")

    RUN_LOCAL["stop_all"]([trainer.popen])

    run.refresh_from_db()
    assert (run.status, run.attempts) == (TrainingRun.Status.QUEUED, 0), f"{run.status}: {run.error}"
    assert "queued again to resume" in trainer.log()
    assert "WorkerLostError" not in trainer.log(), trainer.log()[-3000:]


@pytest.mark.worker
def test_stopping_make_run_while_a_batch_of_predictions_runs_lets_the_worker_finish_it_without_a_lost_worker_error(
    start_celery_worker, user, active_checkpoint
):
    import io

    import numpy as np
    from PIL import Image

    from classifier import services
    from classifier.models import Prediction
    from tests.reliability.conftest import wait_until

    worker = start_celery_worker(queues="inference", concurrency=1)
    # Photos of a digit on noisy paper: each takes the worker tens of milliseconds, the batch some seconds.
    noise = np.random.default_rng(0).integers(180, 255, (900, 900), dtype=np.uint8)
    noise[200:700, 420:480] = 20
    photo = io.BytesIO()
    Image.fromarray(noise).save(photo, "PNG")
    files = [(io.BytesIO(photo.getvalue()), f"photo-{index}.png") for index in range(32)]
    predictions = services.predictions_submit(owner=user, files=files, source="api")
    ids = [prediction.pk for prediction in predictions]
    wait_until(lambda: Prediction.objects.filter(pk__in=ids, status=Prediction.Status.RUNNING).exists(),
               timeout=60, interval=0.01, what=lambda: f"the batch to start:\n{worker.log()[-3000:]}")

    RUN_LOCAL["stop_all"]([worker.popen])

    assert "WorkerLostError" not in worker.log(), worker.log()[-3000:]
    assert set(Prediction.objects.filter(pk__in=ids).values_list("status", flat=True)) == {Prediction.Status.DONE}


def test_make_run_links_its_mail_to_the_port_it_serves_unless_site_url_is_set():
    assert RUN_LOCAL["child_env"]({})["SITE_URL"] == f"http://127.0.0.1:{RUN_LOCAL['PORT']}"
    given = {"SITE_URL": "https://digits.example.com"}
    assert RUN_LOCAL["child_env"](given)["SITE_URL"] == "https://digits.example.com"


def _cache_shared_between_processes(env: dict[str, str]) -> bool:
    """Whether a value one Django process stores in the default cache is read by another."""
    env = {**child_env(), **env, "DJANGO_SETTINGS_MODULE": "mnistsite.settings.dev"}
    key = f"make-run-{os.getpid()}-{time.monotonic_ns()}"
    run = [sys.executable, "manage.py", "shell", "-c"]
    subprocess.run([*run, f"from django.core.cache import cache; cache.set({key!r}, 'shared', 60)"],
                   cwd=REPO, env=env, check=True, capture_output=True, timeout=60)
    read = subprocess.run([*run, f"from django.core.cache import cache; print(cache.get({key!r}))"],
                          cwd=REPO, env=env, check=True, capture_output=True, text=True, timeout=60)
    # The shell says first what it imported by itself.
    return read.stdout.strip().splitlines()[-1:] == ["shared"]


@pytest.mark.parametrize("broker", ["redis", "filesystem"])
def test_make_runs_web_processes_share_one_cache_so_lockouts_and_throttles_count_across_them(settings, broker):
    env = {"CELERY_BROKER_URL": settings.CELERY_BROKER_URL if broker == "redis" else "filesystem://"}
    RUN_LOCAL["choose_cache"](env)
    assert env["CACHE_URL"].startswith("redis://" if broker == "redis" else "filecache://")
    assert _cache_shared_between_processes(env)
    # As every process had its own before: what one stored, another never saw.
    assert not _cache_shared_between_processes({**env, "CACHE_URL": "locmemcache://"})


def test_make_run_keeps_the_cache_it_is_given():
    env = {"CELERY_BROKER_URL": "redis://127.0.0.1:6379/3", "CACHE_URL": "rediscache://10.0.0.5:6379/4"}
    RUN_LOCAL["choose_cache"](env)
    assert env["CACHE_URL"] == "rediscache://10.0.0.5:6379/4"


@pytest.mark.parametrize(("broker", "cache"), [
    ("redis://127.0.0.1:6379", "redis://127.0.0.1:6379/1"),
    ("redis://:pw@10.0.0.5:6379/15", "redis://:pw@10.0.0.5:6379/14"),
    ("rediss://:pw@redis.example:6380/3", "rediss://:pw@redis.example:6380/4"),
])
def test_make_run_keeps_its_cache_in_the_brokers_redis_in_a_database_of_its_own(broker, cache):
    env = {"CELERY_BROKER_URL": broker}
    RUN_LOCAL["choose_cache"](env)
    assert env["CACHE_URL"] == cache


def _run_local_copy(tmp_path, **env: str) -> subprocess.CompletedProcess:
    # A copy in a folder of its own, without manage.py: whatever it would prepare fails at once instead of touching
    # the repository's database, data or models.
    (tmp_path / "scripts").mkdir(exist_ok=True)
    shutil.copy(REPO / "scripts" / "run_local.py", tmp_path / "scripts" / "run_local.py")
    inherited = {key: value for key, value in os.environ.items() if key not in {"PORT", "CELERY_BROKER_URL"}}
    return subprocess.run(
        [sys.executable, str(tmp_path / "scripts" / "run_local.py")], cwd=tmp_path,
        env={**inherited, "CELERY_BROKER_URL": "filesystem://", **env}, capture_output=True, text=True, timeout=60,
    )


@pytest.mark.parametrize(("port", "refusal"), [
    ("80OO", "PORT='80OO' is not a whole number"),
    ("", "PORT='' is not a whole number; unset it for the default"),
    ("0", "PORT must be from 1 to 65535 (it is 0)"),
    ("70000", "PORT must be from 1 to 65535 (it is 70000)"),
])
def test_make_run_refuses_a_port_it_cannot_serve_naming_the_variable(tmp_path, port, refusal):
    result = _run_local_copy(tmp_path, PORT=port)
    assert result.returncode != 0
    assert refusal in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    assert "==> MNIST data" not in result.stdout


def test_make_run_stops_before_preparing_anything_when_its_port_is_taken_and_says_what_to_do(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = _run_local_copy(tmp_path, PORT=str(port))
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"127.0.0.1:{port} is taken" in result.stdout, result.stdout
    assert f"PORT={port + 1} make run" in result.stdout
    # Before the data, the database and the model: found after a first training run, it cost minutes for nothing.
    assert "==> MNIST data" not in result.stdout


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_a_step_that_fails_ends_make_run_saying_which_one_instead_of_with_a_traceback_of_its_own(tmp_path):
    # The copy has no manage.py beside it, so its first step fails as one refusing a setting in .env would.
    result = _run_local_copy(tmp_path, PORT=str(_free_port()))
    assert result.returncode == 1, result.stdout + result.stderr
    assert "manage.py fetch_mnist failed" in result.stdout, result.stdout
    assert "CalledProcessError" not in result.stderr and "Traceback" not in result.stderr, result.stderr


def test_a_broker_url_it_cannot_read_stops_make_run_without_quoting_its_password(tmp_path):
    result = _run_local_copy(tmp_path, PORT=str(_free_port()), CELERY_BROKER_URL="redis://:s3cr/et@127.0.0.1:6379/0")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "CELERY_BROKER_URL could not be read: percent-encode" in result.stdout, result.stdout
    assert "s3cr" not in result.stdout + result.stderr


def test_make_run_takes_a_broker_url_set_empty_as_the_default_redis_and_tells_its_children_so():
    # A `CELERY_BROKER_URL=` line in .env: make run looked for no Redis and its workers for RabbitMQ.
    env = {"CELERY_BROKER_URL": ""}
    RUN_LOCAL["choose_broker"](env)
    default = "redis://127.0.0.1:6379/0"
    assert env["CELERY_BROKER_URL"] == (default if RUN_LOCAL["redis_answers"](default) else "filesystem://")
    RUN_LOCAL["choose_cache"](env)
    assert env["CACHE_URL"] == ("redis://127.0.0.1:6379/1" if env["CELERY_BROKER_URL"] == default
                                else f"filecache://{REPO / 'var' / 'cache'}")


@pytest.mark.parametrize(("log_level", "given"), [("warning", "warning"), (None, "INFO")])
def test_make_runs_workers_log_at_the_level_log_level_sets_for_the_rest_of_the_site(log_level, given):
    # Celery sets the root logger's level from --loglevel after Django applied LOGGING: fixed at INFO, LOG_LEVEL in
    # .env changed the web's log and nothing in the workers'.
    env = {} if log_level is None else {"LOG_LEVEL": log_level}
    words = RUN_LOCAL["celery_worker_command"](env)
    assert words[words.index("--loglevel") + 1] == given
