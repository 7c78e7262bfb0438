"""Make a new API token for a user and print its key (the only time it can be read)."""
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from accounts.services import AccountGone, ApiTokenError, api_token_create


class Command(BaseCommand):
    help = "Make a new API token for USER and print its key alone on standard output (USER's other tokens go on)."

    def add_arguments(self, parser):
        parser.add_argument("username")
        parser.add_argument("--name", default="", help="what will use it (default: named after the key's start)")
        parser.add_argument(
            "--read-only", action="store_true", help="refused every request but GET, HEAD and OPTIONS"
        )

    def handle(self, *args, username: str, name: str, read_only: bool, **options):
        user = get_user_model().objects.filter(**{get_user_model().USERNAME_FIELD: username}).first()
        if user is None:
            raise CommandError(f"No user is called {username!r}.")
        try:
            token, key = api_token_create(user=user, name=name, read_only=read_only)
        except ApiTokenError as exc:
            raise CommandError(str(exc)) from None
        except AccountGone:
            raise CommandError(f"{username!r} was deleted meanwhile; no token was made.") from None
        if token.expires_at is not None:
            self.stderr.write(f"It works until {token.expires_at:%Y-%m-%d %H:%M %Z} (API_TOKEN_MAX_AGE_DAYS).")
        self.stdout.write(key)
