"""Content negotiation by the Accept header's weights (RFC 9110), and a `?format=` that names none is a 406 too."""
from __future__ import annotations

import re

from rest_framework import exceptions
from rest_framework.negotiation import DefaultContentNegotiation
from rest_framework.utils.mediatypes import _MediaType

# RFC 9110's qvalue, a little wider: more than three decimals are read rather than refused.
_WEIGHT = re.compile(r"0(\.[0-9]*)?|1(\.0*)?")


def _weight(media_range: _MediaType) -> float | None:
    """The range's q (1 without one), or None when it is no weight at all (``q=high``, ``q=2``)."""
    value = media_range.params.get("q", "1")
    return float(value) if _WEIGHT.fullmatch(value) else None


class ContentNegotiation(DefaultContentNegotiation):
    """DRF's negotiation, but weighing the Accept header, and refusing ``?format=xml`` with 406, not DRF's 404.

    DRF reads only how specific each media range is, so ``Accept: application/json;q=0, text/csv`` got JSON, the
    one thing the client refused. Here each representation takes the weight of the most specific range that
    covers it; a weight of 0 (or no range) makes it unacceptable. The highest weight wins, then the more specific
    range, then the server's order (JSON first). A range whose weight is malformed is left out, as if not sent.

    DRF answers an unknown format 404 because a format suffix (``/predictions.xml``) names another resource; this
    API has no suffixes, and the query parameter asks for a representation of the same resource, which is what 406
    is for.
    """

    def select_renderer(self, request, renderers, format_suffix=None):
        format = format_suffix or request.query_params.get(self.settings.URL_FORMAT_OVERRIDE)
        if format:
            renderers = self.filter_renderers(renderers, format)
        ranges = [(media_range, weight) for media_range in self._get_parsed_accept_list(request)
                  if (weight := _weight(media_range)) is not None]
        best = None
        for position, renderer in enumerate(renderers):
            offered = _MediaType(renderer.media_type)
            covering = [(media_range.precedence, weight, media_range) for media_range, weight in ranges
                        if offered.match(media_range)]
            if not covering:
                continue
            # The most specific range decides (of equally specific ones, the most generous).
            precedence, weight, media_range = max(covering, key=lambda item: item[:2])
            if weight == 0:
                continue
            rank = (weight, precedence, -position)
            if best is None or rank > best[0]:
                best = (rank, renderer, offered, media_range)
        if best is None:
            raise exceptions.NotAcceptable(available_renderers=renderers)
        _, renderer, offered, media_range = best
        # As DRF: the client's media type when it named one, the renderer's for a wildcard, with the client's
        # parameters (`indent=4`) either way; the weight is not one of them.
        base = renderer.media_type if offered.precedence > media_range.precedence else media_range.full_type
        return renderer, ";".join([base, *(f"{key}={value}" for key, value in media_range.params.items()
                                           if key != "q")])

    def filter_renderers(self, renderers, format):
        matching = [renderer for renderer in renderers if renderer.format == format]
        if not matching:
            # Several media types may share a format (the schema's YAML has two): name each once.
            known = ", ".join(f"`{name}`" for name in dict.fromkeys(renderer.format for renderer in renderers))
            raise exceptions.NotAcceptable(f"No representation in the format `{format}`: ask for one of {known}.")
        return matching
