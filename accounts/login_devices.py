"""The signed cookie that marks a browser an account has logged in from, whose log-ins the lockout counts apart.

Guessing at an account from enough addresses locks it out everywhere (the lockout's account-wide limit). A browser
its owner has logged in from before shows this cookie, and its attempts are counted on their own instead
(``accounts.services.login_lockout``): nobody else's guesses lock the owner out of it. The cookie holds the account's
name and a random id, signed with SECRET_KEY: it cannot be made for an account, only earned by logging in to it.
"""
from __future__ import annotations

import secrets

from django.conf import settings
from django.core import signing
from django.http import HttpRequest, HttpResponse

from accounts.services import account_key

COOKIE = "login_device"
MAX_AGE_S = 180 * 24 * 3600
_SALT = "accounts.login_devices"


def login_device_of(request: HttpRequest, *, username: str) -> str | None:
    """The id of the known browser the request comes from, when its cookie was earned by logging in to ``username``."""
    value = request.COOKIES.get(COOKIE)
    if not value:
        return None
    try:
        device = signing.loads(value, salt=_SALT, max_age=MAX_AGE_S)
    except signing.BadSignature:  # tampered with, made under another SECRET_KEY, or expired
        return None
    if not isinstance(device, dict) or device.get("account") != account_key(username):
        return None
    return device.get("id")


def login_device_cookie_set(response: HttpResponse, *, username: str) -> None:
    """Mark the browser the response goes to as one ``username`` has logged in from (a new id each log-in)."""
    value = signing.dumps({"account": account_key(username), "id": secrets.token_urlsafe(16)}, salt=_SALT)
    response.set_cookie(COOKIE, value, max_age=MAX_AGE_S, secure=settings.SESSION_COOKIE_SECURE, httponly=True,
                        samesite="Lax")
