"""The OpenAPI schema and its Swagger UI, answering their errors in the API's JSON envelope like every endpoint."""
from __future__ import annotations

from drf_spectacular.utils import extend_schema
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView
from rest_framework.renderers import JSONRenderer

# A Swagger UI preset for lists of files (`images`: an array of `type: string, format: binary`). Swagger UI draws
# each item as a file input already, but labels the list "array<string>" with an "Add string item" button, and
# looks up a component for the items' type and format that it has none of, warning "Could not find component:
# JsonSchema_string_binary" in the console. Here the list is labelled as the schema says, its button adds a
# "file item", and the component it looks up is its own string field (which draws a binary string as a file).
FILE_LISTS_PRESET = """(system) => {
  const isFile = (schema) => Boolean(schema && schema.get && schema.get("type") === "string"
    && schema.get("format") === "binary");
  const isFileList = (schema) => Boolean(schema && schema.get && schema.get("type") === "array"
    && isFile(schema.get("items")));
  const labelled = (label) => (Original) => (props) => system.React.createElement(Original, {
    ...props,
    fn: {...props.fn, getSchemaObjectTypeLabel: (schema) => label(schema) || props.fn.getSchemaObjectTypeLabel(schema)},
  });
  return {
    components: {
      JsonSchema_string_binary: (props) => system.React.createElement(props.getComponent("JsonSchema_string"), props),
    },
    wrapComponents: {
      RequestBody: labelled((schema) => isFileList(schema) && "array<string($binary)>"),
      JsonSchema_array: labelled((schema) => isFile(schema) && "file"),
    },
  };
}"""


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

    @extend_schema(exclude=True)
    def get(self, request, *args, **kwargs):
        response = super().get(request, *args, **kwargs)
        # The settings are JavaScript: the preset joins those they name (Swagger UI's own when they name none).
        response.data["settings"] = (
            "(settings => ({...settings, presets: [...(settings.presets || [SwaggerUIBundle.presets.apis]), "
            f"{FILE_LISTS_PRESET}]}}))({response.data['settings']})"
        )
        return response
