"""One error shape for the whole API: ``{"error": {"code", "message", "field", "details", "request_id"}}``."""
from __future__ import annotations

import logging
import sys
from typing import Any

from django.conf import settings
from django.core import signals
from django.core.exceptions import (
    DisallowedHost,
    PermissionDenied as DjangoPermissionDenied,
    RequestDataTooBig,
    SuspiciousOperation,
    TooManyFieldsSent,
    TooManyFilesSent,
    ValidationError as DjangoValidationError,
)
from django.db import InterfaceError, OperationalError
from django.http import Http404, HttpResponse
from django.template import loader
from django.urls import Resolver404, resolve
from django.utils.log import log_response
from django.views import defaults
from rest_framework import exceptions, status
from rest_framework.permissions import SAFE_METHODS
from rest_framework.renderers import JSONRenderer
from rest_framework.response import Response
from rest_framework.views import APIView
from rest_framework.views import exception_handler as drf_exception_handler

from classifier.request_body import FILE_NAME_TOO_LONG, file_name_too_long
from classifier.services import (
    UPLOAD_OUTCOME_UNKNOWN,
    StorageFullError,
    UploadOutcomeUnknownError,
    UploadQuotaError,
    UploadStorageError,
)
from mnistsite.request_id import request_id_get

logger = logging.getLogger(__name__)

NON_FIELD = "non_field_errors"


class PayloadTooLarge(exceptions.APIException):
    status_code = status.HTTP_413_REQUEST_ENTITY_TOO_LARGE
    default_detail = "The request is too large."
    default_code = "too_large"


class Conflict(exceptions.APIException):
    status_code = status.HTTP_409_CONFLICT
    default_detail = "The object is not in a state that allows this."
    default_code = "conflict"


# Django validation codes (from classifier.validation and others) whose HTTP status is not 400.
STATUS_FOR_CODE = {"too_large": status.HTTP_413_REQUEST_ENTITY_TOO_LARGE}


def error_body(*, code: str, message: str, field: str | None = None, details: list[dict] | None = None) -> dict:
    item = {"code": code, "message": message, "field": field}
    # The request's X-Request-ID, for the user to quote: every log line of the request (and of the tasks it
    # published) names it. None only outside a request.
    return {"error": {**item, "details": details if details is not None else [item], "request_id": request_id_get()}}


def _flatten(detail: Any, field: str | None = None) -> list[dict]:
    """DRF's nested error detail (dicts of lists of ErrorDetail) as a flat list of {code, message, field}."""
    if isinstance(detail, dict):
        items: list[dict] = []
        for key, value in detail.items():
            name = None if key == NON_FIELD else (f"{field}.{key}" if field else str(key))
            items += _flatten(value, name)
        return items
    if isinstance(detail, list):
        items = []
        for index, value in enumerate(detail):
            # A list of dicts is a nested list serializer: keep the index in the field path.
            name = f"{field}[{index}]" if isinstance(value, dict) and field else field
            items += _flatten(value, name)
        return items
    return [{"code": getattr(detail, "code", None) or "invalid", "message": str(detail), "field": field}]


def _django_validation_items(error: DjangoValidationError, field: str | None) -> list[dict]:
    if hasattr(error, "error_dict"):
        items = []
        for key, errors in error.error_dict.items():
            for item in errors:
                items += _django_validation_items(item, None if key == "__all__" else key)
        return items
    # A refused file's item says where the file stood among those sent, so a client can tell which one it was.
    return [{"code": item.code or "invalid", "message": message, "field": field}
            | ({"index": item.file_index} if hasattr(item, "file_index") else {})
            for item in error.error_list for message in item.messages]


def validation_error_response(error: DjangoValidationError, *, field: str | None = None) -> Response:
    """A Django ValidationError raised by a service, as a 400 (or 413 when a file is too large)."""
    items = _django_validation_items(error, field) or [{"code": "invalid", "message": "Invalid input.", "field": field}]
    codes = {item["code"] for item in items}
    status_code = next((STATUS_FOR_CODE[code] for code in STATUS_FOR_CODE if code in codes), status.HTTP_400_BAD_REQUEST)
    first = next((item for item in items if STATUS_FOR_CODE.get(item["code"]) == status_code), items[0])
    return Response(error_body(code=first["code"], message=first["message"], field=first["field"], details=items),
                    status=status_code)


