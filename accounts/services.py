"""Account writes: the demo account, API tokens, deleting an account, and counting failed log-ins."""
import ipaddress
import logging
import secrets

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.cache import cache
from django.db import DatabaseError, transaction
from django.db.models import Q
from django.utils import timezone

from accounts.models import ApiToken, api_token_digest

logger = logging.getLogger(__name__)

LOCKOUT_THRESHOLD = getattr(settings, "LOGIN_FAILURE_LIMIT", 5)
LOCKOUT_SECONDS = getattr(settings, "LOGIN_LOCKOUT_SECONDS", 300)


# Failures allowed per (account, address) pair, per address (several people may share one), and per account
# from everywhere together. The pair's limit is the strict one: an attacker guessing at an account locks out only
# themselves, and the account's owner, elsewhere, is locked out only by guessing on a scale one address cannot do.
ADDRESS_FACTOR = 4
ACCOUNT_FACTOR = 10


def address_key(ip: str) -> str:
    """The address counted: an IPv6 client's whole /64, which one client commonly holds (and can pick from)."""
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return ip
    if address.version == 4:
        return str(address)
    if address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(ipaddress.ip_network(f"{address}/64", strict=False))


def _limits(*, username: str, ip: str) -> dict[str, int]:
    account, ip = username.lower()[:150], address_key(ip)
    return {
        f"login-failures:pair:{account}:{ip}": LOCKOUT_THRESHOLD,
        f"login-failures:ip:{ip}": LOCKOUT_THRESHOLD * ADDRESS_FACTOR,
        f"login-failures:user:{account}": LOCKOUT_THRESHOLD * ACCOUNT_FACTOR,
    }


def login_attempt_allowed(*, username: str, ip: str) -> bool:
    """Whether a password may be checked now; counts nothing (see login_attempt_start)."""
    limits = _limits(username=username, ip=ip)
    counts = cache.get_many(list(limits))
    return all(counts.get(key, 0) < limit for key, limit in limits.items())


def _count_up(key: str) -> int:
    if cache.add(key, 1, LOCKOUT_SECONDS):
        return 1
    try:
        return cache.incr(key)
    except ValueError:  # expired between the two calls
        cache.set(key, 1, LOCKOUT_SECONDS)
        return 1


def login_attempt_start(*, username: str, ip: str) -> bool:
    """Count a password check as a failure before it is made; False (do not check it) when over a limit.

    Counted first, atomically: guesses sent at once would otherwise all pass a
    look at the counts before any of them was counted. A check that succeeds
    takes its count back with login_attempt_succeeded.
    """
    limits = _limits(username=username, ip=ip)
    counts = {key: _count_up(key) for key in limits}
    if all(counts[key] <= limit for key, limit in limits.items()):
        return True
    # Refused unchecked, it costs nothing: else one address, refused for the pair long since, would go on counting
    # against the account until its owner is locked out everywhere.
    _count_down(list(limits))
    return False


def login_attempt_succeeded(*, username: str, ip: str, log_in: bool) -> None:
    """Take back the count of a password check that succeeded; a log-in also clears the pair's failures.

    Only the pair's: a success here must not wipe out guesses made at the account from elsewhere.
    """
    keys = list(_limits(username=username, ip=ip))
    if log_in:
        cache.delete(keys.pop(0))
    _count_down(keys)


def _count_down(keys: list[str]) -> None:
    for key in keys:
        try:
            cache.decr(key)
        except ValueError:
            pass  # expired meanwhile


class DemoUserError(ValueError):
    """The name belongs to an account that is not a demo account."""


def demo_user_ensure(*, username: str, password: str):
    """The demo account for a local install: staff, so the admin works; its password is reset each time.

    Raises DemoUserError for an existing account that is not staff: a mistyped name must not make someone's
    account an administrator with a password printed on the screen.
    """
    user, created = get_user_model().objects.get_or_create(username=username)
    if not created and not (user.is_staff and user.is_superuser):
        raise DemoUserError(f"{username!r} is someone's account, not a demo account; choose another --username.")
    user.is_staff = True
    user.is_superuser = True
    # Set afresh only when it differs: a new hash (a new salt) would end every session the account has open, and
    # `make run` ensures the account at every start.
    if created or not user.check_password(password):
        user.set_password(password)
    user.save()
    return user, created


class AccountDeleteError(Exception):
    """This account cannot be deleted from its own page."""


class ApiTokenError(ValueError):
    """A token cannot be made: its name is too long or taken, or the user has MAX_PER_USER already."""


def api_token_create(*, user, name: str = "", read_only: bool = False) -> tuple[ApiToken, str]:
    """A new API token for ``user`` and its key; the user's other tokens go on working.

    A ``read_only`` token is refused every request but GET, HEAD and OPTIONS.

    Only the key's digest is stored: the caller shows the key once, and nobody,
    staff included, can read it back. Without a name, the token is named after
    its key's first characters. Raises ApiTokenError for a name too long or
    taken, or when the user has MAX_PER_USER tokens already.
    """
    key = secrets.token_hex(20)
    prefix = key[: ApiToken.PREFIX_LENGTH]
    name = " ".join(name.split()) or f"Token {prefix}"
    if len(name) > ApiToken.NAME_MAX_LENGTH:
        raise ApiTokenError(f"A token's name has at most {ApiToken.NAME_MAX_LENGTH} characters.")
    with transaction.atomic():
        # Two requests at once (a double click) take turns here, so the count and the name are checked in turn.
        get_user_model().objects.select_for_update().filter(pk=user.pk).first()
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
    """Delete one of ``user``'s API tokens; True when it was theirs and there."""
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


def account_delete(*, user) -> None:
    """Delete the account with its uploads, predictions and token; the image files go once that commits.

    A superuser cannot: the site would risk losing its last administrator, so
    another one must do it in the admin.
    """
    if user.is_superuser:
        raise AccountDeleteError("An administrator's account is deleted by another administrator, in the admin.")
    user.delete()
