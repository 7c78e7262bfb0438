"""Account forms: sign-up (the site's names kept back), email, password reset, tokens, and checks behind the lockout."""
from django import forms
from django.contrib.auth.forms import (
    AdminPasswordChangeForm,
    PasswordChangeForm,
    SetPasswordForm,
    UserChangeForm,
    UserCreationForm,
)
from django.core.exceptions import ValidationError
from django.template.defaultfilters import pluralize

from accounts.backends import client_address
from accounts.login_devices import login_device_of
from accounts.models import ApiToken
from accounts.selectors import api_token_list_for_user, username_taken
from accounts.services import LockoutUnavailable, login_attempt_start, login_attempt_succeeded, user_password_set

# The owner of the shipped sample sets is found by this name; whoever took it would own (and could delete) them.
RESERVED_USERNAMES = frozenset({"samples"})


EMAIL_HELP_TEXT = (
    "Optional, and only for a link to reset your password should you forget it; whoever reads this inbox can reset "
    "it. It is used once you open the link mailed to it. Without an address, an administrator sets a new password "
    "for you."
)


class FirstErrorFocusedMixin:
    """Sent back with errors, the form opens on its first field in error, not on the one Django autofocuses.

    Django's sign-up and password-change forms autofocus their first field. On a page sent back for a correction
    the browser then raced the page's script (static/js/site.js), which focuses the first field in error, and won
    at times: the keyboard sat on a field that was fine.
    """

    def full_clean(self) -> None:
        super().full_clean()
        in_error = next((name for name in self.fields if name in self.errors), None)
        if in_error is None:
            return
        for field in self.fields.values():
            field.widget.attrs.pop("autofocus", None)
        self.fields[in_error].widget.attrs["autofocus"] = True


class SignupForm(FirstErrorFocusedMixin, UserCreationForm):
    class Meta(UserCreationForm.Meta):
        fields = ("username", "email")
        labels = {"email": "Email address (optional)"}
        help_texts = {"email": EMAIL_HELP_TEXT}
        # Browsers and password managers fill it in from what it is for.
        widgets = {"email": forms.EmailInput(attrs={"autocomplete": "email"})}

    def clean_username(self):
        # Before Django's check, which returns None (having recorded its error) for a name already taken.
        if (self.cleaned_data.get("username") or "").casefold() in RESERVED_USERNAMES:
            raise ValidationError("This name is reserved for the site itself; choose another.", code="reserved")
        return super().clean_username()


class AccountUserChangeForm(UserChangeForm):
    """The admin's form for an account: a name another account has in any case is refused, as sign-up refuses it
    (the database's index, accounts/0009, would otherwise answer the save with an error page)."""

    def clean_username(self):
        username = self.cleaned_data.get("username")
        if username and username_taken(username=username, other_than=self.instance):
            raise ValidationError(self.instance.unique_error_message(self._meta.model, ["username"]))
        return username


class PasswordSavedWithTokensMixin:
    """Saves the new password as every password form here does (accounts.services.user_password_set): only the
    password is written, on the account's row as it is now, and its API tokens go with the old one unless the form's
    ``revoke_api_tokens`` was unticked; their names are left in ``api_tokens_revoked``. Raises AccountGone for an
    account deleted meanwhile: Django's save of its whole copy would insert it back."""

    api_tokens_revoked: tuple[str, ...] = ()

    def new_password(self) -> str | None:
        return self.cleaned_data["new_password1"]

    def save(self, commit=True):
        self.api_tokens_revoked = tuple(user_password_set(
            user=self.user, password=self.new_password(), revoke_api_tokens=self.cleaned_data["revoke_api_tokens"]))
        return self.user


class AccountAdminPasswordChangeForm(PasswordSavedWithTokensMixin, AdminPasswordChangeForm):
    """The admin's password form: the account's API tokens go with the old password unless unticked, as when its
    owner changes it (after a break-in, they would keep working otherwise)."""

    revoke_api_tokens = forms.BooleanField(label="Also revoke its API tokens", required=False, initial=True)

    def __init__(self, user, *args, **kwargs) -> None:
        super().__init__(user, *args, **kwargs)
        held = len(api_token_list_for_user(user=user))
        self.fields["revoke_api_tokens"].help_text = (
            f"It has {held} now. Leave this ticked if someone else may have used the account: its tokens keep "
            "working after the password changes otherwise. Programs that use a revoked token need a new one."
        )

    def new_password(self) -> str | None:
        # None for "Disable password-based authentication".
        return self.cleaned_data["password1"] if self.cleaned_data["set_usable_password"] else None


