"""API token authentication: DRF's scheme and messages, with the token looked up by one hand-written statement."""
from __future__ import annotations

from django.utils.translation import gettext_lazy as _
from rest_framework import authentication, exceptions

from api import selectors


class TokenAuthentication(authentication.TokenAuthentication):
    """``Authorization: Token <key>``, exactly as DRF's, for the same tokens (rest_framework.authtoken)."""

    def authenticate_credentials(self, key):
        token = selectors.token_with_user_get(key=key)
        if token is None:
            raise exceptions.AuthenticationFailed(_("Invalid token."))
        if not token.user.is_active:
            raise exceptions.AuthenticationFailed(_("User inactive or deleted."))
        return token.user, token
