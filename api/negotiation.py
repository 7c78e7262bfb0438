"""Content negotiation by the Accept header's weights (RFC 9110), and a `?format=` that names none is a 406 too."""
from __future__ import annotations

import re
from dataclasses import dataclass

from rest_framework import exceptions
from rest_framework.negotiation import DefaultContentNegotiation

# RFC 9110's grammar: a token, a quoted string (with backslash escapes), a parameter after its semicolon (which may
# stand empty), and an element of the comma-separated list, commas inside a quoted string included.
_TOKEN = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
_QUOTED = r'"(?:[^"\\]|\\.)*"'
_TYPE = re.compile(rf"({_TOKEN})/({_TOKEN})")
_PARAMETER = re.compile(rf"[ \t]*;[ \t]*(?:({_TOKEN})=({_TOKEN}|{_QUOTED}))?")
# RFC 9110's qvalue, a little wider: more than three decimals are read rather than refused.
_WEIGHT = re.compile(r"0(\.[0-9]*)?|1(\.0*)?")
# Bounds on what one request makes the server read: gunicorn caps a header line at 8 KB but joins repeated lines into
# one value, and no client needs more than this to say what it takes.
_MOST_RANGES = 64
_MOST_CHARACTERS = 4096


@dataclass(frozen=True)
class MediaRange:
    """A media range of an Accept header (``text/*;q=0.5``), or a media type a renderer offers (weight 1)."""

    type: str  # lower case; "*" for any
    subtype: str  # lower case; "*" for any
    params: dict[str, str]  # names in lower case, values unquoted, the weight not among them
    weight: float

    @property
    def full_type(self) -> str:
        return f"{self.type}/{self.subtype}"

    @property
    def precedence(self) -> int:
        """How specific it is: 0 for ``*/*``, 1 for ``type/*``, 2 for a type, 3 for a type with parameters."""
        if self.type == "*":
            return 0
        if self.subtype == "*":
            return 1
        return 3 if self.params else 2

    def covers(self, offered: MediaRange) -> bool:
        """Whether this range allows the ``offered`` media type: its type and subtype, and each of its parameters."""
        return (
            self.type in ("*", offered.type)
            and self.subtype in ("*", offered.subtype)
            and all(self.params.get(name) == value for name, value in offered.params.items())
        )

    def __str__(self) -> str:
        return ";".join([self.full_type, *(f"{name}={_quoted(value)}" for name, value in self.params.items())])


def media_range_parse(text: str) -> MediaRange | None:
    """One media range (``type/subtype`` and parameters, ``q`` read as its weight), or None when malformed.

    A weight is read wherever it stands among the parameters (RFC 9110 says to), and one that is no qvalue
    (``q=high``, ``q=2``) makes the whole range malformed, as does ``*/json``.
    """
    text = text.strip(" \t")
    match = _TYPE.match(text)
    if match is None:
        return None
    kind, subtype = match[1].lower(), match[2].lower()
    if kind == "*" and subtype != "*":
        return None
    params, weight, position = {}, 1.0, match.end()
    while position < len(text):
        parameter = _PARAMETER.match(text, position)
        if parameter is None:
            return None
        position = parameter.end()
        if parameter[1] is None:
            continue
        name, value = parameter[1].lower(), _unquoted(parameter[2])
        if name == "q":
            if not _WEIGHT.fullmatch(value):
                return None
            weight = float(value)
        else:
            params[name] = value
    return MediaRange(type=kind, subtype=subtype, params=params, weight=weight)


def _elements(header: str) -> list[str]:
    """The header's comma-separated elements, commas inside a quoted string kept; a quote that never closes stands
    as an element of its own, and what follows it is read on.

    In one pass: a regular expression (an element being quoted strings or other characters, or a lone quote) reads
    the rest of the header again at each unclosed quote, and a few kilobytes of them took seconds.
    """
    size = len(header)
    # closes[i]: the closing quote of a quoted string whose text starts at i, or -1 when it never closes; read from
    # the end, so each character is looked at once.
    closes = [-1] * (size + 2)
    for i in range(size - 1, -1, -1):
        char = header[i]
        if char == '"':
            closes[i] = i
        elif char == "\\":
            closes[i] = closes[i + 2] if i + 1 < size else -1
        else:
            closes[i] = closes[i + 1]
    elements: list[str] = []
    start, i = -1, 0
    while i < size:
        char = header[i]
        if char == '"' and closes[i + 1] >= 0:
            start = i if start < 0 else start
            i = closes[i + 1] + 1
            continue
        if char in ',"':
            if start >= 0:
                elements.append(header[start:i])
                start = -1
            if char == '"':
                elements.append(char)
        elif start < 0:
            start = i
        i += 1
    if start >= 0:
        elements.append(header[start:])
    return elements


