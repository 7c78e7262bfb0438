"""Admin for API tokens: whose, since when, last used and until when; deleting one revokes it."""
from django.contrib import admin

from accounts.models import ApiToken


@admin.register(ApiToken)
class ApiTokenAdmin(admin.ModelAdmin):
    list_display = ("name", "user", "prefix", "read_only", "created_at", "last_used_at", "expires_at")
    list_filter = ("read_only",)
    list_select_related = ("user",)
    search_fields = ("user__username", "name", "prefix")
    fields = ("name", "user", "prefix", "read_only", "created_at", "last_used_at", "expires_at")
    readonly_fields = fields
    ordering = ("-created_at",)

    # A key is shown once, to its owner (the Account page, `manage.py api_token_create`); the admin has only digests.
    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False
