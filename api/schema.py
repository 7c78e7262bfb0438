"""The OpenAPI schema and its Swagger UI, answering their errors in the API's JSON envelope like every endpoint."""
from __future__ import annotations

import threading

from django.core.signals import setting_changed
from django.dispatch import receiver
from django.http import HttpResponse
from django.utils import translation
from drf_spectacular.settings import patched_settings
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


# The schema (by language), and each representation of it served so far, as sent, by what tells them apart: the
# renderer, the JSON indentation and the language. Generating it takes 60 to 130 ms of CPU and rendering it up to
# 50 more, and it is public and unthrottled, so each is done once per process: the schema depends only on the code
# and the settings, and settings change only in tests, which clear both (schema_cache_clear).
_schemas: dict[str, dict] = {}
_served: dict[tuple, bytes] = {}
_generating = threading.Lock()


@receiver(setting_changed)
def schema_cache_clear(**kwargs) -> None:
    """Forget the schema and its representations: a setting changed (in a test), and the schema may read it."""
    with _generating:
        _schemas.clear()
        _served.clear()


class SchemaApi(_ErrorsInJsonMixin, SpectacularAPIView):
    """The schema, in YAML or JSON as the client negotiates."""

    @extend_schema(exclude=True)
    def get(self, request, *args, **kwargs):
        renderer, media_type = request.accepted_renderer, request.accepted_media_type
        # Of the client's media type parameters, only JSON's `indent` (DRF reads 0 to 8) changes what is sent.
        indent = renderer.get_indent(media_type, {}) if isinstance(renderer, JSONRenderer) else None
        language = translation.get_language()
        key = (type(renderer), indent, language)
        content = _served.get(key)
        if content is None:
            # One at a time: concurrent first requests wait for the schema rather than each generating their own.
            with _generating:
                content = _served.get(key)
                if content is None:
                    if language not in _schemas:
                        _schemas[language] = self._schema_generate()
                    content = _served[key] = renderer.render(_schemas[language], media_type,
                                                            self.get_renderer_context())
        content_type = f"{renderer.media_type}; charset={renderer.charset}" if renderer.charset else renderer.media_type
        return HttpResponse(content, content_type=content_type, headers={
            "Content-Disposition": f'inline; filename="{self._get_filename(request, None)}"',
        })

    def _schema_generate(self) -> dict:
        # Without the request, so that nothing of whoever asked first (their user, their headers) is in what everyone
        # is sent. drf-spectacular's `?version=` and `?lang=` are not read: this API has one version, which the
        # schema states, and the site one language; each value would otherwise be another schema to generate.
        generator = self.generator_class(urlconf=self.urlconf, api_version=self.api_version, patterns=self.patterns)
        with patched_settings(self.custom_settings):
            return generator.get_schema(request=None, public=self.serve_public)


class SchemaDocsApi(_ErrorsInJsonMixin, SpectacularSwaggerView):
    """Swagger UI, an HTML page reading the schema."""

    template_name = "api/swagger_ui.html"

    @extend_schema(exclude=True)
    def get(self, request, *args, **kwargs):
        response = super().get(request, *args, **kwargs)
        # The settings are JavaScript: the preset joins those they name (Swagger UI's own when they name none).
        response.data["settings"] = (
            "(settings => ({...settings, presets: [...(settings.presets || [SwaggerUIBundle.presets.apis]), "
            f"{FILE_LISTS_PRESET}]}}))({response.data['settings']})"
        )
        return response
