"""Django's changepassword, revoking the account's API tokens too (unless --keep-api-tokens), and writing only the
password, on the account as it is once the password was typed."""
import getpass

from django.contrib.auth import get_user_model
from django.contrib.auth.management.commands import changepassword
from django.contrib.auth.password_validation import validate_password
from django.core.exceptions import ValidationError
from django.core.management.base import CommandError

from accounts.services import AccountGone, user_password_set

TRIES = 3


class Command(changepassword.Command):
    help = "Change a user's password; their API tokens are revoked with the old one unless --keep-api-tokens."

    def add_arguments(self, parser):
        parser.add_argument("username", nargs="?", help="whose password; by default, the name you are logged in as")
        parser.add_argument("--keep-api-tokens", action="store_true",
                            help="leave the account's API tokens working (revoke them if someone else may have used "
                                 "the account)")

    def handle(self, *args, username: str | None, keep_api_tokens: bool, **options):
        username = username or getpass.getuser()
        model = get_user_model()
        # Found in any case, as logging in finds it: no two names differ only in case (accounts/0009).
        user = model._default_manager.filter(**{f"{model.USERNAME_FIELD}__iexact": username}).first()
        if user is None:
            raise CommandError(f"user '{username}' does not exist")
        self.stdout.write(f"Changing password for user '{user}'")
        for _ in range(TRIES):
            password = self._get_pass()
            if password != self._get_pass("Password (again): "):
                self.stdout.write("Passwords do not match. Please try again.")
                continue
            try:
                validate_password(password, user)
            except ValidationError as error:
                self.stderr.write("\n".join(error.messages))
                continue
            break
        else:
            raise CommandError(f"Aborting password change for user '{user}' after {TRIES} attempts")
        try:
            revoked = user_password_set(user=user, password=password, revoke_api_tokens=not keep_api_tokens)
        except AccountGone:
            raise CommandError(f"user '{user}' was deleted meanwhile; nothing was changed") from None
        if revoked:
            self.stdout.write(f"Revoked its {len(revoked)} API token(s): {', '.join(revoked)}")
        return f"Password changed successfully for user '{user}'"
