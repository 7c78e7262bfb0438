"""API tokens, kept as digests (a key is shown once, when it is made, and never stored); email address confirmation."""
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
    """One of a user's API tokens (``Authorization: Token <key>``), named for the program that holds it."""

    PREFIX_LENGTH = 8
    NAME_MAX_LENGTH = 100
    # Enough for every program a person runs; a bound on what one account can pile up.
    MAX_PER_USER = 20

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_tokens")
    name = models.CharField(max_length=NAME_MAX_LENGTH)
    digest = models.CharField(max_length=64, unique=True, editable=False)
    # The key's first characters, so a person can tell which token a program holds.
    prefix = models.CharField(max_length=PREFIX_LENGTH, editable=False)
    created_at = models.DateTimeField(editable=False)
    # Recorded at most once an hour (LAST_USED_PRECISION): a write per request would cost every API call.
    last_used_at = models.DateTimeField(null=True, blank=True, editable=False)
    # For a program that only reads (a dashboard, a backup): a leaked key then cannot upload, change or start anything.
    read_only = models.BooleanField(
        default=False,
        db_default=False,
        editable=False,
        help_text="Reads only (GET, HEAD, OPTIONS); every other request is refused.",
    )

    LAST_USED_PRECISION = dt.timedelta(hours=1)

    class Meta:
        verbose_name = "API token"
        constraints = [models.UniqueConstraint(fields=["user", "name"], name="api_token_name_unique_per_user")]

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"

    @property
    def expires_at(self) -> dt.datetime | None:
        """When the token stops working (API_TOKEN_MAX_AGE_DAYS after it was made), or None if it never does."""
        days = settings.API_TOKEN_MAX_AGE_DAYS
        return self.created_at + dt.timedelta(days=days) if days else None

    @property
    def is_expired(self) -> bool:
        expires_at = self.expires_at
        return expires_at is not None and expires_at <= timezone.now()


class EmailAddressState(models.Model):
    """Where an account's email address stands: when it was last set, and which address its owner confirmed.

    The address itself stays on the user. It counts as confirmed only while it is the very address confirmed
    (``confirmed_email``), so one changed other than through accounts.services.user_email_set (a shell) is
    unconfirmed without anyone having to remember to say so.
    """

    user = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, primary_key=True,
                                related_name="email_state")
    # A confirmation link made before this no longer works: it was for an address set before the current one.
    # None: not recorded (an address set before this was, or in a shell); links made meanwhile cover that.
    set_at = models.DateTimeField(null=True, blank=True)
    confirmed_email = models.EmailField(max_length=254, blank=True, default="")
    confirmed_at = models.DateTimeField(null=True, blank=True)
    # When its owner asked for a confirmation link that no message has carried yet (the first such request): the
    # accounts that asked first are listed first.
    link_requested_at = models.DateTimeField(null=True, blank=True)
    # When its owner last asked for it: a link is given up a day after this, so a press always gets its full day.
    # None with a link owed: asked for once, by a version that did not record this.
    link_last_requested_at = models.DateTimeField(null=True, blank=True)
    # When a sender took the owed link to mail it: no other sender mails it meanwhile, until the claim is given back
    # (the mail server could not take it now) or runs out (its worker was lost; accounts.services.MAIL_CLAIM_LEASE).
    link_claimed_at = models.DateTimeField(null=True, blank=True)
    # When the mail server refused for good a message carrying this address's link (no such mailbox: most often a
    # typo), so that the Account page says so rather than "waiting" forever; cleared once a message to it is taken,
    # or the address changes.
    link_refused_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        verbose_name = "email address state"
        # For the sweep, every minute: the few rows owing a link, not every account's.
        indexes = [models.Index(fields=["link_requested_at"], condition=models.Q(link_requested_at__isnull=False),
                                name="email_address_state_link_owed")]

    def __str__(self) -> str:
        return f"{self.confirmed_email or 'nothing'} confirmed"


class EmailChangeNotice(models.Model):
    """A notice owed to an account's confirmed address that was replaced or removed: kept until a worker sends it
    (or gives up, a day on), so that neither a broker outage nor a mail server down past the retries loses it."""

    REPLACED, REMOVED = "replaced", "removed"

    # Null once the account is deleted: the notice goes all the same, and is deleted once sent or given up (the
    # account's address must not outlive it for longer than the notice owed to it).
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, related_name="+")
    username = models.CharField(max_length=150)
    address = models.EmailField(max_length=254)
    kind = models.CharField(max_length=8, choices=[(REPLACED, "replaced"), (REMOVED, "removed")])
    by_staff = models.BooleanField(default=False)
    created_at = models.DateTimeField()
    # When it was last handed to a worker, or a worker's try began: the sweep leaves it alone for a while after.
    queued_at = models.DateTimeField()
    # When a worker took it to send it: no other sends it meanwhile, as for EmailAddressState.link_claimed_at.
    claimed_at = models.DateTimeField(null=True, blank=True)
    sent_at = models.DateTimeField(null=True, blank=True)
    given_up_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = [models.Index(fields=["queued_at"], condition=models.Q(sent_at__isnull=True,
                                                                          given_up_at__isnull=True),
                                name="email_change_notice_unsent")]

    def __str__(self) -> str:
        return f"{self.kind} notice to {self.address}"
