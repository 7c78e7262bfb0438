"""``{% request_id %}``: the current request's X-Request-ID, for a page a user may quote it from."""
from django import template

from mnistsite.request_id import request_id_get

register = template.Library()


@register.simple_tag(name="request_id")
def request_id_tag() -> str:
    # Read from the request's context, not the template's: Django renders 500.html with an empty one.
    return request_id_get() or ""