STORAGE_FULL_MESSAGE = "The server is short of storage space and nothing was stored; try again later."
# Room is made by a person, not in seconds.
STORAGE_FULL_RETRY_AFTER_S = 300


# The database or the storage coming back (a restart, a failover) takes seconds.
SERVICE_UNAVAILABLE_RETRY_AFTER_S = 5
UNAVAILABLE_NOTHING_STORED = "The service is temporarily unavailable and nothing was stored; try again shortly."
UNAVAILABLE_RESEND_SAFE = (
    "The service became unavailable while the request was being applied, so it may or may not have been; sending it "
    "again is safe: try again shortly."
)
UNAVAILABLE_OUTCOME_UNKNOWN = (
    "The service became unavailable while the request was being applied, so whether it was is not known: check "
    "before sending it again."
)


class WriteStageMixin:
    """For a view that writes: what its 503 can say of the write, which depends on whether it had begun.

    Until the view calls ``write_begins`` (just before the service that writes) only reads have run, so "nothing
    was stored" is true. After it, a commit may have happened before the connection dropped (a row committed,
    then its read back or its task's publishing failed), so the answer says only what is safe: sending the
    request again, when ``resend_safe`` (applied twice it changes nothing more), or else checking first (and no
    Retry-After, which a client would take as leave to send it again).
    """

    writing = False
    resend_safe = True

    def write_begins(self) -> None:
        self.writing = True


class ServiceUnavailable(exceptions.APIException):
    """503, with a Retry-After of ``wait`` seconds unless ``wait`` is None."""

    status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    default_detail = "The service is temporarily unavailable; try again shortly."
    default_code = "service_unavailable"

    def __init__(self, detail=None, code=None, *, wait: int | None = SERVICE_UNAVAILABLE_RETRY_AFTER_S) -> None:
        super().__init__(detail, code)
        self.wait = wait


class QuotaExceeded(exceptions.APIException):
    # The owner's to resolve, not the server's: a 4xx (a 5xx would be logged as a server error), as cloud storage
    # APIs answer a full quota.
    status_code = status.HTTP_403_FORBIDDEN
    default_detail = "Your uploads have reached their allowance; delete some to make room."
    default_code = "quota_exceeded"


def _as_api_exception(exc: Exception, *, method: str | None, view=None) -> exceptions.APIException | None:
    """Django's own request errors, which DRF leaves alone, as API exceptions with the right status."""
    if isinstance(exc, RequestDataTooBig):
        return PayloadTooLarge("The request body is too large.", code="too_large")
    if isinstance(exc, TooManyFilesSent):
        return exceptions.ValidationError(
            {"images": [exceptions.ErrorDetail(
                f"Too many files: at most {settings.UPLOAD_MAX_FILES} are accepted at once.", code="too_many_files")]}
        )
    # DRF's multipart parser raises Django's refusal again as a ParseError, which says only "max total header size".
    if isinstance(exc, exceptions.ParseError) and file_name_too_long(exc.__context__):
        return exceptions.ParseError(FILE_NAME_TOO_LONG, code="file_name_too_long")
    if isinstance(exc, TooManyFieldsSent):
        return exceptions.ParseError("Too many form fields were sent.", code="too_many_fields")
    if isinstance(exc, SuspiciousOperation):
        return exceptions.ParseError("The request could not be understood.", code="bad_request")
    if isinstance(exc, StorageFullError):
        return ServiceUnavailable(STORAGE_FULL_MESSAGE, code="storage_full", wait=STORAGE_FULL_RETRY_AFTER_S)
    if isinstance(exc, UploadQuotaError):
        return QuotaExceeded(str(exc), code="quota_exceeded")
    if isinstance(exc, UploadOutcomeUnknownError):
        # No Retry-After: retrying clients would send the images again, which is what must be checked for first.
        return ServiceUnavailable(UPLOAD_OUTCOME_UNKNOWN, code="outcome_unknown", wait=None)
    if isinstance(exc, (OperationalError, InterfaceError, UploadStorageError)):
        # The database or the storage is out of reach, which passes; the service layer has already removed any
        # file it wrote. Other database errors are bugs, answered as such (500). Reads and deletes come to store
        # nothing, so their answer does not speak of it. Every view that writes says when its write begins
        # (WriteStageMixin); until then, or in a view that writes nothing (a method it does not take, say), only
        # reads have run.
        if method in (*SAFE_METHODS, "DELETE"):
            return ServiceUnavailable()
        if not (isinstance(view, WriteStageMixin) and view.writing):
            return ServiceUnavailable(UNAVAILABLE_NOTHING_STORED)
        if view.resend_safe:
            return ServiceUnavailable(UNAVAILABLE_RESEND_SAFE)
        return ServiceUnavailable(UNAVAILABLE_OUTCOME_UNKNOWN, code="outcome_unknown", wait=None)
    return None


