"""A request for a Host the site does not serve is logged as one warning line, not an error with a traceback."""
import logging

import pytest


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
