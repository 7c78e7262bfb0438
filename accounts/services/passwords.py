"""Passwords staff set for an account (in the admin, or with `manage.py changepassword`), with its API tokens."""
from django.db import transaction

from accounts.selectors import api_token_list_for_user
from accounts.services.api_tokens import api_tokens_revoke_all
from accounts.services.users import user_lock


def user_password_set(*, user, password: str | None, revoke_api_tokens: bool) -> list[str]:
    """Give ``user`` ``password`` (None: no password works, as the admin's "Disable password-based authentication"),
    and revoke its API tokens when asked; returns the names of those revoked. Raises AccountGone when the account was
    deleted meanwhile.

    Only the password is written, on the row locked: the caller read ``user`` before it asked for the password (a
    command prompts for it), and a save of the whole copy would undo what was changed meanwhile, or insert a deleted
    account back. ``user`` gets the new password's hash too, so that a session of the account's own can be kept.
    """
    with transaction.atomic():
        locked = user_lock(user=user)
        if password is None:
            locked.set_unusable_password()
        else:
            locked.set_password(password)
        locked.save(update_fields=["password"])
        user.password = locked.password
        if not revoke_api_tokens:
            return []
        # Read under the account's lock, which making or revoking a token takes too: these are the ones deleted.
        names = [token.name for token in api_token_list_for_user(user=locked)]
        api_tokens_revoke_all(user=locked)
    return names
