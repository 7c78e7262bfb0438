"""Query parameters are read once each: one sent twice is refused, since which of its values was meant is not known."""
from __future__ import annotations

from rest_framework import exceptions


def repeated_error(name: str, count: int) -> exceptions.ErrorDetail:
    return exceptions.ErrorDetail(f"`{name}` was sent {count} times; send it once.", code="repeated")


def query_param_once(request, name: str) -> str | None:
    """The query parameter ``name``, or None when it was not sent; sent more than once, a 400 naming it."""
    values = request.query_params.getlist(name)
    if len(values) > 1:
        raise exceptions.ValidationError({name: [repeated_error(name, len(values))]})
    return values[0] if values else None
