"""API token authentication: DRF's scheme and messages, for tokens stored as digests (accounts.ApiToken)."""
from __future__ import annotations

from django.utils import timezone
from django.utils.translation import gettext_lazy as _
from rest_framework import authentication, exceptions

from accounts import selectors, services


class TokenAuthentication(authentication.TokenAuthentication):
    """``Authorization: Token <key>``; a key is refused once its token is older than API_TOKEN_MAX_AGE_DAYS."""

    def authenticate_credentials(self, key):
        token = selectors.api_token_with_user_get(key=key)
        if token is None:
            raise exceptions.AuthenticationFailed(_("Invalid token."))
        if not token.user.is_active:
            raise exceptions.AuthenticationFailed(_("User inactive or deleted."))
        if token.is_expired:
            raise exceptions.AuthenticationFailed(
                f"This token expired on {timezone.localtime(token.expires_at):%Y-%m-%d %H:%M %Z}; "
                "make a new one on your Account page (/accounts/)."
            )
        services.api_token_mark_used(token=token)
        return token.user, token