def exception_handler(exc: Exception, context: dict) -> Response | None:
    """DRF's handler (headers such as WWW-Authenticate and Retry-After included), reshaped into the envelope."""
    if isinstance(exc, DjangoValidationError):
        return validation_error_response(exc)
    request = context.get("request")
    raised = exc
    exc = _as_api_exception(exc, method=getattr(request, "method", None), view=context.get("view")) or exc
    if isinstance(exc, exceptions.NotAuthenticated) and (scheme := _unread_scheme(request)):
        named = exceptions.NotAuthenticated(
            f"Credentials were sent with the scheme “{scheme}”, which this API does not read: send the API token as "
            "`Authorization: Token <key>`."
        )
        named.auth_header, named.status_code = getattr(exc, "auth_header", None), exc.status_code
        exc = named
    response = drf_exception_handler(exc, context)
    if response is None:
        return _unexpected(exc, context)
    if isinstance(exc, Http404):
        exc = exceptions.NotFound(str(exc) or None)
    elif isinstance(exc, DjangoPermissionDenied):
        exc = exceptions.PermissionDenied(str(exc) or None)
    detail = exc.detail if isinstance(exc, exceptions.APIException) else response.data
    items = _flatten(detail) or [{"code": "error", "message": "The request failed.", "field": None}]
    first = items[0]
    response.data = error_body(code=first["code"], message=first["message"], field=first["field"], details=items)
    if isinstance(raised, StorageFullError):
        # A full volume refuses every upload until someone makes room: the service says so as an error once a minute,
        # and each refusal is a warning, not one more error an upload (on the disk the log may share).
        log_response("%s: %s (the media volume is nearly full)", response.reason_phrase, request.path,
                     response=response, request=getattr(request, "_request", request), level="warning")
    elif isinstance(raised, UploadStorageError):
        # The service logged the storage's failure as an error, with its traceback, as it met it.
        log_response("%s: %s (the images could not be stored)", response.reason_phrase, request.path,
                     response=response, request=getattr(request, "_request", request), level="warning")
    elif isinstance(raised, (OperationalError, InterfaceError)):
        # Django logs the 503 as an error either way; with the database's own words (which host, refused or timed
        # out), as for the pages' 503s, or the operator reads only "Service Unavailable" under the request's id.
        log_response("%s: %s", response.reason_phrase, request.path, response=response,
                     request=getattr(request, "_request", request), exception=raised)
    return response


def _unread_scheme(request) -> str:
    """The scheme of an Authorization header that no authenticator read (``Bearer``, ``Basic``), else ""."""
    header = request.META.get("HTTP_AUTHORIZATION", "") if request is not None else ""
    scheme = header.split(" ", 1)[0]
    # A Token header that failed is AuthenticationFailed, with its own message; a scheme is a short plain word.
    plain_word = scheme.isascii() and scheme.isalnum() and len(scheme) <= 32
    return scheme if plain_word and scheme.lower() != "token" else ""


SERVER_ERROR_MESSAGE = "Something went wrong on our side; it has been logged."


def _unexpected(exc: Exception, context: dict) -> Response | None:
    if settings.DEBUG:
        # Developers get Django's debug page with the traceback.
        return None
    request = context.get("request")
    # Error reporting and the test client listen for this signal; a handled 500 must still reach them.
    signals.got_request_exception.send(sender=None, request=getattr(request, "_request", request))
    user = getattr(request, "user", None)
    response = Response(error_body(code="server_error", message=SERVER_ERROR_MESSAGE),
                        status=status.HTTP_500_INTERNAL_SERVER_ERROR)
    # Marked logged, so that Django does not log the same 500 again as a second error without the traceback.
    log_response(
        "unhandled error in the API: %s %s (user %s)", getattr(request, "method", "?"), getattr(request, "path", "?"),
        getattr(user, "pk", None), response=response, request=getattr(request, "_request", request), logger=logger,
        level="error", exception=exc,
    )
    return response


