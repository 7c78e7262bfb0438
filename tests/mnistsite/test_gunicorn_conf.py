"""gunicorn.conf.py: the measured defaults, overridable from the environment, as gunicorn itself reads them."""
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from api.serializers import MAX_WAIT_SECONDS

REPO = Path(__file__).resolve().parent.parent.parent


def _print_config(*, config_file: Path | None = None, **env: str) -> subprocess.CompletedProcess:
    # A developer's own GUNICORN_* must not decide what the defaults look like.
    inherited = {key: value for key, value in os.environ.items() if not key.startswith("GUNICORN_")}
    config = ["-c", str(config_file)] if config_file else []
    return subprocess.run(
        [sys.executable, "-m", "gunicorn", *config, "--print-config", "mnistsite.wsgi:application"],
        cwd=REPO, env={**inherited, "DJANGO_SETTINGS_MODULE": "mnistsite.settings.test", **env},
        capture_output=True, text=True, timeout=60,
    )


def _effective_config(*, config_file: Path | None = None, **env: str) -> dict[str, str]:
    result = _print_config(config_file=config_file, **env)
    assert result.returncode == 0, result.stderr
    pairs = (line.split("=", 1) for line in result.stdout.splitlines() if "=" in line)
    return {key.strip(): value.strip() for key, value in pairs}


def test_gunicorn_reads_the_project_config_with_its_measured_defaults():
    config = _effective_config()
    # The loopback: only the reverse proxy in front may reach it (see docker-compose.yml and the image for theirs).
    assert (config["workers"], config["threads"], config["bind"]) == ("2", "4", "['127.0.0.1:8000']")
    # Longer than the longest `?wait`, so a waiting request is never mistaken for a hung process.
    assert int(config["timeout"]) > MAX_WAIT_SECONDS


def test_processes_and_threads_can_be_set_from_the_environment():
    config = _effective_config(GUNICORN_WORKERS="3", GUNICORN_THREADS="2", GUNICORN_BIND="127.0.0.1:9000")
    assert (config["workers"], config["threads"], config["bind"]) == ("3", "2", "['127.0.0.1:9000']")


def test_a_stopped_process_finishes_the_longest_wait_and_docker_waits_for_it_to():
    graceful = int(_effective_config()["graceful_timeout"])
    assert graceful > MAX_WAIT_SECONDS
    grace = yaml.safe_load((REPO / "docker-compose.yml").read_text())["services"]["web"]["stop_grace_period"]
    assert int(re.fullmatch(r"(\d+)s", grace)[1]) > graceful
    assert _effective_config(GUNICORN_GRACEFUL_TIMEOUT="50")["graceful_timeout"] == "50"


def test_gunicorn_reads_the_env_file_beside_its_config_and_the_environment_wins_over_it(tmp_path):
    # A copy beside a .env of its own, so the test neither needs nor touches the repository's .env.
    shutil.copy(REPO / "gunicorn.conf.py", tmp_path / "gunicorn.conf.py")
    (tmp_path / ".env").write_text("GUNICORN_WORKERS=5\nGUNICORN_THREADS=3\nGUNICORN_GRACEFUL_TIMEOUT=45\n")
    config = _effective_config(config_file=tmp_path / "gunicorn.conf.py", GUNICORN_THREADS="2")
    assert (config["workers"], config["threads"], config["graceful_timeout"]) == ("5", "2", "45")


def test_a_malformed_or_empty_number_stops_gunicorn_naming_the_variable_and_its_value():
    for name, value in [("GUNICORN_WORKERS", "two"), ("GUNICORN_THREADS", ""), ("GUNICORN_TIMEOUT", "120s"),
                        ("GUNICORN_GRACEFUL_TIMEOUT", "35.5")]:
        result = _print_config(**{name: value})
        assert result.returncode != 0, name
        assert f"{name}={value!r} is not a whole number" in result.stderr, result.stderr
        assert "Traceback" not in result.stderr


