"""Admin for users (deleted as an account's deletion does; saved under a lock, so that an account deleted meanwhile
is not inserted back; email address confirmation; staff accounts and ranks a superuser's to change), groups, and
API tokens (whose, since when, last used and until when; deleting one revokes it)."""
from django.contrib import admin, messages
from django.contrib.admin.utils import unquote
from django.contrib.auth import get_user_model
from django.contrib.auth.admin import GroupAdmin, UserAdmin
from django.contrib.auth.models import Group
from django.db import transaction
from django.template.defaultfilters import pluralize
from django.utils import formats, timezone

from accounts import selectors, services
from accounts.admin_deletion import users_deleted_objects
from accounts.forms import AccountAdminPasswordChangeForm, AccountUserChangeForm
from accounts.models import ApiToken
from classifier.admin import DELETE_LIST_MAX
from classifier.models import Upload
from mnistsite.admin_requests import HandEditedRequestsMixin, deleted_meanwhile_response


class EmailConfirmedFilter(admin.SimpleListFilter):
    title = "email confirmed"
    parameter_name = "email_confirmed"

    def lookups(self, request, model_admin):
        return [("yes", "Yes"), ("waiting", "Waiting for confirmation"), ("none", "No address")]

    def queryset(self, request, queryset):
        if self.value() == "yes":
            return queryset.filter(email_confirmed=True)
        if self.value() == "waiting":
            return queryset.filter(email_confirmed=False).exclude(email="")
        if self.value() == "none":
            return queryset.filter(email="")
        return queryset


def _may_touch(request, user) -> bool:
    """Whether the request's user may change or delete ``user`` (None: users in general) as far as rank goes: staff
    and superuser accounts (a superuser without staff status signs in again with every right once it is given), their
    own included, are a superuser's to change."""
    return user is None or not (user.is_staff or user.is_superuser) or request.user.is_superuser


def _when(moment) -> str:
    return formats.localize(timezone.template_localtime(moment))


