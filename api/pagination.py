"""The API's lists are paged: `page`, `page_size` and `newest`, each given at most once, a value out of range refused."""
from __future__ import annotations

from collections.abc import Callable

from rest_framework import exceptions
from rest_framework.pagination import PageNumberPagination
from rest_framework.utils.urls import replace_query_param

from api.query import query_param_once

# Bounds what one request can ask for: a page is read, serialised and sent in one go, holding a web worker meanwhile.
MAX_PAGE_SIZE = 100
# The largest id a row can have (a bigint).
MAX_ID = 2**63 - 1


def _whole_number(text: str, *, name: str, what: str, lowest: int, highest: int) -> int:
    # The length first: int() of thousands of digits is refused by Python itself.
    if not (text.isascii() and text.isdigit() and len(text) <= len(str(highest)) and lowest <= int(text) <= highest):
        raise exceptions.ValidationError({name: [exceptions.ErrorDetail(
            f"{what} must be a whole number from {lowest} to {highest}.", code="invalid")]})
    return int(text)


class Pagination(PageNumberPagination):
    """DRF's page numbers, with a page size the client may choose up to MAX_PAGE_SIZE, and pages that hold still.

    DRF reads a page size that is not a number, or is out of range, as the default, silently; here it is a 400
    naming `page_size`, as every other out-of-range parameter of the API is.

    A list is newest first, so each row stored after a page was read would push one of its rows onto the next page,
    listed twice, and change the count. A view therefore lists the rows up to `newest`, an id: the one given, or
    the newest there is now, which the page's `next` and `previous` links then carry.
    """

    page_size_query_param = "page_size"
    max_page_size = MAX_PAGE_SIZE
    newest_query_param = "newest"
    newest_id: int | None = None

    def get_page_size(self, request) -> int:
        text = query_param_once(request, self.page_size_query_param)
        if not text:
            # Empty, as every other parameter of the API: not given.
            return self.page_size
        return _whole_number(
            text, name=self.page_size_query_param, what="The page size", lowest=1, highest=self.max_page_size)

    def newest_id_get(self, request, *, newest_now: Callable[[], int]) -> int:
        """The id of the newest row the pages list: the query's `newest`, or else ``newest_now()``."""
        text = query_param_once(request, self.newest_query_param)
        self.newest_id = newest_now() if not text else _whole_number(
            text, name=self.newest_query_param, what="The newest row's id", lowest=0, highest=MAX_ID)
        return self.newest_id

    def _bounded(self, link: str | None) -> str | None:
        if link is None or self.newest_id is None:
            return link
        return replace_query_param(link, self.newest_query_param, self.newest_id)

    def get_next_link(self) -> str | None:
        return self._bounded(super().get_next_link())

    def get_previous_link(self) -> str | None:
        return self._bounded(super().get_previous_link())

    def get_page_number(self, request, paginator):
        text = query_param_once(request, self.page_query_param)
        if not text:
            return 1
        if text in self.last_page_strings:
            return paginator.num_pages
        # DRF hands anything else to Django's paginator, whose refusal of 0, -1 or "abc" is a 404 "Invalid page.":
        # the page was misspelt, not missing.
        if not (text.isascii() and text.isdigit() and text.strip("0")):
            raise exceptions.ValidationError({self.page_query_param: [exceptions.ErrorDetail(
                "The page must be a whole number from 1, or `last`.", code="invalid")]})
        # Past the last page however long, without asking int() for thousands of digits.
        return int(text) if len(text) <= len(str(MAX_ID)) else paginator.num_pages + 1

    def get_schema_operation_parameters(self, view) -> list[dict]:
        parameters = super().get_schema_operation_parameters(view)
        for parameter in parameters:
            if parameter["name"] == self.page_query_param:
                parameter["description"] += " From 1, or `last`; past the last page a 404, anything else a 400."
                parameter["schema"] = {
                    "oneOf": [{"type": "integer", "minimum": 1}, {"type": "string", "enum": ["last"]}],
                }
            if parameter["name"] == self.page_size_query_param:
                parameter["description"] = (
                    f"Results per page, 1 to {self.max_page_size} (a value outside is a 400); "
                    f"default {self.page_size}."
                )
                parameter["schema"] = {"type": "integer", "minimum": 1, "maximum": self.max_page_size}
        return [*parameters, {
            "name": self.newest_query_param,
            "required": False,
            "in": "query",
            "description": "List only the rows stored up to this id (by default, all there are now). Each page's "
            "`next` and `previous` links carry it, set to the newest row there was when the first page was read: "
            "following them lists every row of that moment once, with one `count`, whatever is stored meanwhile.",
            "schema": {"type": "integer", "minimum": 0},
        }]


# A paged list's GET takes these from the query string, and refuses others (api.query) besides its own filters.
PAGE_QUERY_PARAMETERS = (Pagination.page_query_param, Pagination.page_size_query_param, Pagination.newest_query_param)
