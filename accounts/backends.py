"""The authentication backend that enforces the log-in lockout on every log-in form, the admin's included."""
from __future__ import annotations

import logging

from django.contrib.auth import get_user_model
from django.contrib.auth.backends import ModelBackend
from django.core.exceptions import PermissionDenied
from rest_framework.settings import api_settings
from rest_framework.throttling import BaseThrottle

from accounts.login_devices import login_device_of
from accounts.selectors import user_get_by_name
from accounts.services import LockoutUnavailable, login_attempt_start, login_attempt_succeeded

logger = logging.getLogger(__name__)


_proxy_warning = {"given": False}


def client_address(request) -> str:
    """The client's address: REMOTE_ADDR, or the one NUM_PROXIES trusted proxies put in X-Forwarded-For."""
    if not _proxy_warning["given"] and api_settings.NUM_PROXIES == 0 and "HTTP_X_FORWARDED_FOR" in request.META:
        # Behind a reverse proxy left uncounted, every client is the proxy: one client's wrong passwords lock out
        # everyone, and nothing else says why. Once a process: the log would otherwise repeat it for every log-in.
        _proxy_warning["given"] = True
        logger.warning(
            "A request came with X-Forwarded-For while NUM_PROXIES is 0: log-in lockouts and the sign-up and "
            "password reset throttles count every client as %s, the proxy's address, so one client's failures lock "
            "out everyone. Behind a reverse proxy that appends the client's address, set NUM_PROXIES to the number "
            "of such proxies (1 for one).",
            request.META.get("REMOTE_ADDR"),
        )
    return BaseThrottle().get_ident(request) or ""


class LockoutModelBackend(ModelBackend):
    """Django's username and password check, refused while the account or the address is locked out.

    In the backend rather than a view, so that no log-in form (ours, the admin's,
    any added later) is a way around the lockout.
    """

    def authenticate(self, request, username=None, password=None, **kwargs):
        username = (username if username is not None else kwargs.pop(get_user_model().USERNAME_FIELD, None)) or ""
        account = user_get_by_name(username=username)
        # Checked and counted under the account's name as stored ("Alice" for "alice", or for "alıce" on PostgreSQL):
        # every way of typing it meets the same counts.
        username = account.get_username() if account is not None else username
        if request is None:
            return super().authenticate(request, username=username, password=password, **kwargs)
        address, device = client_address(request), login_device_of(request, user=account)
        try:
            allowed = login_attempt_start(username=username, ip=address, device=device)
        except LockoutUnavailable:
            # Refused unchecked: the site's log-in page says why before it gets here (the admin's says no more).
            raise PermissionDenied("the log-in lockout is unavailable") from None
        if not allowed:
            raise PermissionDenied("too many failed log-in attempts")  # ends authenticate() for every backend
        user = super().authenticate(request, username=username, password=password, **kwargs)
        if user is not None:
            login_attempt_succeeded(username=username, ip=address, log_in=True, device=device)
        return user
