"""The documented error responses shared by every endpoint's schema."""
import copy

from drf_spectacular.utils import OpenApiExample, OpenApiResponse
from rest_framework.negotiation import DefaultContentNegotiation

from api.query import QueryParametersCheckedMixin
from api.serializers import ErrorEnvelopeSerializer


# What an X-Request-ID made by the site looks like (mnistsite.request_id: a uuid4 in hex).
EXAMPLE_REQUEST_ID = "3f2a9c0e5b7d4e1f8a6b2c9d0e1f2a3b"


def error(description: str, *, code: str = "invalid", field: str | None = None) -> OpenApiResponse:
    item = {"code": code, "message": description, "field": field}
    return OpenApiResponse(
        response=ErrorEnvelopeSerializer,
        description=description,
        examples=[OpenApiExample(code, value={"error": {**item, "details": [item], "request_id": EXAMPLE_REQUEST_ID}},
                                  response_only=True)],
    )


UNAUTHENTICATED = error("No valid credentials: send `Authorization: Token <key>` or a session cookie.",
                        code="not_authenticated")
FORBIDDEN = error("Authenticated, but not allowed (staff only, or a missing CSRF token with a session).",
                  code="permission_denied")
NOT_FOUND = error("No such object among yours (other people's objects are never revealed).", code="not_found")
INVALID = error("The input is invalid; `field` names the offending field.")
INVALID_PAGING = error("`page` is not a whole number from 1 (or `last`), `page_size` not one from 1 to the "
                       "maximum, `newest` not one from 0, or a query parameter was sent twice (`repeated`) or is none the "
                       "list takes (`unknown`); `field` names it.", field="page_size")
THROTTLED = error("Too many uploads; retry after the number of seconds in the Retry-After header.", code="throttled")
UNAVAILABLE = error("The database is out of reach for a moment; retry after the number of seconds in the Retry-After "
                    "header.", code="service_unavailable")

# Every endpoint reads the database, if only to check the credentials.
COMMON = {401: UNAUTHENTICATED, 403: FORBIDDEN, 503: UNAVAILABLE}

NOT_MODIFIED = OpenApiResponse(description="Not modified: `If-None-Match` named the image's current ETag. No body.")

# Answered by DRF and the request size limit before a view's own code runs, so they are declared here, from what
# each view is, rather than operation by operation.
NOT_ACCEPTABLE = error("No representation the Accept header allows: send `Accept: application/json` (or none).",
                       code="not_acceptable")
UNSUPPORTED_MEDIA_TYPE = error("The body's Content-Type is none this operation reads (see its request body).",
                               code="unsupported_media_type")
TOO_LARGE = error("The request body is larger than the server accepts.", code="too_large")
LENGTH_REQUIRED = error("The body was sent without a Content-Length (Transfer-Encoding: chunked); nothing was done "
                        "with the request: send it with one.", code="length_required")
UNKNOWN_QUERY_PARAMETER = error("A query parameter this operation does not take (`unknown`; `field` names it, and the "
                                "message lists those it takes): nothing was done with the request.", code="unknown",
                                field="stauts")
# The same refusals for an operation that reads no body: a client may still send one, and it is refused alike,
# since its size is checked before anything knows which operation it is for.
TOO_LARGE_UNREAD = error("This operation reads no body, and one larger than the server accepts was sent: send the "
                         "request without one.", code="too_large")
LENGTH_REQUIRED_UNREAD = error("This operation reads no body, and one was sent without a Content-Length "
                               "(Transfer-Encoding: chunked); nothing was done with the request: send it without "
                               "one.", code="length_required")

_METHODS_WITH_BODY = {"post", "put", "patch"}


def _rendered(response: OpenApiResponse) -> dict:
    """``response`` (made by ``error``) as the schema writes it, the envelope's component included."""
    examples = {
        "".join(part.title() for part in example.name.split("_")): {"value": example.value, "summary": example.name}
        for example in response.examples
    }
    content = {"schema": {"$ref": "#/components/schemas/ErrorEnvelope"}, "examples": examples}
    return {"content": {"application/json": content}, "description": response.description}


# Every operation's 503 says to wait out the Retry-After header, so the header is declared with it, for a client built
# from the schema to read; not required, as an upload whose outcome is unknown is answered without one.
RETRY_AFTER_UNAVAILABLE = {
    "schema": {"type": "integer"},
    "description": "Seconds to wait before sending the request again; absent when it must not simply be sent again "
                   "(`outcome_unknown`).",
}


def declare_protocol_errors(result: dict, generator, request, public) -> dict:
    """A drf-spectacular postprocessing hook: each operation's 400 for a query parameter it does not take, its 406,
    411, 413 and 415, when its view can answer them, and the Retry-After header of its 503.

    406 where the view negotiates with
    DRF's default (the image views answer a PNG or an error whatever the Accept header says); 415 where the
    operation reads a request body; 411 and 413 on every operation, since the request size limit
    (mnistsite.middleware) refuses a chunked or oversized body before any view is reached, whatever the method. A
    status an operation declares itself keeps its own description. (405 belongs to the methods a path does not take,
    which OpenAPI has no operation for: the API's description says it once.)
    """
    assert "ErrorEnvelope" in result["components"]["schemas"], "the error responses reference the envelope"
    views = {(path, method.lower()): callback.cls for path, _, method, callback in generator.endpoints}
    for path, item in result["paths"].items():
        for method, operation in item.items():
            view = views[(path, method)]
            found = {}
            if issubclass(view, QueryParametersCheckedMixin):
                found[400] = UNKNOWN_QUERY_PARAMETER
            if issubclass(view.content_negotiation_class, DefaultContentNegotiation):
                found[406] = NOT_ACCEPTABLE
            if method in _METHODS_WITH_BODY:
                found[411], found[413] = LENGTH_REQUIRED, TOO_LARGE
            else:
                found[411], found[413] = LENGTH_REQUIRED_UNREAD, TOO_LARGE_UNREAD
            if "requestBody" in operation:
                found[415] = UNSUPPORTED_MEDIA_TYPE
            declared = operation["responses"]
            for status, response in found.items():
                declared.setdefault(str(status), _rendered(response))
            if "503" in declared:
                declared["503"].setdefault("headers", {})["Retry-After"] = copy.deepcopy(RETRY_AFTER_UNAVAILABLE)
            operation["responses"] = dict(sorted(declared.items()))
    return result
