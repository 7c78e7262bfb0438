"""The compose file's services name modules, commands, queues and settings that exist."""
import importlib
import importlib.util
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from django.core.management import get_commands

from api.serializers import MAX_WAIT_SECONDS
from mnistsite.settings import base
from tests.processes import REPO

COMPOSE = yaml.safe_load((REPO / "docker-compose.yml").read_text())
GPU = yaml.safe_load((REPO / "docker-compose.gpu.yml").read_text())
APP_SERVICES = ["migrate", "web", "worker", "trainer", "beat"]


def _words(service: str) -> list[str]:
    command = COMPOSE["services"][service]["command"]
    words = shlex.split(command) if isinstance(command, str) else list(command)
    # "sh -c '...'" wraps a chain of commands; check what it runs.
    if words[:2] == ["sh", "-c"]:
        words = shlex.split(words[2].replace("&&", " ; "))
    return words


def _commands(service: str) -> list[list[str]]:
    commands, current = [], []
    for word in _words(service):
        if word == ";":
            commands.append(current)
            current = []
        elif not (word == "exec" and not current):  # "exec celery ...": the shell hands its process to celery
            current.append(word)
    return [*commands, current]


def test_compose_declares_every_service_with_named_volumes():
    assert set(COMPOSE["services"]) >= {"web", "worker", "trainer", "redis", "postgres"}
    assert set(COMPOSE["volumes"]) >= {"media", "data", "checkpoints"}


@pytest.mark.parametrize("service", APP_SERVICES)
def test_app_services_use_settings_modules_that_exist(service):
    env = COMPOSE["services"][service]["environment"]
    # Found, not imported: production settings refuse to load without the stack's environment (test_settings.py).
    assert importlib.util.find_spec(env["DJANGO_SETTINGS_MODULE"]) is not None
    for variable in ("DATABASE_URL", "CELERY_BROKER_URL", "MEDIA_ROOT", "DATA_DIR", "CHECKPOINT_DIR", "SECRET_KEY"):
        assert variable in env


@pytest.mark.parametrize("service", APP_SERVICES)
def test_app_service_commands_name_real_modules_commands_and_queues(service):
    known_queues = {route["queue"] for route in base.CELERY_TASK_ROUTES.values()}
    for words in _commands(service):
        program = words[0]
        if program == "gunicorn":
            module, _, attribute = words[1].partition(":")
            assert hasattr(importlib.import_module(module), attribute)
        elif program == "celery":
            assert words[words.index("-A") + 1] == "mnistsite"
            if "-Q" in words:
                assert set(words[words.index("-Q") + 1].split(",")) <= known_queues
        elif program == "python":
            assert words[1] == "manage.py" and words[2] in get_commands(), words
        else:
            pytest.fail(f"{service} runs an unknown program: {words}")


def test_every_app_service_starts_only_after_the_migrations_ran():
    assert _words("migrate")[:3] == ["python", "manage.py", "migrate"]
    for service in APP_SERVICES:
        if service != "migrate":
            depends = COMPOSE["services"][service]["depends_on"]
            assert depends["migrate"] == {"condition": "service_completed_successfully"}, service


def test_trainer_runs_one_training_run_at_a_time_each_in_a_fresh_process():
    words = _commands("trainer")[-1]
    assert words[words.index("-Q") + 1] == "training"
    assert words[words.index("-c") + 1] == "1"
    assert words[words.index("--max-tasks-per-child") + 1] == "1"


@pytest.mark.parametrize("service", ["worker", "trainer"])
def test_workers_send_no_celery_heartbeat_events_that_would_hold_their_loop_while_the_broker_is_gone(service):
    words = _commands(service)[-1]
    assert words[:3] == ["celery", "-A", "mnistsite"] and words[3] == "worker"
    assert "--without-heartbeat" in words


def test_redis_keeps_queued_tasks_across_restarts_and_never_evicts_them():
    command = COMPOSE["services"]["redis"]["command"]
    assert "--appendonly yes" in command
    assert "--maxmemory-policy noeviction" in command


def test_gpu_override_gives_the_worker_and_trainer_a_gpu():
    for service in ("worker", "trainer"):
        devices = GPU["services"][service]["deploy"]["resources"]["reservations"]["devices"]
        assert devices[0]["capabilities"] == ["gpu"]


