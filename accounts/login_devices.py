"""The signed cookie that marks a browser an account has logged in from, whose log-ins the lockout counts apart.

Guessing at an account from enough addresses locks it out everywhere (the lockout's account-wide limit). A browser
its owner has logged in from before shows this cookie, and its attempts are counted on their own instead
(``accounts.services.login_lockout``): nobody else's guesses lock the owner out of it. The cookie holds, for each of the
last accounts logged in to from the browser, its name, a random id, the moment and a digest of its password, signed
with SECRET_KEY: it cannot be made for an account, only earned by logging in to it, and a new password voids it.
"""
from __future__ import annotations

import secrets
import time

from django.conf import settings
from django.core import signing
from django.http import HttpRequest, HttpResponse
from django.utils.crypto import constant_time_compare

from accounts.services import account_key

COOKIE = "login_device"
MAX_AGE_S = 180 * 24 * 3600
# Accounts one browser is known to at once (a family's shared computer): the ones logged in to last.
ACCOUNTS_KEPT = 5
_SALT = "accounts.login_devices"


def _known(request: HttpRequest) -> list[list]:
    """The [account, id, logged in at, password tie] entries of the request's cookie that still count, oldest first."""
    value = request.COOKIES.get(COOKIE)
    if not value:
        return []
    try:
        known = signing.loads(value, salt=_SALT, max_age=MAX_AGE_S)
    except signing.BadSignature:  # tampered with, made under another SECRET_KEY, or expired
        return []
    if not isinstance(known, dict) or not isinstance(known.get("known"), list):
        return []
    since = time.time() - MAX_AGE_S
    return [entry for entry in known["known"] if isinstance(entry, list) and len(entry) == 4 and entry[2] >= since]


def _password_tie(user) -> str:
    # Django's own digest of the account's password (what a session checks): a new password, by its owner or a reset,
    # unties every browser known until then, which whoever knew the old one might hold.
    return user.get_session_auth_hash()[:24]


def login_device_of(request: HttpRequest, *, user) -> str | None:
    """The id of the known browser the request comes from, when its cookie was earned by logging in to ``user``
    (None: no such account) with the password it has now."""
    if user is None:
        return None
    account = account_key(user.get_username())
    for known, device, _, tied in _known(request):
        if known == account:
            return device if constant_time_compare(tied, _password_tie(user)) else None
    return None


def login_device_cookie_set(response: HttpResponse, *, request: HttpRequest, user) -> None:
    """Mark the browser ``request`` came from as one ``user`` has logged in from (a new id each log-in).

    The accounts it was known to before stay known, up to ACCOUNTS_KEPT, each for MAX_AGE_S from its own log-in and
    until its password changes.
    """
    account = account_key(user.get_username())
    known = [entry for entry in _known(request) if entry[0] != account][-(ACCOUNTS_KEPT - 1):]
    known.append([account, secrets.token_urlsafe(16), int(time.time()), _password_tie(user)])
    value = signing.dumps({"known": known}, salt=_SALT)
    response.set_cookie(COOKIE, value, max_age=MAX_AGE_S, secure=settings.SESSION_COOKIE_SECURE, httponly=True,
                        samesite="Lax")
