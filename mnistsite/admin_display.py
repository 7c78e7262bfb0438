"""What the apps' admin pages share: the project's admin stylesheet, a date short enough for a list column, and
the admin's own answers to requests edited by hand."""
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.contrib.admin.options import IncorrectLookupParameters
from django.core.exceptions import SuspiciousOperation
from django.utils import timezone


class AdminStyles:
    """The project's admin stylesheet (thumbnails, the model's input, buttons, progress, charts): no inline styles."""

    class Media:
        css = {"all": ("css/admin.css",)}


def admin_when(value) -> str:
    # Django's "Dec. 4, 2026, 7:59 p.m." takes a column of its own twice as wide as this.
    return "–" if value is None else timezone.localtime(value).strftime("%Y-%m-%d %H:%M")


class HandEditedRequestsMixin:
    """The admin's own answers, not a 500, to a list's address or an action's form edited by hand."""

    def get_changelist_instance(self, request):
        # PostgreSQL refuses a NUL in any text it is sent: a filter's or a search's value with one failed the list's
        # query.
        if any("\x00" in key or any("\x00" in value for value in values) for key, values in request.GET.lists()):
            raise IncorrectLookupParameters("a NUL character in the list's address")
        return super().get_changelist_instance(request)

    def response_action(self, request, queryset):
        # Django filters by the selected ids as they came: one that is not a number raised a ValueError.
        if not all(pk.isascii() and pk.isdigit() for pk in request.POST.getlist(ACTION_CHECKBOX_NAME)):
            raise SuspiciousOperation("an action's selection named a row by something other than its number")
        return super().response_action(request, queryset)