class NoSuchEndpointApi(APIView):
    """Answers every path under api/ that matches no endpoint, so even those errors keep the envelope."""

    authentication_classes: list = []
    permission_classes: list = []
    schema = None

    def _not_found(self, request, *args, **kwargs):
        message = f"No API endpoint at {request.path}."
        if not request.path.endswith("/"):
            try:
                match = resolve(request.path_info + "/")
            except Resolver404:
                match = None
            # Every path under api/ resolves, to this view at least: only a real endpoint is worth pointing to.
            if match is not None and getattr(match.func, "view_class", None) is not NoSuchEndpointApi:
                message += f" Did you mean {request.path}/ ?"
        raise exceptions.NotFound(message)

    get = post = put = patch = delete = head = options = _not_found
    # Any other method too (TRACE, PROPFIND): its 405 would say that something is here, taking other methods.
    http_method_not_allowed = _not_found

    def finalize_response(self, request, response, *args, **kwargs):
        response = super().finalize_response(request, response, *args, **kwargs)
        # DRF lists the methods the view takes, as if the path had them: none does.
        del response["Allow"]
        return response


def _on_api_path(request) -> bool:
    # By the URL namespace, not a path prefix: the API may be served under another path. Every path under it
    # resolves, to NoSuchEndpointApi at least.
    try:
        namespace = resolve(request.path_info).namespace
    except Resolver404:
        namespace = ""
    return namespace.split(":")[0] == "api"


def _handler_response(*, code: str, message: str, status_code: int) -> HttpResponse:
    # A plain HttpResponse: Django's handlers answer outside any DRF view, which a DRF Response needs to render.
    return HttpResponse(JSONRenderer().render(error_body(code=code, message=message)), status=status_code,
                        content_type="application/json")


def bad_request(request, exception) -> HttpResponse:
    """The site's 400 handler (``handler400`` in mnistsite.urls): on the API's paths, the envelope.

    Django answers some requests itself before any view runs, chiefly one whose Host header names no host in
    ALLOWED_HOSTS; a client of the API would get Django's HTML page instead of an error it can read. Pages keep it.
    """
    if not _on_api_path(request):
        return defaults.bad_request(request, exception)
    if isinstance(exception, DisallowedHost):
        message = "The Host header names no host this site serves."
    else:
        message = "The request could not be understood."
    return _handler_response(code="bad_request", message=message, status_code=status.HTTP_400_BAD_REQUEST)


def server_error(request) -> HttpResponse:
    """The site's 500 handler (``handler500`` in mnistsite.urls): on the API's paths, the envelope.

    An error the API's views do not handle themselves (raised in a middleware, or while their answer is rendered)
    reaches Django, which logs it and reports it (got_request_exception) before it calls this; a client of the API
    would get the HTML page instead of an error it can read. Pages keep it.

    The database out of reach wherever no view answers for it (logging in, a session read by a middleware) is a
    503 with Retry-After, as the views that write answer it: an outage that passes, not a fault in the code, which
    clients, proxies and monitoring tell apart by the status.
    """
    try:
        on_api_path = _on_api_path(request)
    except Exception:
        # Resolving the path may be what failed; this answer must not fail too.
        on_api_path = False
    # Django calls this while handling the exception, which is still the one in flight.
    unavailable = isinstance(sys.exc_info()[1], (OperationalError, InterfaceError))
    if unavailable and on_api_path:
        response = _handler_response(code="service_unavailable", message=ServiceUnavailable.default_detail,
                                     status_code=status.HTTP_503_SERVICE_UNAVAILABLE)
    elif unavailable:
        response = HttpResponse(loader.get_template("503.html").render({}, request), status=503)
    elif on_api_path:
        return _handler_response(code="server_error", message=SERVER_ERROR_MESSAGE,
                                 status_code=status.HTTP_500_INTERNAL_SERVER_ERROR)
    else:
        return defaults.server_error(request)
    response["Retry-After"] = str(SERVICE_UNAVAILABLE_RETRY_AFTER_S)
    return response
