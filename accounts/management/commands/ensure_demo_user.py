"""Create (or reset) the demo administrator account and print its credentials."""
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from accounts.services import DemoUserError, demo_user_ensure

# Published in this file: fit for a laptop's development server only.
DEFAULT_PASSWORD = "mnist-demo-2026"


class Command(BaseCommand):
    help = (
        "Create the demo administrator account if missing (or reset its password) and print its credentials. "
        "Without DEBUG, a password of your own is required."
    )

    def add_arguments(self, parser):
        parser.add_argument("--username", default="demo")
        parser.add_argument("--password", default=None, help=f"Default, with DEBUG on only: {DEFAULT_PASSWORD}.")

    def handle(self, *args, username: str, password: str | None, **options):
        if password is None:
            if not settings.DEBUG:
                raise CommandError("DEBUG is off: give the account a password of your own with --password.")
            password = DEFAULT_PASSWORD
        try:
            user, created = demo_user_ensure(username=username, password=password)
        except DemoUserError as exc:
            raise CommandError(str(exc)) from exc
        verb = "Created" if created else "Demo account"
        self.stdout.write(
            f"{verb}: username {user.get_username()!r}, password {password!r} (administrator; admin at /admin/)"
        )