def accept_parse(header: str) -> list[MediaRange]:
    """The media ranges of an Accept header, in its order, leaving out each malformed one (up to _MOST_RANGES, from
    its first _MOST_CHARACTERS)."""
    ranges = []
    for element in _elements(header[:_MOST_CHARACTERS]):
        media_range = media_range_parse(element)
        if media_range is not None:
            ranges.append(media_range)
            if len(ranges) == _MOST_RANGES:
                break
    return ranges


def _unquoted(value: str) -> str:
    return re.sub(r"\\(.)", r"\1", value[1:-1]) if value.startswith('"') else value


def _quoted(value: str) -> str:
    if re.fullmatch(_TOKEN, value):
        return value
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


class ContentNegotiation(DefaultContentNegotiation):
    """DRF's negotiation, but weighing the Accept header, and refusing ``?format=xml`` with 406, not DRF's 404.

    DRF reads only how specific each media range is, so ``Accept: application/json;q=0, text/csv`` got JSON, the
    one thing the client refused. Here each representation takes the weight of the most specific range that
    covers it; a weight of 0 (or no range) makes it unacceptable. The highest weight wins, then the more specific
    range, then the server's order (JSON first). A range whose weight is malformed is left out, as if not sent.
    The header is read by ``accept_parse``, not by DRF's private helpers, which may change in any release.

    DRF answers an unknown format 404 because a format suffix (``/predictions.xml``) names another resource; this
    API has no suffixes, and the query parameter asks for a representation of the same resource, which is what 406
    is for.
    """

    def select_renderer(self, request, renderers, format_suffix=None):
        format = format_suffix or request.query_params.get(self.settings.URL_FORMAT_OVERRIDE)
        if format:
            renderers = self.filter_renderers(renderers, format)
        ranges = accept_parse(request.headers.get("Accept", "*/*"))
        best = None
        for position, renderer in enumerate(renderers):
            offered = media_range_parse(renderer.media_type)
            covering = [media_range for media_range in ranges if offered and media_range.covers(offered)]
            if not covering:
                continue
            # The most specific range decides (of equally specific ones, the most generous).
            media_range = max(covering, key=lambda covering: (covering.precedence, covering.weight))
            if media_range.weight == 0:
                continue
            rank = (media_range.weight, media_range.precedence, -position)
            if best is None or rank > best[0]:
                best = (rank, renderer, offered, media_range)
        if best is None:
            offered = ", ".join(f"`{media_type}`" for media_type in dict.fromkeys(r.media_type for r in renderers))
            if not ranges:
                # Empty, or only mistakes (`json`): RFC 9110 lets a server refuse it or disregard it. Refused, as any
                # other input read wrong, with what to send instead; no header at all is taken as `*/*`.
                message = (f"The Accept header names no media range that can be read (type/subtype, such as "
                           f"`application/json`): ask for one of {offered}, or send no Accept header.")
            else:
                message = f"No representation the Accept header allows: ask for one of {offered}."
            raise exceptions.NotAcceptable(message, available_renderers=renderers)
        _, renderer, offered, media_range = best
        # As DRF: the client's media type when it named one, the renderer's for a wildcard, with the client's
        # parameters (`indent=4`) either way; the weight is not one of them.
        base = offered if offered.precedence > media_range.precedence else media_range
        return renderer, str(MediaRange(type=base.type, subtype=base.subtype, params=media_range.params, weight=1))

    def filter_renderers(self, renderers, format):
        matching = [renderer for renderer in renderers if renderer.format == format]
        if not matching:
            # Several media types may share a format (the schema's YAML has two): name each once.
            known = ", ".join(f"`{name}`" for name in dict.fromkeys(renderer.format for renderer in renderers))
            raise exceptions.NotAcceptable(f"No representation in the format `{format}`: ask for one of {known}.")
        return matching
