"""Create (or reset) the demo staff account and print its credentials."""
from django.core.management.base import BaseCommand

from accounts.services import demo_user_ensure


class Command(BaseCommand):
    help = "Create the demo staff account if missing and print its credentials."

    def add_arguments(self, parser):
        parser.add_argument("--username", default="demo")
        parser.add_argument("--password", default="mnist-demo-2026")

    def handle(self, *args, username: str, password: str, **options):
        user, created = demo_user_ensure(username=username, password=password)
        verb = "Created" if created else "Demo account"
        self.stdout.write(f"{verb}: username {user.get_username()!r}, password {password!r} (staff; admin at /admin/)")
