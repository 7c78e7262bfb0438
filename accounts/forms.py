"""Account forms: sign-up (with the site's own names kept back) and confirming an account's deletion."""
from django import forms
from django.contrib.auth.forms import UserCreationForm
from django.core.exceptions import ValidationError

# The owner of the shipped sample sets is found by this name; whoever took it would own (and could delete) them.
RESERVED_USERNAMES = frozenset({"samples"})


class SignupForm(UserCreationForm):
    def clean_username(self):
        username = super().clean_username()
        if username.casefold() in RESERVED_USERNAMES:
            raise ValidationError("This name is reserved for the site itself; choose another.", code="reserved")
        return username


class AccountDeleteForm(forms.Form):
    password = forms.CharField(
        label="Your password", strip=False, widget=forms.PasswordInput(attrs={"autocomplete": "current-password"})
    )

    def __init__(self, *args, user, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.user = user

    def clean_password(self) -> str:
        password = self.cleaned_data["password"]
        if not self.user.check_password(password):
            raise ValidationError("That is not your password.", code="wrong_password")
        return password
