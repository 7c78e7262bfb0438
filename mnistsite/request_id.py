"""One id per web request, on its response, in its log lines and in those of the tasks it publishes."""
from __future__ import annotations

import contextvars
import logging
import re
import uuid
from typing import TYPE_CHECKING

from django.core.signals import request_finished

if TYPE_CHECKING:
    from django.http import HttpRequest, HttpResponse

HEADER = "X-Request-ID"
# The Celery message header that carries the id of the request (or task) that published the message.
TASK_HEADER = "request_id"
# What a log line shows outside any request or task (a management command, a worker between tasks).
NONE = "-"

# Such an id goes into log lines and headers as it is: anything else a client (or a proxy) sends is replaced, so
# that no line break, quote or escape sequence of theirs reaches a log.
_SAFE = re.compile(r"[A-Za-z0-9._:-]{1,128}")

_current: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)


def request_id_new() -> str:
    return uuid.uuid4().hex


def request_id_accept(*, value: object) -> str:
    """``value`` when it is safe to log and to send back as it is, else a new id."""
    if isinstance(value, str) and _SAFE.fullmatch(value):
        return value
    return request_id_new()


def request_id_get() -> str | None:
    """The id of the request or task being handled in this context, None outside both."""
    return _current.get()


def request_id_set(*, value: str | None) -> contextvars.Token:
    return _current.set(value)


def request_id_reset(*, token: contextvars.Token) -> None:
    _current.reset(token)


class RequestIdMiddleware:
    """Adopts a safe ``X-Request-ID`` (from a proxy, or a client retrying) or makes one, and answers with it.

    Outside every middleware but the request metrics, so that every answer carries it, those of the request size
    limit and the health probes included, and every line logged while the request is handled.
    """

    def __init__(self, get_response) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        request_id = request_id_accept(value=request.META.get("HTTP_X_REQUEST_ID"))
        # Kept until the response is closed (request_finished), not only while the middleware runs: Django logs a
        # 4xx or 5xx ("Not Found: /...") after the last middleware has returned, and a streamed body is read later.
        _current.set(request_id)
        response = self.get_response(request)
        response[HEADER] = request_id
        return response


def _request_id_clear(**kwargs) -> None:
    # The server's thread goes on to another request (or idles): nothing it logs now belongs to this one.
    _current.set(None)


request_finished.connect(_request_id_clear, dispatch_uid="mnistsite.request_id.clear")


class RequestIdFilter(logging.Filter):
    """Gives every record a ``request_id`` (NONE outside a request or task), for the log format to show."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = _current.get() or NONE
        return True
