"""The authentication backend that enforces the log-in lockout on every log-in form, the admin's included."""
from __future__ import annotations

from django.contrib.auth import get_user_model
from django.contrib.auth.backends import ModelBackend
from django.core.exceptions import PermissionDenied
from rest_framework.throttling import BaseThrottle

from accounts.services import login_attempt_start, login_attempt_succeeded


def client_address(request) -> str:
    """The client's address: REMOTE_ADDR, or the one NUM_PROXIES trusted proxies put in X-Forwarded-For."""
    return BaseThrottle().get_ident(request) or ""


class LockoutModelBackend(ModelBackend):
    """Django's username and password check, refused while the account or the address is locked out.

    In the backend rather than a view, so that no log-in form (ours, the admin's,
    any added later) is a way around the lockout.
    """

    def authenticate(self, request, username=None, password=None, **kwargs):
        if request is None:
            return super().authenticate(request, username=username, password=password, **kwargs)
        username = (username if username is not None else kwargs.get(get_user_model().USERNAME_FIELD)) or ""
        address = client_address(request)
        if not login_attempt_start(username=username, ip=address):
            raise PermissionDenied("too many failed log-in attempts")  # ends authenticate() for every backend
        user = super().authenticate(request, username=username, password=password, **kwargs)
        if user is not None:
            login_attempt_succeeded(username=username, ip=address, log_in=True)
        return user
