"""Account writes: the demo account, and counting failed log-ins to stop password guessing."""
from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.cache import cache

LOCKOUT_THRESHOLD = getattr(settings, "LOGIN_FAILURE_LIMIT", 5)
LOCKOUT_SECONDS = getattr(settings, "LOGIN_LOCKOUT_SECONDS", 300)


def _keys(*, username: str, ip: str) -> list[str]:
    return [f"login-failures:user:{username.lower()[:150]}", f"login-failures:ip:{ip}"]


def login_attempt_allowed(*, username: str, ip: str) -> bool:
    counts = cache.get_many(_keys(username=username, ip=ip))
    # An address gets more room than an account: several people may share it.
    user_key, ip_key = _keys(username=username, ip=ip)
    return counts.get(user_key, 0) < LOCKOUT_THRESHOLD and counts.get(ip_key, 0) < LOCKOUT_THRESHOLD * 4


def login_attempt_record_failure(*, username: str, ip: str) -> None:
    for key in _keys(username=username, ip=ip):
        if cache.add(key, 1, LOCKOUT_SECONDS):
            continue
        try:
            cache.incr(key)
        except ValueError:
            cache.set(key, 1, LOCKOUT_SECONDS)


def login_attempts_reset(*, username: str, ip: str) -> None:
    cache.delete(_keys(username=username, ip=ip)[0])


def demo_user_ensure(*, username: str, password: str):
    """The demo account for a local install: staff, so the admin works; its password is reset each time."""
    user, created = get_user_model().objects.get_or_create(username=username)
    user.is_staff = True
    user.is_superuser = True
    user.set_password(password)
    user.save()
    return user, created
