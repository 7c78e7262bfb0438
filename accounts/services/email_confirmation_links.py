"""Confirmation links owed mailed, one message an address, and the sweep that sends those left owed."""
import datetime as dt
import logging
import smtplib
from urllib.parse import urlsplit

from django.conf import settings
from django.db.models import Q
from django.urls import reverse
from django.utils import timezone

from accounts import selectors
from accounts.mail import duration_words
from accounts.models import EmailAddressState
from accounts.services.email_addresses import (
    EmailConfirmationThrottled,
    allowances_wait,
    email_confirmation_address_limits,
    email_confirmation_token_make,
)
from accounts.services.mail_allowances import allowances_give_back, allowances_take
from accounts.services.mail_sending import MAIL_CLAIM_LEASE, message_send, site_message, task_publish

logger = logging.getLogger(__name__)


# The most accounts one confirmation message lists, as for reset messages; the rest stay owed, for the next one.
EMAIL_CONFIRMATION_ACCOUNTS_PER_MESSAGE = 10


# Past this since it was last asked for, a link owed is given up, with an error: the mail server has refused it for a
# day.
EMAIL_CONFIRMATION_GIVE_UP_AFTER = dt.timedelta(days=1)


def _link_owed(*, now: dt.datetime) -> Q:
    """The EmailAddressState rows whose link is owed and claimed by no sender (or by one lost)."""
    return Q(link_requested_at__isnull=False) & (
        Q(link_claimed_at__isnull=True) | Q(link_claimed_at__lt=now - MAIL_CLAIM_LEASE))


def email_confirmation_send(*, email: str) -> int:
    """Mail ``email`` one message with a link for every account waiting on it (its address, not confirmed), from
    SITE_URL, if a link is owed (email_confirmation_request); returns how many links it carried.

    The accounts owed a link come first, the one that asked first first, then the others waiting,
    EMAIL_CONFIRMATION_ACCOUNTS_PER_MESSAGE at most: links still owed beyond those go in another message. The links
    owed are claimed first (MAIL_CLAIM_LEASE), so that two sends for one address (a message delivered twice, the
    sweep's and the request's) mail each once. Each message spends the address's allowance; with it spent, nothing
    is sent, and the sweep (email_confirmations_sweep) sends the links once it refills. Raises EmailDeferred when
    the mail server cannot take it now: the links stay owed and the allowance is given back. A permanent refusal is
    logged, and the links are owed no more; one of the address itself (no such mailbox) is recorded on each account
    listed (EmailAddressState.link_refused_at), for its Account page to say, until a message to it is taken.
    """
    from accounts.tasks import email_confirmation_send as send_task

    now = timezone.now()
    waiting = selectors.email_confirmation_waiting_list(email=email)
    owed = [user.pk for user in waiting if user.link_requested_at is not None
            and (user.link_claimed_at is None or user.link_claimed_at < now - MAIL_CLAIM_LEASE)]
    if not owed:
        return 0
    limits = email_confirmation_address_limits(email=email)
    try:
        allowances_take(limits=limits, refused=EmailConfirmationThrottled, what="email confirmation")
    except EmailConfirmationThrottled:
        return 0
    # Each row claimed only while still owed and unclaimed: of two senders at once, one gets it.
    claimed = {pk for pk in owed[:EMAIL_CONFIRMATION_ACCOUNTS_PER_MESSAGE]
               if EmailAddressState.objects.filter(_link_owed(now=now), user_id=pk, user__email=email).update(
                   link_claimed_at=now)}
    if not claimed:
        allowances_give_back(limits=limits, what="email confirmation")
        return 0
    mine = EmailAddressState.objects.filter(user_id__in=claimed, link_claimed_at=now)
    # Those claimed, then those waiting without having asked; not those another sender is mailing.
    listed = [user for user in waiting if user.pk in claimed or user.link_requested_at is None][
        :EMAIL_CONFIRMATION_ACCOUNTS_PER_MESSAGE]
    site = urlsplit(settings.SITE_URL)
    try:
        accounts = [{"username": user.get_username(), "confirm_url": f"{site.scheme}://{site.netloc}" + reverse(
            "email_confirm", kwargs={"token": email_confirmation_token_make(user=user)})} for user in listed]
        message = site_message(template="email_confirmation", recipient=email, context={
            "accounts": accounts,
            "unlisted": len(waiting) - len(listed),
            "link_valid_for": duration_words(seconds=settings.EMAIL_CONFIRMATION_TIMEOUT),
        })
        refusals: list = []
        sent = message_send(message=message, what="email confirmation link", user_ids=[user.pk for user in listed],
                             refusals=refusals)
    except BaseException:
        # Owed still: for this task's retry, or the sweep.
        mine.update(link_claimed_at=None)
        allowances_give_back(limits=limits, what="email confirmation")
        raise
    # Owed no more, unless the address changed meanwhile (which cleared the claim).
    mine.update(link_requested_at=None, link_last_requested_at=None, link_claimed_at=None)
    # The address itself refused (no such mailbox), or taken after all: said on the Account page of every account
    # the message listed, while that is still its address. Not a refusal of the site's sender or password: that is
    # no fault of the address.
    recipient_refused = any(isinstance(exc, smtplib.SMTPRecipientsRefused) for exc in refusals)
    if sent or recipient_refused:
        EmailAddressState.objects.filter(user_id__in=[user.pk for user in listed], user__email=email).update(
            link_refused_at=None if sent else timezone.now())
    if len(owed) > len(claimed):
        task_publish(task=send_task, kwargs={"email": email}, what="the next email confirmation message")
    return len(listed) if sent else 0


def email_confirmations_sweep() -> int:
    """Queue a message (email_confirmation_send) for every address owed a link whose allowance has room, and give
    up (with an error in the log) on links not asked for again for EMAIL_CONFIRMATION_GIVE_UP_AFTER; returns how
    many were queued.

    Every minute (CELERY_BEAT_SCHEDULE): links wait here, not on the broker, for an address's allowance to refill,
    for a broker that was down when they were asked for, or for a worker lost while it mailed them. Each message
    expires when the next sweep is due, so that none pile up while no worker takes them.
    """
    from accounts.tasks import email_confirmation_send as send_task

    now = timezone.now()
    owed = selectors.email_address_state_queryset_owing_link().filter(_link_owed(now=now))
    stale = Q(link_last_requested_at__lt=now - EMAIL_CONFIRMATION_GIVE_UP_AFTER) | Q(
        link_last_requested_at__isnull=True, link_requested_at__lt=now - EMAIL_CONFIRMATION_GIVE_UP_AFTER)
    for user_id in owed.filter(stale).values_list("user_id", flat=True):
        # Not if asked for again meanwhile.
        if EmailAddressState.objects.filter(_link_owed(now=now), stale, user_id=user_id).update(
                link_requested_at=None, link_last_requested_at=None):
            logger.error("gave up on the email confirmation link owed to user %s for a day, unsent", user_id)
    queued = 0
    for email in owed.values_list("user__email", flat=True).distinct().order_by("user__email"):
        if not allowances_wait(limits=email_confirmation_address_limits(email=email)) and task_publish(
                task=send_task, kwargs={"email": email}, what="an email confirmation message",
                expires=selectors.email_confirmation_sweep_interval()):
            queued += 1
    return queued
