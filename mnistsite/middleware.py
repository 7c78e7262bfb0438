"""Refusing a request body larger than any valid request before anything reads it."""
from __future__ import annotations

from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse

from api.errors import error_body

# Multipart framing and form fields on top of the largest upload's files.
BODY_SLACK_BYTES = 1024 * 1024


class RequestSizeLimitMiddleware:
    """413 for a body declared larger than the biggest valid upload, before CSRF or a view parses it.

    Django bounds form fields (DATA_UPLOAD_MAX_MEMORY_SIZE) but not files, which
    it spools to disk in full; and the CSRF check parses a page's POST body before
    the log-in requirement is even looked at. Without this an anonymous client
    could make the server write any amount of data.
    """

    def __init__(self, get_response) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        try:
            length = int(request.META.get("CONTENT_LENGTH") or 0)
        except ValueError:
            length = 0
        # Read per request, so that a changed setting (a test's override) takes effect.
        if length > settings.UPLOAD_MAX_FILES * settings.UPLOAD_MAX_BYTES + BODY_SLACK_BYTES:
            message = (
                f"The request is too large: at most {settings.UPLOAD_MAX_FILES} images of at most "
                f"{settings.UPLOAD_MAX_BYTES:,} bytes each are accepted."
            )
            if request.path.startswith("/api/"):
                return JsonResponse(error_body(code="too_large", message=message), status=413)
            return HttpResponse(message, status=413, content_type="text/plain; charset=utf-8")
        return self.get_response(request)
