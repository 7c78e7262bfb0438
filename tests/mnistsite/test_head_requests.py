"""A HEAD request is answered with a GET's headers and no body, whatever server runs the site."""
import io

import pytest
from django.core.handlers.wsgi import WSGIHandler
from django.core.signals import request_finished, request_started
from django.db import close_old_connections, connection
from django.test import RequestFactory
from django.test.utils import CaptureQueriesContext

pytestmark = pytest.mark.django_db


def _served(method: str, path: str, **headers) -> tuple[str, dict, bytes, int]:
    """Status, headers, body and the number of queries run, through Django's WSGI application as gunicorn calls it:
    the test client drops a HEAD's body itself, as the development server does, and would hide what gunicorn sends."""
    environ = RequestFactory().generic(method, path, **headers).environ
    answer = {}

    def start_response(status, response_headers, exc_info=None):
        answer.update(status=status, headers=dict(response_headers))

    # As the test client does: the test's transaction must outlive the request.
    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    try:
        with CaptureQueriesContext(connection) as queries:
            body = WSGIHandler()(environ, start_response)
            try:
                content = b"".join(body)
            finally:
                body.close()
    finally:
        request_started.connect(close_old_connections)
        request_finished.connect(close_old_connections)
    return answer["status"], answer["headers"], content, len(queries)


def test_a_head_request_for_a_page_gets_its_headers_without_the_body():
    get_status, get_headers, page, _ = _served("GET", "/accounts/login/")
    status, headers, content, _ = _served("HEAD", "/accounts/login/")

    assert page and content == b""
    assert status == get_status == "200 OK"
    assert headers["Content-Type"] == get_headers["Content-Type"]


def test_a_head_request_for_a_download_reads_none_of_its_rows(client, user, digit_png):
    from classifier import services

    services.upload_create(owner=user, file=io.BytesIO(digit_png(0)), source="file")
    client.force_login(user)
    cookie = f"sessionid={client.cookies['sessionid'].value}"

    *_, csv, get_queries = _served("GET", "/history/export.zip", HTTP_COOKIE=cookie)
    status, headers, content, head_queries = _served("HEAD", "/history/export.zip", HTTP_COOKIE=cookie)

    assert csv and content == b""
    assert status == "200 OK" and headers["Content-Disposition"].startswith("attachment;")
    assert head_queries < get_queries
