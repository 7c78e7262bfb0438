"""App configuration for accounts."""
from django.apps import AppConfig


def _login_record(sender, user, **kwargs) -> None:
    from accounts.services import user_login_record

    user_login_record(user=user)


class AccountsConfig(AppConfig):
    name = "accounts"

    def ready(self) -> None:
        from django.contrib.auth.signals import user_logged_in

        from accounts import checks  # noqa: F401 - registers the deploy check

        # In place of Django's update_last_login: see accounts.services.user_login_record. This app comes before
        # django.contrib.auth (for its createsuperuser), whose ready() then runs after this one and connects that
        # receiver under this dispatch_uid: holding the uid makes that a no-op. The disconnect covers the other order.
        user_logged_in.disconnect(dispatch_uid="update_last_login")
        user_logged_in.connect(_login_record, dispatch_uid="update_last_login")
