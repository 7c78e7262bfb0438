"""The documented error responses shared by every endpoint's schema."""
from drf_spectacular.utils import OpenApiExample, OpenApiResponse

from api.serializers import ErrorEnvelopeSerializer


def error(description: str, *, code: str = "invalid", field: str | None = None) -> OpenApiResponse:
    item = {"code": code, "message": description, "field": field}
    return OpenApiResponse(
        response=ErrorEnvelopeSerializer,
        description=description,
        examples=[OpenApiExample(code, value={"error": {**item, "details": [item]}}, response_only=True)],
    )


UNAUTHENTICATED = error("No valid credentials: send `Authorization: Token <key>` or a session cookie.",
                        code="not_authenticated")
FORBIDDEN = error("Authenticated, but not allowed (staff only, or a missing CSRF token with a session).",
                  code="permission_denied")
NOT_FOUND = error("No such object among yours (other people's objects are never revealed).", code="not_found")
INVALID = error("The input is invalid; `field` names the offending field.")
THROTTLED = error("Too many uploads; retry after the number of seconds in the Retry-After header.", code="throttled")
UNAVAILABLE = error("The database is out of reach for a moment; retry after the number of seconds in the Retry-After "
                    "header.", code="service_unavailable")

# Every endpoint reads the database, if only to check the credentials.
COMMON = {401: UNAUTHENTICATED, 403: FORBIDDEN, 503: UNAVAILABLE}
