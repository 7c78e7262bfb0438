"""The admin's own answers to requests edited by hand (not a 500) and to saves of rows deleted meanwhile."""
from django.contrib import messages
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.contrib.admin.options import IncorrectLookupParameters
from django.core.exceptions import SuspiciousOperation
from django.http import HttpResponseRedirect
from django.urls import reverse


def deleted_meanwhile_response(*, model_admin, request, message: str) -> HttpResponseRedirect:
    """A change page's answer to a save of a row deleted since the page was read: nothing was saved, and staff are
    sent back to the list, told ``message``."""
    model_admin.message_user(request, message, messages.ERROR)
    opts = model_admin.opts
    return HttpResponseRedirect(reverse(f"{model_admin.admin_site.name}:{opts.app_label}_{opts.model_name}_changelist"))


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
