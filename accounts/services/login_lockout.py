"""Log-in failures counted per account and client address, or per known browser, and the lockout they set off."""
import contextlib
import ipaddress
import logging

from django.conf import settings
from django.core.cache import cache

logger = logging.getLogger(__name__)


LOCKOUT_THRESHOLD = getattr(settings, "LOGIN_FAILURE_LIMIT", 5)
LOCKOUT_SECONDS = getattr(settings, "LOGIN_LOCKOUT_SECONDS", 300)


# Failures allowed per (account, address) pair, per address (several people may share one), and per account
# from everywhere together. The pair's limit is the strict one: an attacker guessing at an account locks out only
# themselves, and the account's owner, elsewhere, is locked out only by guessing on a scale one address cannot do.
# A browser the account has logged in from (accounts.login_devices) is counted on its own instead, at the pair's
# limit: guessing from everywhere else together cannot lock the owner out of it.
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


def account_key(username: str) -> str:
    """The account counted: its name as typed, in any case (no two accounts' names differ only in case)."""
    return username.lower()[:150]


def _limits(*, username: str, ip: str, device: str | None = None) -> dict[str, int]:
    if device is not None:
        return {f"login-failures:device:{device}": LOCKOUT_THRESHOLD}
    account, ip = account_key(username), address_key(ip)
    return {
        f"login-failures:pair:{account}:{ip}": LOCKOUT_THRESHOLD,
        f"login-failures:ip:{ip}": LOCKOUT_THRESHOLD * ADDRESS_FACTOR,
        f"login-failures:user:{account}": LOCKOUT_THRESHOLD * ACCOUNT_FACTOR,
    }


class LockoutUnavailable(Exception):
    """The cache that counts failed log-ins cannot be reached: no password is checked until it can.

    Unlike the mail and upload throttles, which let requests through meanwhile, this one holds: checked uncounted,
    passwords could be guessed without limit for as long as the cache is down (or full).
    """


@contextlib.contextmanager
def _lockout_cache():
    try:
        yield
    except Exception as exc:  # noqa: BLE001 - any cache error: nothing can be counted
        logger.warning("log-in lockout unavailable: the cache cannot be reached; no password is checked meanwhile",
                       exc_info=True)
        raise LockoutUnavailable() from exc


def login_attempt_allowed(*, username: str, ip: str, device: str | None = None) -> bool:
    """Whether a password may be checked now; counts nothing (see login_attempt_start). Raises LockoutUnavailable
    while the cache cannot be reached.

    ``device``: the known browser the attempt comes from (accounts.login_devices), counted on its own.
    """
    limits = _limits(username=username, ip=ip, device=device)
    with _lockout_cache():
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


def login_attempt_start(*, username: str, ip: str, device: str | None = None) -> bool:
    """Count a password check as a failure before it is made; False (do not check it) when over a limit.

    Counted first, atomically: guesses sent at once would otherwise all pass a
    look at the counts before any of them was counted. A check that succeeds
    takes its count back with login_attempt_succeeded. Raises LockoutUnavailable while the cache cannot be reached.
    """
    limits = _limits(username=username, ip=ip, device=device)
    with _lockout_cache():
        counts = {key: _count_up(key) for key in limits}
        if all(counts[key] <= limit for key, limit in limits.items()):
            return True
        # Refused unchecked, it costs nothing: else one address, refused for the pair long since, would go on
        # counting against the account until its owner is locked out everywhere.
        _count_down(list(limits))
    return False


def login_attempt_succeeded(*, username: str, ip: str, log_in: bool, device: str | None = None) -> None:
    """Take back the count of a password check that succeeded; a log-in also clears the pair's (or the browser's)
    failures.

    Only those: a success here must not wipe out guesses made at the account from elsewhere. A cache lost
    meanwhile leaves the count (it expires): the password was right, and its owner gets in.
    """
    keys = list(_limits(username=username, ip=ip, device=device))
    with contextlib.suppress(LockoutUnavailable), _lockout_cache():
        if log_in:
            cache.delete(keys.pop(0))
        _count_down(keys)


def _count_down(keys: list[str]) -> None:
    for key in keys:
        try:
            cache.decr(key)
        except ValueError:
            pass  # expired meanwhile


def login_failures_forget(*, username: str, ip: str) -> None:
    """Clear the failed log-ins counted at one account from one address, as a log-in there would.

    For a password just reset by email: its owner, having guessed at the old one, logs in with the new one at once.
    The address's and the account's counts stay, as for a log-in: others' guesses are not wiped out. A cache that
    cannot be reached leaves them to expire: the password is set all the same.
    """
    with contextlib.suppress(LockoutUnavailable), _lockout_cache():
        cache.delete(next(iter(_limits(username=username, ip=ip))))