def test_no_web_process_or_thread_is_refused_rather_than_listening_without_answering():
    for name in ("GUNICORN_WORKERS", "GUNICORN_THREADS"):
        result = _print_config(**{name: "0"})
        assert result.returncode != 0, name
        assert f"{name} must be 1 or more (it is 0)" in result.stderr, result.stderr


def test_an_empty_bind_address_serves_the_default_one_rather_than_none():
    assert _effective_config(GUNICORN_BIND="")["bind"] == "['127.0.0.1:8000']"
    assert _effective_config(GUNICORN_BIND=" ")["bind"] == "['127.0.0.1:8000']"


def test_the_access_log_writes_the_secret_parts_of_mailed_links_as_stars():
    import datetime as dt
    import runpy
    from types import SimpleNamespace

    from gunicorn.config import Config

    logger = runpy.run_path(str(REPO / "gunicorn.conf.py"))["AccessLogger"](Config())
    reset = "/accounts/password/reset/MQ/cz3kbk-0f1e2d3c4b5a69788796a5b4c3d2e1f0/"
    confirm = "/accounts/email/confirm/Ab.Cd-Ef/"
    environ = {
        "REQUEST_METHOD": "GET", "RAW_URI": f"{reset}?next=/", "PATH_INFO": reset, "QUERY_STRING": "next=/",
        "SERVER_PROTOCOL": "HTTP/1.1", "REMOTE_ADDR": "192.0.2.1", "HTTP_REFERER": f"https://digits.example.com{confirm}",
    }
    request = SimpleNamespace(headers=[("REFERER", environ["HTTP_REFERER"])])
    response = SimpleNamespace(status="200 OK", sent=10, headers=[])
    atoms = logger.atoms(response, request, environ, dt.timedelta(seconds=0.01))
    assert atoms["r"] == "GET /accounts/password/reset/MQ/***/?next=/ HTTP/1.1"
    assert atoms["U"] == "/accounts/password/reset/MQ/***/"
    assert atoms["f"] == atoms["{referer}i"] == "https://digits.example.com/accounts/email/confirm/***/"
    # The page a reset link leads to, once its token is in the session, names no secret.
    after = "/accounts/password/reset/MQ/set-password/"
    environ.update(RAW_URI=after, PATH_INFO=after)
    assert logger.atoms(response, request, environ, dt.timedelta(0))["U"] == after


@pytest.mark.django_db
def test_the_access_log_line_ends_with_the_request_id_the_site_answered_with(tmp_path):
    import http.client

    from tests.processes import child_env, start_process

    server = start_process(
        name="gunicorn", log_dir=tmp_path, env=child_env(GUNICORN_ACCESS_LOG="-"),
        args=[sys.executable, "-m", "gunicorn", "--bind", "127.0.0.1:0", "--workers", "1", "mnistsite.wsgi:application"],
    )
    try:
        server.wait_for_output("Booting worker", timeout=60)
        port = int(re.search(r"Listening at: http://127\.0\.0\.1:(\d+)", server.log())[1])
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        connection.request("GET", "/healthz", headers={"X-Request-ID": "lb-1f2e3d", "X-Forwarded-For": "203.0.113.7"})
        connection.getresponse().read()
        connection.request("GET", "/healthz?made", headers={"X-Request-ID": "not safe\x7f"})
        made = connection.getresponse()
        made.read()
        server.wait_for_output("/healthz?made", timeout=10)
    finally:
        server.stop()

    lines = server.log().splitlines()
    (sent,) = [line for line in lines if '"GET /healthz HTTP/1.1" 200' in line]
    (replaced,) = [line for line in lines if '"GET /healthz?made HTTP/1.1" 200' in line]
    assert sent.endswith('"203.0.113.7" lb-1f2e3d')  # the client's address as the proxy passed it, then the id
    assert re.fullmatch(r"[0-9a-f]{32}", made.getheader("X-Request-ID"))
    assert replaced.endswith(f'"-" {made.getheader("X-Request-ID")}') and "not safe" not in server.log()
