"""Content negotiation: a `?format=` that names no representation is a 406, as an unsatisfiable Accept header is."""
from __future__ import annotations

from rest_framework import exceptions
from rest_framework.negotiation import DefaultContentNegotiation


class ContentNegotiation(DefaultContentNegotiation):
    """DRF's negotiation, but ``?format=xml`` is refused with 406 instead of DRF's 404.

    DRF answers 404 because a format suffix (``/predictions.xml``) names another resource; this API has no
    suffixes, and the query parameter asks for a representation of the same resource, which is what 406 is for.
    """

    def filter_renderers(self, renderers, format):
        matching = [renderer for renderer in renderers if renderer.format == format]
        if not matching:
            known = ", ".join(f"`{renderer.format}`" for renderer in renderers)
            raise exceptions.NotAcceptable(f"No representation in the format `{format}`: ask for one of {known}.")
        return matching
