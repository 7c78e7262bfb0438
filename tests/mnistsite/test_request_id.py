"""A request's X-Request-ID: answered back, in every log line of the request, and in those of the tasks it published."""
from __future__ import annotations

import contextlib
import io
import logging
import re
from collections.abc import Iterator

import pytest

from mnistsite.request_id import request_id_get

NEW_ID = re.compile(r"[0-9a-f]{32}")


@contextlib.contextmanager
def console_log() -> Iterator[io.StringIO]:
    """What settings.LOGGING's console handler writes meanwhile, through its own filter and format."""
    (handler,) = [handler for handler in logging.getLogger().handlers if handler.get_name() == "console"]
    stream = io.StringIO()
    previous = handler.setStream(stream)
    try:
        yield stream
    finally:
        handler.setStream(previous)


def test_a_safe_request_id_sent_is_answered_back_as_it_is(client):
    response = client.get("/healthz", HTTP_X_REQUEST_ID="proxy-7f3a.b:1_Z")

    assert response["X-Request-ID"] == "proxy-7f3a.b:1_Z"


def test_a_request_sent_without_an_id_is_answered_with_a_new_one_each_time(client):
    first, second = client.get("/healthz")["X-Request-ID"], client.get("/healthz")["X-Request-ID"]

    assert NEW_ID.fullmatch(first) and NEW_ID.fullmatch(second) and first != second


@pytest.mark.django_db
@pytest.mark.parametrize("sent", ["", "two words", "line\nbreak", "quote\"d", "\x1b[31mred", "é", "a" * 129, "x;y"])
def test_an_unsafe_request_id_is_replaced_and_never_written_to_the_log(client, user, sent):
    client.force_login(user)

    with console_log() as log:
        response = client.get("/no-such-page/", HTTP_X_REQUEST_ID=sent)

    replaced = response["X-Request-ID"]
    assert NEW_ID.fullmatch(replaced), replaced
    assert f"[{replaced}] django.request Not Found: /no-such-page/" in log.getvalue()
    if sent:
        assert sent not in log.getvalue()


@pytest.mark.django_db
def test_a_line_logged_while_a_request_is_handled_names_its_id_and_one_logged_after_it_does_not(client, user):
    client.force_login(user)

    with console_log() as log:
        # Django logs a 404 after the last middleware has returned.
        response = client.get("/no-such-page/", HTTP_X_REQUEST_ID="req-404")
        logging.getLogger("mnistsite.test").warning("after the request")

    assert response.status_code == 404 and response["X-Request-ID"] == "req-404"
    lines = log.getvalue().splitlines()
    assert any(" WARNING [req-404] django.request Not Found: /no-such-page/" in line for line in lines), lines
    assert any(" WARNING [-] mnistsite.test after the request" in line for line in lines), lines
    assert request_id_get() is None


def test_the_size_limits_refusals_carry_the_request_id_in_the_header_and_the_envelope(client, settings):
    settings.UPLOAD_MAX_BYTES, settings.UPLOAD_MAX_FILES = 1000, 1

    chunked = client.generic("POST", "/api/v1/predictions/", b"x", content_type="application/json",
                             CONTENT_LENGTH="", HTTP_TRANSFER_ENCODING="chunked", HTTP_X_REQUEST_ID="req-411")
    oversized = client.generic("POST", "/api/v1/predictions/", b"x", content_type="application/json",
                               CONTENT_LENGTH=str(3 * 1024 * 1024), HTTP_X_REQUEST_ID="req-413")
    page = client.generic("POST", "/", b"x", content_type="text/plain", CONTENT_LENGTH=str(3 * 1024 * 1024))

    assert (chunked.status_code, chunked["X-Request-ID"]) == (411, "req-411")
    assert chunked.json()["error"]["request_id"] == "req-411"
    assert (oversized.status_code, oversized["X-Request-ID"]) == (413, "req-413")
    assert oversized.json()["error"]["request_id"] == "req-413"
    assert page.status_code == 413 and NEW_ID.fullmatch(page["X-Request-ID"])


@pytest.mark.django_db
def test_an_api_error_envelope_carries_the_request_id_for_the_user_to_quote(client, user):
    client.force_login(user)

    sent = client.get("/api/v1/predictions/999999/", HTTP_X_REQUEST_ID="client-retry-3")
    made = client.get("/api/v1/nothing-here/")

    assert sent.status_code == 404 and sent.json()["error"]["request_id"] == "client-retry-3"
    assert made.status_code == 404 and made.json()["error"]["request_id"] == made["X-Request-ID"]


def damaged_prediction(*, owner):
    """A done prediction whose row was damaged outside the application: its probabilities are no longer numbers."""
    from classifier import services
    from classifier.models import Prediction, Upload
    from tests.api.conftest import seven_png

    upload = services.upload_create(owner=owner, file=io.BytesIO(seven_png()), name="digit.png",
                                    source=Upload.Source.API)
    return Prediction.objects.create(upload=upload, status=Prediction.Status.DONE, digit=7, confidence=0.9,
                                     probabilities=["boom"] * 10)


@pytest.mark.django_db
def test_an_unexpected_api_error_is_logged_once_with_its_traceback_under_the_id_its_500_envelope_gives(client, user):
    prediction = damaged_prediction(owner=user)
    client.force_login(user)
    client.raise_request_exception = False

    with console_log() as log:
        response = client.get(f"/api/v1/predictions/{prediction.pk}/")

    request_id = response.json()["error"]["request_id"]
    assert response.status_code == 500 and NEW_ID.fullmatch(request_id) and response["X-Request-ID"] == request_id
    lines = [line for line in log.getvalue().splitlines() if f" [{request_id}] " in line]
    # One error for one fault, with its traceback: not a second one from Django, without it, for the same 500.
    assert len(lines) == 1 and f" ERROR [{request_id}] api.errors unhandled error in the API: GET" in lines[0]
    assert "Traceback (most recent call last)" in log.getvalue()


@pytest.mark.django_db
def test_an_api_request_the_database_refuses_is_logged_under_its_id_with_the_databases_error(client, user):
    from django.db import OperationalError, connection

    def refuse(execute, sql, params, many, context):
        if "classifier_prediction" in sql:
            raise OperationalError('connection to server at "db" (10.0.0.5), port 5432 failed: Connection refused')
        return execute(sql, params, many, context)

    client.force_login(user)
    with console_log() as log, connection.execute_wrapper(refuse):
        response = client.get("/api/v1/predictions/")

    request_id = response.json()["error"]["request_id"]
    assert response.status_code == 503
    # The operator learns what failed (which database, refused or timed out), not only "Service Unavailable".
    assert f" ERROR [{request_id}] django.request Service Unavailable: /api/v1/predictions/" in log.getvalue()
    assert "Connection refused" in log.getvalue() and log.getvalue().count(" ERROR ") == 1
