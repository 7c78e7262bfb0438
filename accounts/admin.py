"""Admin for API tokens: who has one, since when and until when; deleting one revokes it."""
from django.contrib import admin

from accounts.models import ApiToken


@admin.register(ApiToken)
class ApiTokenAdmin(admin.ModelAdmin):
    list_display = ("user", "prefix", "created_at", "expires_at")
    list_select_related = ("user",)
    search_fields = ("user__username", "prefix")
    fields = ("user", "prefix", "created_at", "expires_at")
    readonly_fields = fields
    ordering = ("-created_at",)

    # A key is shown once, to its owner (the Account page, `manage.py api_token_create`); the admin has only digests.
    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False