class AccountUserAdmin(HandEditedRequestsMixin, UserAdmin):
    form = AccountUserChangeForm
    change_password_form = AccountAdminPasswordChangeForm
    change_user_password_template = "admin/auth/user/change_password_api_tokens.html"
    list_display = (*UserAdmin.list_display, "email_confirmed")
    list_filter = (*UserAdmin.list_filter, EmailConfirmedFilter)
    readonly_fields = (*UserAdmin.readonly_fields, "email_confirmation")
    fieldsets = tuple(
        (name, {**options, "fields": (*options["fields"], "email_confirmation")}) if "email" in options["fields"]
        else (name, options)
        for name, options in UserAdmin.fieldsets
    )
    actions = ["email_mark_confirmed", "email_confirmation_send_again"]

    def get_queryset(self, request):
        return selectors.user_queryset_with_email_confirmed(queryset=super().get_queryset(request))

    # Only a superuser changes or deletes a staff account, or gives anyone staff or superuser status, groups or
    # permissions. Staff allowed to change users (to set a forgotten password) could otherwise make themselves
    # superusers, or set the password of an account with more rights than their own and log in as it.
    ESCALATING_FIELDS = ("is_staff", "is_superuser", "groups", "user_permissions")

    def get_readonly_fields(self, request, obj=None):
        fields = super().get_readonly_fields(request, obj)
        return fields if request.user.is_superuser else (*fields, *self.ESCALATING_FIELDS)

    def has_change_permission(self, request, obj=None) -> bool:
        return _may_touch(request, obj) and super().has_change_permission(request, obj)

    def has_delete_permission(self, request, obj=None) -> bool:
        return _may_touch(request, obj) and super().has_delete_permission(request, obj)

    def get_deleted_objects(self, objs, request):
        # Counted no further than the limit: past it, the counted page counts each account's uploads anyway.
        if Upload.objects.filter(owner__in=[user.pk for user in objs])[: DELETE_LIST_MAX + 1].count() > DELETE_LIST_MAX:
            deleted, counts, perms_needed, protected = users_deleted_objects(
                users=objs, request=request, admin_site=self.admin_site)
        else:
            deleted, counts, perms_needed, protected = super().get_deleted_objects(objs, request)
        # "Delete selected" asks only whether users may be deleted at all: staff among them refuse the lot.
        if not all(_may_touch(request, user) for user in objs):
            perms_needed = {*perms_needed, "staff accounts"}
        return deleted, counts, perms_needed, protected

    @admin.display(description="email confirmed", boolean=True, ordering="email_confirmed")
    def email_confirmed(self, user) -> bool:
        return user.email_confirmed

    @admin.display(description="email confirmation")
    def email_confirmation(self, user) -> str:
        if user.pk is None:
            return "-"
        status = selectors.email_confirmation_status_get(user=user)
        if not status.address:
            return "No email address: an administrator sets a new password should its owner forget it."
        if status.confirmed:
            return f"{status.address} confirmed on {_when(status.since)}"
        since = f" since {_when(status.since)}" if status.since is not None else ""
        waiting = f"{status.address} waiting for confirmation{since}: no reset link goes there until its owner " \
                  "follows the link mailed to it"
        refused_at = selectors.email_confirmation_refused_at(user=user)
        if refused_at is not None:
            # As the Account page says it: else the address would look merely slow to confirm, for good.
            waiting += f". Its mail server refused the link sent on {_when(refused_at)}: it may have no such mailbox"
        return waiting

    # A change saved, or a password set, for an account deleted meanwhile (by another administrator, or its owner):
    # Django's save of the whole user would insert it back. Locked first, a deletion waits for the change instead;
    # deleted first, nothing is saved and staff are told.
    def changeform_view(self, request, object_id=None, form_url="", extra_context=None):
        if request.method != "POST" or object_id is None:
            return super().changeform_view(request, object_id, form_url, extra_context)
        return self._locked(request, object_id, lambda: super(AccountUserAdmin, self).changeform_view(
            request, object_id, form_url, extra_context))

    def user_change_password(self, request, id, form_url=""):
        if request.method != "POST":
            return super().user_change_password(request, id, form_url)
        return self._locked(request, id, lambda: super(AccountUserAdmin, self).user_change_password(
            request, id, form_url))

    def construct_change_message(self, request, form, formsets, add=False):
        change_message = super().construct_change_message(request, form, formsets, add)
        revoked = getattr(form, "api_tokens_revoked", [])
        if revoked:
            # Said and logged where Django's view says and logs the password change (it has no other hook).
            username = form.user.get_username()
            self.message_user(request, f"{len(revoked)} API token{pluralize(revoked)} of {username} "
                                       f"{pluralize(revoked, 'was,were')} revoked: "
                                       f"{', '.join(f'“{name}”' for name in revoked)}.", messages.SUCCESS)
            change_message += [{"deleted": {"name": "API token", "object": name}} for name in revoked]
        return change_message

    def _locked(self, request, object_id, view):
        """``view``'s answer, given with the row of user ``object_id`` locked; if it was deleted meanwhile, nothing
        is saved, and staff are sent to the list, told so."""
        user = self.get_object(request, unquote(object_id))
        if user is None:
            return view()  # Django's answer for an account not there
        try:
            with transaction.atomic():
                services.user_lock(user=user)
                return view()
        except services.AccountGone:
            return deleted_meanwhile_response(model_admin=self, request=request, message=(
                f"Account {user.get_username()} was deleted meanwhile, by another administrator or its owner; "
                "nothing was saved."))

    def save_model(self, request, obj, form, change):
        if not (change and "email" in form.changed_data):
            super().save_model(request, obj, form, change)
            return
        # The address goes through the service the Account page uses, from the one stored: the new one waits for its
        # link, and a confirmed one replaced or removed gets its notice (saying an administrator changed it).
        email, obj.email = obj.email, form.initial.get("email") or ""
        super().save_model(request, obj, form, change)
        result = services.user_email_set(user=obj, email=email, by_staff=True)
        # Each is owed in the database and swept, so it goes whatever becomes of its task: that much is true here,
        # inside the admin's transaction, before anything was queued.
        if result.notice_to:
            self.message_user(request, f"A notice that its address changed is on its way to {result.notice_to}, the "
                                       "address replaced.", messages.INFO)
        if result.confirmation.link is services.ConfirmationLink.QUEUED:
            self.message_user(request, f"A link to confirm {obj.email} is on its way to it.", messages.SUCCESS)
        elif result.confirmation.link is services.ConfirmationLink.THROTTLED:
            self.message_user(request, f"{obj.email} was saved, waiting for confirmation: "
                                       f"{result.confirmation.refusal}", messages.WARNING)
        elif result.confirmation.link is services.ConfirmationLink.NO_MAIL:
            self._confirmation_report(request, {services.ConfirmationLink.NO_MAIL: 1})
        elif result.confirmation.link is services.ConfirmationLink.INACTIVE:
            self.message_user(request, f"{obj.email} was saved, waiting for confirmation: account "
                                       f"{obj.get_username()} is deactivated: no link is sent.", messages.WARNING)

    # Deleted as an account's own deletion is, its uploads locked first: else deleting the predictions, then the
    # uploads, can deadlock with the owner's "Delete all" running at the same time.
    def delete_model(self, request, obj):
        services.users_delete(users=[obj])

    def delete_queryset(self, request, queryset):
        services.users_delete(users=list(queryset))

    @admin.action(description="Mark the email address confirmed (checked with its owner otherwise)",
                  permissions=["change"])
    def email_mark_confirmed(self, request, queryset):
        marked = refused = 0
        for user in queryset.order_by("pk"):
            if not _may_touch(request, user):
                # Reset links would go to an address its owner never confirmed (mistyped, say): a staff account's.
                self.message_user(request, f"Account {user.get_username()} is a staff account: only a superuser "
                                           "marks its address confirmed.", messages.ERROR)
                refused += 1
                continue
            address = services.email_confirm_by_staff(user_id=user.pk)
            if address is not None:
                marked += 1
                # Without the address: the admin's history outlives the account, and its address must not.
                self.log_change(request, user, "Marked the email address confirmed.")
        skipped = queryset.count() - marked - refused
        message = f"Marked {marked} email address{'es' if marked != 1 else ''} confirmed."
        if skipped:
            message += f" {skipped} had no address or one confirmed already."
        self.message_user(request, message, messages.SUCCESS if marked else messages.WARNING)

    @admin.action(description="Send the email confirmation link again", permissions=["change"])
    def email_confirmation_send_again(self, request, queryset):
        outcomes: dict[services.ConfirmationLink, int] = {}
        gone = 0
        for user in queryset.order_by("pk"):
            try:
                request_result = services.email_confirmation_request(user=user)
            except services.AccountGone:
                gone += 1
                continue
            outcomes[request_result.link] = outcomes.get(request_result.link, 0) + 1
            if request_result.link is services.ConfirmationLink.QUEUED:
                self.log_change(request, user, "Sent the email confirmation link again.")
            elif request_result.link is services.ConfirmationLink.THROTTLED:
                self.message_user(request, f"{user.get_username()}: {request_result.refusal}", messages.WARNING)
            elif request_result.link is services.ConfirmationLink.INACTIVE:
                self.message_user(request, f"Account {user.get_username()} is deactivated: no link is sent.",
                                  messages.WARNING)
        if gone:
            self.message_user(request, f"{gone} account{'s were' if gone != 1 else ' was'} deleted meanwhile: no "
                                       f"link was sent to {'them' if gone != 1 else 'it'}.", messages.WARNING)
        self._confirmation_report(request, outcomes)

    def _confirmation_report(self, request, outcomes: dict) -> None:
        link = services.ConfirmationLink
        if outcomes.get(link.QUEUED):
            self.message_user(request, f"{outcomes[link.QUEUED]} confirmation link(s) on their way. One usually "
                                       f"arrives within {selectors.email_confirmation_delay_minutes()} minutes: an "
                                       "address is "
                                       "sent so many a period, whoever asks.", messages.SUCCESS)
        if outcomes.get(link.NOT_NEEDED):
            self.message_user(request, f"{outcomes[link.NOT_NEEDED]} had no address or one confirmed already.",
                              messages.INFO)
        if outcomes.get(link.NO_MAIL):
            self.message_user(request, "This site sends no email (EMAIL_URL is not set): no link was sent.",
                              messages.ERROR)


admin.site.unregister(get_user_model())
admin.site.register(get_user_model(), AccountUserAdmin)


class AccountGroupAdmin(GroupAdmin):
    # As for users: staff allowed to change groups, not superusers, would otherwise give their own group every
    # permission.
    def get_readonly_fields(self, request, obj=None):
        fields = super().get_readonly_fields(request, obj)
        return fields if request.user.is_superuser else (*fields, "permissions")


admin.site.unregister(Group)
admin.site.register(Group, AccountGroupAdmin)


@admin.register(ApiToken)
class ApiTokenAdmin(HandEditedRequestsMixin, admin.ModelAdmin):
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
