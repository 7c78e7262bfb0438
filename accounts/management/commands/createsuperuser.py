"""Django's createsuperuser, refusing a name another account has in another case as it refuses one already taken."""
from django.contrib.auth.management.commands import createsuperuser

from accounts.selectors import username_taken


class Command(createsuperuser.Command):
    def _validate_username(self, username, verbose_field_name, database):
        # Django compares names exactly; the database's index (accounts/0009) compares them, as stored (letter width
        # normalized), in any case, and would answer "Alice" or "ａｌｉｃｅ" beside "alice" with an IntegrityError's
        # traceback once every other question was answered.
        error = super()._validate_username(username, verbose_field_name, database)
        if error is None and username_taken(username=self.UserModel.normalize_username(username)):
            return f"Error: That {verbose_field_name} is already taken."
        return error
