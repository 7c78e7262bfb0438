"""The OpenAPI schema and its Swagger UI, answering their errors in the API's JSON envelope like every endpoint."""
from __future__ import annotations

from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView
from rest_framework.renderers import JSONRenderer


class _ErrorsInJsonMixin:
    """Errors rendered as JSON, whatever representation the view itself serves.

    The exception handler already shapes them into the envelope, but the view's own renderers would write it as
    YAML (the schema) or as a bare "405 Method Not Allowed" page (the docs' template renderer), which a client of
    the API cannot read as it reads every other error.
    """

    def finalize_response(self, request, response, *args, **kwargs):
        if getattr(response, "exception", False):
            request.accepted_renderer, request.accepted_media_type = JSONRenderer(), JSONRenderer.media_type
        return super().finalize_response(request, response, *args, **kwargs)


class SchemaApi(_ErrorsInJsonMixin, SpectacularAPIView):
    """The schema, in YAML or JSON as the client negotiates."""


class SchemaDocsApi(_ErrorsInJsonMixin, SpectacularSwaggerView):
    """Swagger UI, an HTML page reading the schema."""
