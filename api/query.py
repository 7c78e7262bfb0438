"""Query parameters: each read once (one sent twice is refused, since which of its values was meant is not known), and
none that the operation does not take (DRF would ignore it: a misspelt filter would list everything)."""
from __future__ import annotations

from collections.abc import Collection, Mapping

from rest_framework import exceptions
from rest_framework.renderers import BrowsableAPIRenderer
from rest_framework.settings import api_settings


def repeated_error(name: str, count: int) -> exceptions.ErrorDetail:
    return exceptions.ErrorDetail(f"`{name}` was sent {count} times; send it once.", code="repeated")


def query_param_once(request, name: str) -> str | None:
    """The query parameter ``name``, or None when it was not sent; sent more than once, a 400 naming it."""
    values = request.query_params.getlist(name)
    if len(values) > 1:
        raise exceptions.ValidationError({name: [repeated_error(name, len(values))]})
    return values[0] if values else None


def query_parameters_check(request, *, taken: Collection[str]) -> None:
    """A 400 (`unknown`) naming the first query parameter that is neither in ``taken`` nor `format`, which every
    operation reads (the representation asked for)."""
    for name in request.query_params:
        if name not in taken and name != api_settings.URL_FORMAT_OVERRIDE:
            listed = ", ".join(f"`{each}`" for each in dict.fromkeys(taken))
            takes = f"it takes {listed}" if taken else "it takes none"
            named = f"`{name}` is not" if name else "A parameter with no name (`?=`) is not"
            raise exceptions.ValidationError({name: [exceptions.ErrorDetail(
                f"{named} a query parameter of this operation; {takes}.", code="unknown")]})


# For an API view: a query parameter its method does not take is refused (400), once the caller is known to be
# allowed (a caller without credentials is still told that first). Said here, not in a docstring, which
# drf-spectacular would take for the description of every operation that has none of its own.
class QueryParametersCheckedMixin:
    # Per method, the query parameters it reads (HEAD: GET's); a method not named takes none.
    query_parameters: Mapping[str, Collection[str]] = {}

    def initial(self, request, *args, **kwargs) -> None:
        super().initial(request, *args, **kwargs)
        method = request.method.lower()
        if method not in self.http_method_names or not hasattr(self, method):
            return  # answered 405 next, whatever its query string
        if method == "options" or isinstance(request.accepted_renderer, BrowsableAPIRenderer):
            # OPTIONS describes the path, whatever list it was asked from; the browsable API's forms and buttons send
            # their page's own address, a list's filters and page with it, whatever their method.
            taken = [name for names in self.query_parameters.values() for name in names]
        else:
            taken = self.query_parameters.get("GET" if method == "head" else request.method, ())
        query_parameters_check(request, taken=taken)
