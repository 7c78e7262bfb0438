"""gunicorn.conf.py: the measured defaults, overridable from the environment, as gunicorn itself reads them."""
import os
import subprocess
import sys
from pathlib import Path

from api.serializers import MAX_WAIT_SECONDS

REPO = Path(__file__).resolve().parent.parent.parent


def _effective_config(**env: str) -> dict[str, str]:
    result = subprocess.run(
        [sys.executable, "-m", "gunicorn", "--print-config", "mnistsite.wsgi:application"],
        cwd=REPO, env={**os.environ, "DJANGO_SETTINGS_MODULE": "mnistsite.settings.test", **env},
        capture_output=True, text=True, timeout=60, check=True,
    )
    pairs = (line.split("=", 1) for line in result.stdout.splitlines() if "=" in line)
    return {key.strip(): value.strip() for key, value in pairs}


def test_gunicorn_reads_the_project_config_with_its_measured_defaults():
    config = _effective_config()
    assert (config["workers"], config["threads"], config["bind"]) == ("2", "4", "['0.0.0.0:8000']")
    # Longer than the longest `?wait`, so a waiting request is never mistaken for a hung process.
    assert int(config["timeout"]) > MAX_WAIT_SECONDS


def test_processes_and_threads_can_be_set_from_the_environment():
    config = _effective_config(GUNICORN_WORKERS="3", GUNICORN_THREADS="2", GUNICORN_BIND="127.0.0.1:9000")
    assert (config["workers"], config["threads"], config["bind"]) == ("3", "2", "['127.0.0.1:9000']")
