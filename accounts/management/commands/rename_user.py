"""`manage.py rename_user NAME NEW_NAME`: rename an account from the command line, where the admin cannot be reached."""
from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from accounts.services import UsernameTaken, user_rename


class Command(BaseCommand):
    # The case in point: migration accounts/0009 stops at names that differ only in case, and under compose the site
    # waits for the migrations, so the admin the migration points to is not there to rename them in.
    help = "Rename an account; no other account may have the new name in any case."

    def add_arguments(self, parser):
        parser.add_argument("username", help="the account's name, in its own case where names differ only in case")
        parser.add_argument("new_username", help="its new name")

    def handle(self, *args, username: str, new_username: str, **options):
        model = get_user_model()
        accounts = model._default_manager
        field = model.USERNAME_FIELD
        # The exact name first: before accounts/0009, "alice" and "Alice" may both be there.
        user = accounts.filter(**{field: username}).first()
        if user is None:
            found = list(accounts.filter(**{f"{field}__iexact": username})[:2])
            if len(found) != 1:
                raise CommandError(f"user '{username}' does not exist")
            (user,) = found
        old = user.get_username()
        try:
            user_rename(user=user, username=new_username)
        except UsernameTaken:
            raise CommandError(f"another account is named '{new_username}', in this case or another") from None
        except ValidationError as error:
            raise CommandError(" ".join(error.messages)) from None
        self.stdout.write(f"Renamed '{old}' to '{user.get_username()}'.")