def test_dockerfile_installs_the_pinned_requirements_without_the_test_and_benchmark_tools():
    dockerfile = (REPO / "Dockerfile").read_text()
    assert "pip install -r requirements.txt" in dockerfile and "requirements-dev" not in dockerfile
    runtime = Path(REPO / "requirements.txt").read_text()
    assert runtime.count("torch==2.14.1") == 1
    assert not {"pytest", "playwright", "schemathesis", "Flask", "py-spy"} & {
        line.split("==")[0] for line in runtime.splitlines()
    }
    assert Path(REPO / "requirements-dev.txt").read_text().startswith(
        "# Tests, benchmarks and their tools; the image installs requirements.txt only.\n-r requirements.txt\n"
    )


def test_the_image_gets_no_local_secrets_environments_databases_or_uploads():
    ignored = {line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")}
    assert {".env", ".git", ".venv", "db.sqlite3*", "media/uploads", "media/derived", "media/orphaned", "media/scaled",
            "data", "checkpoints", "var"} <= ignored
    # The shipped sample sets are copied into the image (Dockerfile), so they must stay in the context.
    assert not any(entry in ignored for entry in ("media", "media/samples", "media/*"))
    git_ignored = (REPO / ".gitignore").read_text().splitlines()
    assert {".env", "/media/uploads/", "/media/derived/", "/media/orphaned/", "/media/scaled/"} <= set(git_ignored)


def test_the_web_port_is_published_on_the_loopback_only_unless_told_otherwise():
    (mapping,) = COMPOSE["services"]["web"]["ports"]
    assert mapping == "${WEB_BIND_ADDRESS:-127.0.0.1}:8000:8000"


def test_the_trainer_shell_hands_its_process_to_celery_so_stop_signals_reach_it():
    command = shlex.split(COMPOSE["services"]["trainer"]["command"])[2]
    assert command.split("&&")[-1].split()[:2] == ["exec", "celery"]


@pytest.mark.parametrize("service", APP_SERVICES)
def test_every_app_service_runs_under_an_init_that_passes_stop_signals_on(service):
    assert COMPOSE["services"][service].get("init") is True


def test_a_stopped_trainer_hands_its_run_back_instead_of_being_killed_mid_run():
    trainer = COMPOSE["services"]["trainer"]
    # Covered end to end by tests/reliability/test_reliability_training.py with the same variable.
    assert trainer["environment"]["REMAP_SIGTERM"] == "SIGQUIT"
    assert trainer["environment"]["DJANGO_SETTINGS_MODULE"] == COMPOSE["services"]["web"]["environment"][
        "DJANGO_SETTINGS_MODULE"]


def _seconds(duration: str) -> int:
    # Compose durations as this file writes them: "40s", "1m30s".
    parts = re.fullmatch(r"(?:(\d+)m)?(?:(\d+)s)?", duration)
    assert parts and duration, duration
    return int(parts[1] or 0) * 60 + int(parts[2] or 0)


@pytest.mark.parametrize("service", APP_SERVICES)
def test_app_services_read_every_other_setting_from_an_optional_env_file(service):
    # Without it every setting but the few named in the file kept its default under Docker, whatever .env said.
    assert COMPOSE["services"][service]["env_file"] == [{"path": ".env", "required": False}]


@pytest.mark.parametrize("service", APP_SERVICES)
def test_the_stacks_own_addresses_and_paths_win_over_a_dotenv_written_for_make_run(service):
    env = COMPOSE["services"][service]["environment"]
    assert env["DEBUG"] == "false"
    assert env["CELERY_BROKER_URL"].startswith("redis://redis:")
    assert env["CACHE_URL"].startswith("rediscache://redis:")
    assert "@postgres:5432/" in env["DATABASE_URL"]
    # whitenoise serves the files collectstatic put where the image's STATIC_ROOT says.
    assert f"STATIC_ROOT={env['STATIC_ROOT']}" in (REPO / "Dockerfile").read_text()
    for variable, volume_path in (("MEDIA_ROOT", "media"), ("DATA_DIR", "data"), ("CHECKPOINT_DIR", "checkpoints")):
        assert f"{volume_path}:{env[variable]}" in COMPOSE["services"][service]["volumes"]


def test_web_binds_the_port_it_publishes_and_its_health_check_asks():
    web = COMPOSE["services"]["web"]
    container_port = web["ports"][0].rsplit(":", 1)[1]
    assert web["environment"]["GUNICORN_BIND"] == f"0.0.0.0:{container_port}"
    # The image's own default too, for a container started without compose: gunicorn's is the loopback.
    assert f"GUNICORN_BIND=0.0.0.0:{container_port}" in (REPO / "Dockerfile").read_text()
    assert f"127.0.0.1:{container_port}/healthz" in " ".join(web["healthcheck"]["test"])


def test_a_stopped_web_gets_time_to_answer_the_longest_wait_before_docker_kills_it():
    # gunicorn's own graceful timeout sits between the two (tests/mnistsite/test_gunicorn_conf.py).
    assert _seconds(COMPOSE["services"]["web"]["stop_grace_period"]) > MAX_WAIT_SECONDS + 5


def test_a_stopped_inference_worker_gets_time_to_finish_any_prediction_or_mail_it_is_running():
    from accounts.tasks import password_reset_email_send
    from classifier.tasks import predictions_execute

    grace = _seconds(COMPOSE["services"]["worker"]["stop_grace_period"])
    assert grace > max(predictions_execute.time_limit, password_reset_email_send.time_limit)


def test_postgres_counts_as_healthy_only_once_the_real_server_listens_on_tcp():
    healthcheck = COMPOSE["services"]["postgres"]["healthcheck"]
    words = healthcheck["test"]
    assert words[:2] == ["CMD", "pg_isready"]
    # The image's first-start server, which creates the database, listens on the socket only.
    assert words[words.index("-h") + 1] == "127.0.0.1"
    assert words[words.index("-U") + 1] == COMPOSE["services"]["postgres"]["environment"]["POSTGRES_USER"]
    assert _seconds(healthcheck["start_period"]) >= 30


def test_the_apps_and_postgres_agree_on_the_database_password():
    password = COMPOSE["services"]["postgres"]["environment"]["POSTGRES_PASSWORD"]
    assert password.startswith("${POSTGRES_PASSWORD")
    for service in APP_SERVICES:
        assert f"postgres://mnistsite:{password}@postgres:5432/mnistsite" == (
            COMPOSE["services"][service]["environment"]["DATABASE_URL"])


def test_the_web_access_log_goes_to_standard_output_unless_the_env_file_says_otherwise():
    web = COMPOSE["services"]["web"]
    # A flag on the command line would win over GUNICORN_ACCESS_LOG, which gunicorn.conf.py reads.
    assert "--access-logfile" not in web["command"]
    assert web["environment"]["GUNICORN_ACCESS_LOG"] == "${GUNICORN_ACCESS_LOG:--}"


def _heartbeat_check_passes(service: str, heartbeat: Path) -> bool:
    """Run the service's health check as Docker would, with the service's heartbeat file at ``heartbeat``."""
    kind, command = COMPOSE["services"][service]["healthcheck"]["test"]
    assert kind == "CMD-SHELL"
    # "$$" is how a compose file writes a "$" that reaches the container's shell.
    return subprocess.run(["sh", "-c", command.replace("$$", "$")], timeout=10,
                          env={"PATH": os.environ["PATH"], "CELERY_HEARTBEAT_FILE": str(heartbeat)}).returncode == 0


@pytest.mark.parametrize("service", ["worker", "trainer", "beat"])
def test_celery_services_are_healthy_while_their_heartbeat_file_is_fresh_and_unhealthy_once_stale_or_missing(
    service, tmp_path
):
    env = COMPOSE["services"][service]["environment"]
    # Kept in the container (each has its own /tmp), where the image's user may write.
    assert env["CELERY_HEARTBEAT_FILE"].startswith("/tmp/")
    assert "CELERY_HEARTBEAT_INTERVAL" not in env  # the settings' default, which the age below fits
    command = COMPOSE["services"][service]["healthcheck"]["test"][1]
    assert "python" not in command and "celery" not in command  # a stat, not a process that loads the app

    heartbeat = tmp_path / "heartbeat"
    assert not _heartbeat_check_passes(service, heartbeat)  # not yet written: starting, or never connected
    heartbeat.touch()
    assert _heartbeat_check_passes(service, heartbeat)
    # Three touches missed (a busy host) still pass; a minute without one does not.
    missed = time.time() - 3 * base.CELERY_HEARTBEAT_INTERVAL
    os.utime(heartbeat, (missed, missed))
    assert _heartbeat_check_passes(service, heartbeat)
    stale = time.time() - 61
    os.utime(heartbeat, (stale, stale))
    assert not _heartbeat_check_passes(service, heartbeat)


def test_celery_health_checks_give_a_slow_start_time_and_count_only_repeated_failures():
    for service in ("worker", "trainer", "beat"):
        healthcheck = COMPOSE["services"][service]["healthcheck"]
        assert healthcheck["retries"] >= 3 and _seconds(healthcheck["timeout"]) <= _seconds(healthcheck["interval"])
        assert _seconds(healthcheck["start_period"]) >= 60
    # The trainer downloads MNIST before its worker starts.
    assert _seconds(COMPOSE["services"]["trainer"]["healthcheck"]["start_period"]) >= 5 * 60



@pytest.mark.parametrize("service", sorted(COMPOSE["services"]))
def test_every_service_keeps_its_logs_within_a_bounded_size(service):
    # Docker's default json-file logs grow without end on the disk the uploads' free-space floor protects.
    logging = COMPOSE["services"][service].get("logging", {})
    options = logging.get("options", {})
    assert logging.get("driver") == "json-file"
    assert re.fullmatch(r"\d+[km]", options.get("max-size", "")) and int(options.get("max-file", "0")) >= 1


def _interpolated(text: str, environment: dict[str, str]) -> str:
    # Compose's ${NAME:-default}: the default when NAME is unset or empty.
    return re.sub(r"\$\{(\w+):-([^}]*)\}", lambda m: environment.get(m[1]) or m[2], text)


@pytest.mark.parametrize("service", ["worker", "trainer", "beat"])
@pytest.mark.parametrize("log_level", ["warning", "DEBUG", None])
def test_celery_services_log_at_the_level_the_settings_read_from_log_level(service, log_level, tmp_path):
    # Celery sets the root logger's level from --loglevel after Django has applied LOGGING: a level fixed in the
    # command made LOG_LEVEL in .env change nothing in the worker's, trainer's and beat's logs.
    environment = {key: value for key, value in os.environ.items() if key != "LOG_LEVEL"}
    if log_level is not None:
        environment["LOG_LEVEL"] = log_level
    # The command as compose runs it (the trainer's through sh), with stand-ins for the programs it starts: celery
    # writes the arguments it was given.
    for program, script in (("python", "exit 0"), ("celery", 'printf "%s\\n" "$@"')):
        (tmp_path / program).write_text(f"#!/bin/sh\n{script}\n")
        (tmp_path / program).chmod(0o755)
    ran = subprocess.run(shlex.split(_interpolated(COMPOSE["services"][service]["command"], environment)),
                         env={"PATH": f"{tmp_path}:/usr/bin:/bin"}, capture_output=True, text=True, timeout=10)
    assert ran.returncode == 0, ran.stderr
    given = ran.stdout.splitlines()
    read = subprocess.run(
        [sys.executable, "-c",
         "import django; django.setup(); from django.conf import settings; print(settings.LOG_LEVEL)"],
        cwd=REPO, env={**environment, "DJANGO_SETTINGS_MODULE": "mnistsite.settings.dev"},
        capture_output=True, text=True, timeout=60,
    )
    assert read.returncode == 0, read.stderr
    assert given[given.index("--loglevel") + 1].upper() == read.stdout.split()[-1]
    # And the service's own settings read the same: it is named in its environment, not only in .env.
    assert _interpolated(COMPOSE["services"][service]["environment"]["LOG_LEVEL"], environment).upper() == (
        read.stdout.split()[-1])


def test_the_image_runs_as_a_numbered_user_that_owns_the_volumes_folders_and_is_not_root():
    dockerfile = (REPO / "Dockerfile").read_text()
    users = re.findall(r"^USER\s+(\S+)\s*$", dockerfile, flags=re.MULTILINE)
    # By number: an orchestrator that only runs non-root containers (Kubernetes' runAsNonRoot) cannot tell from a
    # name, and refuses to start the container at all.
    assert users and users[-1].isdigit() and int(users[-1]) != 0, users
    assert re.search(rf"useradd [^\n]*--uid {users[-1]}\b", dockerfile)
    # The named volumes take the folders' owner when first created: the user must own what it writes to.
    owned = re.search(r"chown -R \S+ (\S+)", dockerfile)
    for variable in ("MEDIA_ROOT", "DATA_DIR", "CHECKPOINT_DIR"):
        assert COMPOSE["services"]["web"]["environment"][variable].startswith(owned[1] + "/")
