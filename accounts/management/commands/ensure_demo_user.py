"""Create the demo administrator account with a random password, or set the password given, and print it."""
import os
import secrets
import sys
from pathlib import Path

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from accounts.services import DemoUserError, demo_user_ensure


def _kept_password(path: Path | None) -> str | None:
    if path is None:
        return None
    try:
        return path.read_text().strip() or None
    except FileNotFoundError:
        return None


def _keep_password(path: Path, password: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # Readable by its owner only, from the moment it exists: it holds an administrator's password.
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as kept:
        kept.write(f"{password}\n")


# The password earlier versions gave every demo account, printed in their README: an account still holding it is
# given a random one.
_PUBLISHED_PASSWORD = "mnist-demo-2026"


class Command(BaseCommand):
    help = (
        "Create the demo administrator account with a random password and print it; an existing account's "
        "password is left as it is. With --password, set that password instead (creating the account if missing). "
        "Without DEBUG, a password of your own is required."
    )

    def add_arguments(self, parser):
        parser.add_argument("--username", default="demo")
        parser.add_argument("--password", default=None, help="Set this password, even over the account's own.")
        parser.add_argument(
            "--password-file", type=Path, default=None,
            help="Keep the password set in this file (mode 0600), and print it from there on later runs.",
        )

    def handle(self, *args, username: str, password: str | None, password_file: Path | None, **options):
        if password is None and not settings.DEBUG:
            raise CommandError("DEBUG is off: give the account a password of your own with --password.")
        existing = get_user_model().objects.filter(username=username).first()
        if existing is not None and not (existing.is_staff and existing.is_superuser):
            # Before any password is kept or set: a mistyped name must not touch someone's account.
            raise CommandError(f"{username!r} is someone's account, not a demo account; choose another --username.")
        if password is None:
            # An account from before passwords were random has the one that was published: it goes.
            if existing is not None and not existing.check_password(_PUBLISHED_PASSWORD):
                self._describe_existing(existing, password_file=password_file)
                return
            # Never a fixed one: a published password would reach whatever database DATABASE_URL names.
            password = secrets.token_urlsafe(12)
        if password_file is not None:
            # Kept before it is set: an account whose password was set and then lost would need changepassword.
            _keep_password(password_file, password)
        try:
            user, created = demo_user_ensure(username=username, password=password)
        except DemoUserError as exc:
            raise CommandError(str(exc)) from exc
        verb = "Demo account created" if created else "Demo account"
        kept = f"; kept in {password_file}" if password_file is not None else ""
        self.stdout.write(
            f"{verb}: username {user.get_username()!r}, password {password!r} "
            f"(administrator; admin at /admin/{kept})"
        )

    def _describe_existing(self, user, *, password_file: Path | None) -> None:
        name = user.get_username()
        kept = _kept_password(password_file)
        if kept is not None and user.check_password(kept):
            self.stdout.write(
                f"Demo account: username {name!r}, password {kept!r} "
                f"(administrator; admin at /admin/; kept in {password_file})"
            )
            return
        if kept is not None:
            where = f"not the one kept in {password_file}"
        else:
            where = f"not kept in {password_file}" if password_file is not None else "not kept"
        self.stdout.write(
            f"Demo account: username {name!r}, its password left as it is ({where}). To set one: "
            f"{_this_python()} manage.py changepassword {name}"
        )


def _this_python() -> str:
    """The interpreter running this command, as the reader would type it: .venv/bin/python in a checkout, where a
    bare python is another one, without the project's packages."""
    executable = Path(sys.executable)
    try:
        return str(executable.relative_to(Path.cwd()))
    except ValueError:
        return str(executable)
