"""Each record is printed once, at the level asked for; a request for a Host the site does not serve is one warning."""
import logging
import os
import subprocess
import sys

import pytest

from tests.processes import REPO


@pytest.mark.parametrize("path", ["/accounts/login/", "/api/v1/predictions/"])
def test_a_host_the_site_does_not_serve_is_logged_as_a_warning_without_a_traceback(client, settings, caplog, path):
    settings.ALLOWED_HOSTS = ["testserver"]

    with caplog.at_level(logging.INFO):
        response = client.get(path, HTTP_HOST="scanner.example")

    assert response.status_code == 400
    (record,) = [record for record in caplog.records if record.name == "django.security.DisallowedHost"]
    assert record.levelno == logging.WARNING and record.levelname == "WARNING"
    assert record.exc_info is None and "scanner.example" in record.getMessage()
    assert "Traceback" not in caplog.text


def test_errors_of_other_loggers_keep_their_level_and_traceback(caplog):
    try:
        raise ValueError("a real fault")
    except ValueError:
        logging.getLogger("django.request").exception("Internal Server Error: /")

    (record,) = caplog.records
    assert record.levelno == logging.ERROR and record.exc_info is not None


def _log_lines(*, debug: str, log_level: str) -> list[str]:
    # In a process of its own: the settings' LOGGING is applied once, as Django starts.
    probe = (
        "import logging; "
        "logging.getLogger('django.request').info('a django record at INFO'); "
        "logging.getLogger('django.request').warning('a django record at WARNING'); "
        "logging.getLogger('classifier').info('a project record at INFO')"
    )
    env = {k: v for k, v in os.environ.items() if k not in {"DEBUG", "LOG_LEVEL", "DJANGO_SETTINGS_MODULE"}}
    env.update(DJANGO_SETTINGS_MODULE="mnistsite.settings.dev", DEBUG=debug, LOG_LEVEL=log_level)
    result = subprocess.run([sys.executable, "manage.py", "shell", "-c", probe], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return [line for line in result.stderr.splitlines() if "a django record" in line or "a project record" in line]


@pytest.mark.parametrize("debug", ["true", "false"])
def test_each_django_record_is_printed_once_in_the_sites_format_with_debug_on_or_off(debug):
    lines = _log_lines(debug=debug, log_level="INFO")

    assert [line.split(" [-] ", 1)[1] for line in lines] == [
        "django.request a django record at INFO",
        "django.request a django record at WARNING",
        "classifier a project record at INFO",
    ]


def test_log_level_warning_leaves_out_djangos_info_records_as_it_does_the_projects():
    lines = _log_lines(debug="true", log_level="WARNING")

    assert len(lines) == 1 and lines[0].endswith("WARNING [-] django.request a django record at WARNING"), lines
