"""The API's lists are paged: `page` and `page_size`, each given at most once, a page size out of range refused."""
from __future__ import annotations

from rest_framework import exceptions
from rest_framework.pagination import PageNumberPagination

from api.query import query_param_once

# Bounds what one request can ask for: a page is read, serialised and sent in one go, holding a web worker meanwhile.
MAX_PAGE_SIZE = 100


class Pagination(PageNumberPagination):
    """DRF's page numbers, with a page size the client may choose up to MAX_PAGE_SIZE.

    DRF reads a page size that is not a number, or is out of range, as the default, silently; here it is a 400
    naming `page_size`, as every other out-of-range parameter of the API is.
    """

    page_size_query_param = "page_size"
    max_page_size = MAX_PAGE_SIZE

    def get_page_size(self, request) -> int:
        text = query_param_once(request, self.page_size_query_param)
        if not text:
            # Empty, as every other parameter of the API: not given.
            return self.page_size
        # The length first: int() of thousands of digits is refused by Python itself.
        whole = text.isascii() and text.isdigit() and len(text) <= len(str(self.max_page_size))
        if not whole or not 1 <= int(text) <= self.max_page_size:
            raise exceptions.ValidationError({self.page_size_query_param: [exceptions.ErrorDetail(
                f"The page size must be a whole number from 1 to {self.max_page_size}.", code="invalid")]})
        return int(text)

    def get_page_number(self, request, paginator):
        query_param_once(request, self.page_query_param)
        return super().get_page_number(request, paginator)

    def get_schema_operation_parameters(self, view) -> list[dict]:
        parameters = super().get_schema_operation_parameters(view)
        for parameter in parameters:
            if parameter["name"] == self.page_size_query_param:
                parameter["description"] = (
                    f"Results per page, 1 to {self.max_page_size} (a value outside is a 400); "
                    f"default {self.page_size}."
                )
                parameter["schema"] = {"type": "integer", "minimum": 1, "maximum": self.max_page_size}
        return parameters
