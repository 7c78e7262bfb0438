"""Refusing a request body larger than any valid request, or of unknown length, before anything reads it."""
from __future__ import annotations

from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse

from api.errors import error_body

# Multipart framing and form fields on top of the largest upload's files.
BODY_SLACK_BYTES = 1024 * 1024

LENGTH_REQUIRED_MESSAGE = (
    "Send the request body with a Content-Length header: a body without one (Transfer-Encoding: chunked) is not "
    "accepted, and nothing was done with this request."
)


# The methods whose body anything here reads. Any other's is refused alike when oversized or of unknown length: no
# view needs it, and what it does not need is not worth reading.
METHODS_WITH_BODY = frozenset({"POST", "PUT", "PATCH"})


def _no_body_message(request: HttpRequest, what: str) -> str:
    return (f"A {request.method} request needs no body, and this one's is {what}: send it without one; nothing was "
            "done with this request.")


class RequestSizeLimitMiddleware:
    """413 for a body declared larger than the biggest valid upload, before CSRF or a view parses it.

    Django bounds form fields (DATA_UPLOAD_MAX_MEMORY_SIZE) but not files, which
    it spools to disk in full; and the CSRF check parses a page's POST body before
    the log-in requirement is even looked at. Without this an anonymous client
    could make the server write any amount of data.

    A body without a Content-Length (chunked) is 411: Django reads only as many bytes as
    Content-Length says, so it would see an empty body (an upload "without files", a page
    form failing its CSRF check or shown again as if never sent), and its size could not be
    checked before it is read either.
    """

    def __init__(self, get_response) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        reads_body = request.method in METHODS_WITH_BODY
        if "HTTP_TRANSFER_ENCODING" in request.META:
            message = LENGTH_REQUIRED_MESSAGE if reads_body else _no_body_message(request, "of unknown length")
            return self._refuse(request, status=411, code="length_required", message=message)
        try:
            length = int(request.META.get("CONTENT_LENGTH") or 0)
        except ValueError:
            length = 0
        # Read per request, so that a changed setting (a test's override) takes effect.
        if length > settings.UPLOAD_MAX_FILES * settings.UPLOAD_MAX_BYTES + BODY_SLACK_BYTES:
            message = (
                f"The request is too large: at most {settings.UPLOAD_MAX_FILES} images of at most "
                f"{settings.UPLOAD_MAX_BYTES:,} bytes each are accepted."
            ) if reads_body else _no_body_message(request, "too large")
            return self._refuse(request, status=413, code="too_large", message=message)
        return self.get_response(request)

    @staticmethod
    def _refuse(request: HttpRequest, *, status: int, code: str, message: str) -> HttpResponse:
        if request.path.startswith("/api/"):
            return JsonResponse(error_body(code=code, message=message), status=status)
        return HttpResponse(message, status=status, content_type="text/plain; charset=utf-8")
