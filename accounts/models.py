"""API tokens, kept as digests: a key is shown once, when it is made, and never stored."""
from __future__ import annotations

import datetime as dt
import hashlib

from django.conf import settings
from django.db import models
from django.utils import timezone


def api_token_digest(key: str) -> str:
    """The stored form of a key. Keys are 160 random bits, so a fast hash is enough; a slow one would cost every request."""
    return hashlib.sha256(key.encode()).hexdigest()


class ApiToken(models.Model):
    """A user's one API token (``Authorization: Token <key>``)."""

    PREFIX_LENGTH = 8

    user = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_token")
    digest = models.CharField(max_length=64, unique=True, editable=False)
    # The key's first characters, so a person can tell which token a program holds.
    prefix = models.CharField(max_length=PREFIX_LENGTH, editable=False)
    created_at = models.DateTimeField(editable=False)

    class Meta:
        verbose_name = "API token"

    def __str__(self) -> str:
        return f"{self.prefix}… ({self.user})"

    @property
    def expires_at(self) -> dt.datetime | None:
        """When the token stops working (API_TOKEN_MAX_AGE_DAYS after it was made), or None if it never does."""
        days = settings.API_TOKEN_MAX_AGE_DAYS
        return self.created_at + dt.timedelta(days=days) if days else None

    @property
    def is_expired(self) -> bool:
        expires_at = self.expires_at
        return expires_at is not None and expires_at <= timezone.now()
