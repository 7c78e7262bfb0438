"""Make a new API token for a user and print its key (the only time it can be read)."""
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from accounts.services import api_token_create


class Command(BaseCommand):
    help = "Make a new API token for USER, replacing the one before, and print its key alone on standard output."

    def add_arguments(self, parser):
        parser.add_argument("username")

    def handle(self, *args, username: str, **options):
        user = get_user_model().objects.filter(**{get_user_model().USERNAME_FIELD: username}).first()
        if user is None:
            raise CommandError(f"No user is called {username!r}.")
        token, key = api_token_create(user=user)
        if token.expires_at is not None:
            self.stderr.write(f"It works until {token.expires_at:%Y-%m-%d %H:%M %Z} (API_TOKEN_MAX_AGE_DAYS).")
        self.stdout.write(key)