class LockoutPasswordMixin:
    """Checks the signed-in user's password through the log-in lockout: a session is no way around it."""

    request = None

    def _password_matches(self, user, password: str) -> bool:
        username, address = user.get_username(), client_address(self.request)
        device = login_device_of(self.request, user=user)
        try:
            allowed = login_attempt_start(username=username, ip=address, device=device)
        except LockoutUnavailable:
            raise ValidationError("Passwords cannot be checked at the moment; nothing was changed. Try again in a "
                                  "minute.", code="lockout_unavailable") from None
        if not allowed:
            raise ValidationError("Too many wrong passwords. Try again in a few minutes.", code="locked_out")
        if user.check_password(password):
            login_attempt_succeeded(username=username, ip=address, log_in=False, device=device)
            return True
        return False


class PasswordConfirmedForm(LockoutPasswordMixin, forms.Form):
    """A form that asks for the signed-in user's password again, checked through the lockout."""

    password = forms.CharField(
        label="Your password", strip=False, widget=forms.PasswordInput(attrs={"autocomplete": "current-password"})
    )

    def __init__(self, *args, user, request, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.user, self.request = user, request

    def clean_password(self) -> str:
        password = self.cleaned_data["password"]
        if not self._password_matches(self.user, password):
            raise ValidationError("That is not your password.", code="wrong_password")
        return password


class ApiTokenCreateForm(PasswordConfirmedForm):
    """A new token. It outlives the session that made it, so a session alone (a computer left signed in) cannot."""

    name = forms.CharField(
        label="Name", required=False, max_length=ApiToken.NAME_MAX_LENGTH,
        help_text="What will use it, e.g. “scanner script”; left empty, the token is named after its first characters.",
    )
    read_only = forms.BooleanField(
        label="Read only", required=False,
        help_text="It can read what your account can see, never upload, change or start anything.",
    )

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        # The account page holds the deletion form's password field too.
        self.fields["password"].widget.attrs["id"] = "id_token_password"


class AccountDeleteForm(PasswordConfirmedForm):
    """The password, and a box ticked to say what goes with the account: a password typed and Enter pressed alone
    would delete every upload at once, where deleting one asks first."""

    understood = forms.BooleanField()

    def __init__(self, *args, uploads: int, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if uploads:
            upload_words = f"{uploads} upload{pluralize(uploads)}"
            label = f"I understand that my {upload_words} will be deleted with my account, for good."
            missing = f"confirm that your {upload_words} {pluralize(uploads, 'goes,go')} with your account"
        else:
            label = "I understand that my account will be deleted, for good."
            missing = "confirm that your account is deleted"
        self.fields["understood"].label = label
        self.fields["understood"].error_messages["required"] = f"Nothing was deleted: tick the box to {missing}."


class AccountEmailForm(PasswordConfirmedForm):
    """The address reset links go to. It takes the password: a session alone (a computer left signed in) could
    otherwise point the links at another inbox and take the account over by resetting its password."""

    email = forms.EmailField(label="Email address", required=False, max_length=254, help_text=EMAIL_HELP_TEXT,
                             widget=forms.EmailInput(attrs={"autocomplete": "email"}))
    field_order = ["email", "password"]

    def __init__(self, *args, **kwargs) -> None:
        # Its own names and ids: the page holds the other forms' password fields too.
        super().__init__(*args, prefix="email", **kwargs)


class PasswordResetRequestForm(forms.Form):
    """The address a reset link is asked for; a worker looks it up and sends the links (accounts.tasks)."""

    # The page is there for this one field: the keyboard starts in it (a refusal, shown above it, comes first).
    email = forms.EmailField(label="Your account's email address", max_length=254,
                             widget=forms.EmailInput(attrs={"autocomplete": "email", "autofocus": True}))


def _revoke_api_tokens_field() -> forms.BooleanField:
    return forms.BooleanField(
        label="Also revoke my API tokens", required=False, initial=True,
        help_text="Leave this ticked if someone else may have used your account: a token keeps working after a "
        "password change otherwise. Programs that use a revoked token need a new one.",
    )


class AccountPasswordChangeForm(FirstErrorFocusedMixin, LockoutPasswordMixin, PasswordSavedWithTokensMixin,
                                PasswordChangeForm):
    revoke_api_tokens = _revoke_api_tokens_field()

    def __init__(self, *args, request, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.request = request

    def clean_old_password(self) -> str:
        old_password = self.cleaned_data["old_password"]
        if not self._password_matches(self.user, old_password):
            raise ValidationError(self.error_messages["password_incorrect"], code="password_incorrect")
        return old_password


class PasswordResetSetForm(PasswordSavedWithTokensMixin, SetPasswordForm):
    """The new password a reset link leads to; the API tokens go too unless unticked, as on the password change."""

    revoke_api_tokens = _revoke_api_tokens_field()
