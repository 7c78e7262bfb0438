"""API tokens: made, revoked, and their use recorded."""
import logging
import secrets

from django.db import DatabaseError, transaction
from django.db.models import Q
from django.utils import timezone

from accounts.models import ApiToken, api_token_digest
from accounts.services.users import user_lock

logger = logging.getLogger(__name__)


class ApiTokenError(ValueError):
    """A token cannot be made: its name is too long or taken, or the user has MAX_PER_USER already."""


def api_token_create(*, user, name: str = "", read_only: bool = False) -> tuple[ApiToken, str]:
    """A new API token for ``user`` and its key; the user's other tokens go on working.

    A ``read_only`` token is refused every request but GET, HEAD and OPTIONS.

    Only the key's digest is stored: the caller shows the key once, and nobody,
    staff included, can read it back. Without a name, the token is named after
    its key's first characters. Raises ApiTokenError for a name too long or
    taken, or when the user has MAX_PER_USER tokens already, and AccountGone when
    the account was deleted meanwhile.
    """
    key = secrets.token_hex(20)
    prefix = key[: ApiToken.PREFIX_LENGTH]
    name = " ".join(name.split()) or f"Token {prefix}"
    if len(name) > ApiToken.NAME_MAX_LENGTH:
        raise ApiTokenError(f"A token's name has at most {ApiToken.NAME_MAX_LENGTH} characters.")
    with transaction.atomic():
        # Two requests at once (a double click) take turns here, so the count and the name are checked in turn.
        user_lock(user=user)
        tokens = ApiToken.objects.filter(user=user)
        if tokens.count() >= ApiToken.MAX_PER_USER:
            raise ApiTokenError(f"You have {ApiToken.MAX_PER_USER} tokens already; revoke one you no longer use first.")
        if tokens.filter(name=name).exists():
            raise ApiTokenError(f"You have a token called “{name}” already; choose another name.")
        token = ApiToken.objects.create(
            user=user,
            name=name,
            digest=api_token_digest(key),
            prefix=prefix,
            created_at=timezone.now(),
            read_only=read_only,
        )
    return token, key


def api_token_revoke(*, user, token_id: int) -> bool:
    """Delete one of ``user``'s API tokens; True when it was theirs and there. Raises AccountGone for an account
    deleted meanwhile (its tokens went with it): else its tab would be told the token was revoked already."""
    with transaction.atomic():
        user_lock(user=user)
        deleted, _ = ApiToken.objects.filter(user=user, pk=token_id).delete()
    return bool(deleted)


def api_tokens_revoke_all(*, user) -> int:
    """Delete every API token of ``user`` (after a password change, when the account may have been someone else's)."""
    deleted, _ = ApiToken.objects.filter(user=user).delete()
    return deleted


def api_token_mark_used(*, token: ApiToken) -> None:
    """Record that ``token`` authenticated a request, unless that was recorded within the last LAST_USED_PRECISION."""
    now = timezone.now()
    if token.last_used_at is not None and now - token.last_used_at < ApiToken.LAST_USED_PRECISION:
        return
    try:
        # In a savepoint: the note is advisory, and a failed write must not fail, or poison, the request it rides on.
        with transaction.atomic():
            # Conditional, so concurrent requests with one token write once between them.
            ApiToken.objects.filter(pk=token.pk).filter(
                Q(last_used_at__isnull=True) | Q(last_used_at__lt=now - ApiToken.LAST_USED_PRECISION)
            ).update(last_used_at=now)
    except DatabaseError:
        logger.warning("could not record the use of API token %s", token.pk, exc_info=True)
        return
    token.last_used_at = now
