"""The sign-up form: Django's, with the names the site uses for its own accounts kept back."""
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
