"""Notices to an address replaced or removed: sent, queued again, given up and forgotten."""
import datetime as dt
import logging

from django.db.models import Q
from django.utils import timezone

from accounts import selectors
from accounts.models import EmailChangeNotice
from accounts.services.mail_sending import MAIL_CLAIM_LEASE, message_send, site_message, task_publish

logger = logging.getLogger(__name__)


def email_change_notice_send(*, notice_id: int) -> bool:
    """Send notice ``notice_id`` (EmailChangeNotice) if it is still owed, and record it sent: should someone else
    have changed the address, its owner learns before a reset link goes elsewhere. Sent even when the account is gone
    since. False when it was sent already, given up, or the server refused it for good (logged; given up). Raises
    EmailDeferred when the mail server cannot take it now: it stays owed."""
    now = timezone.now()
    # Claimed first, while owed and unclaimed (MAIL_CLAIM_LEASE): of two copies of the task at once, one sends it.
    # The try is noted too: the sweep leaves a notice a worker is trying alone.
    if not EmailChangeNotice.objects.filter(
            Q(claimed_at__isnull=True) | Q(claimed_at__lt=now - MAIL_CLAIM_LEASE), pk=notice_id,
            sent_at__isnull=True, given_up_at__isnull=True).update(claimed_at=now, queued_at=now):
        return False
    mine = EmailChangeNotice.objects.filter(pk=notice_id, claimed_at=now)
    try:
        notice = EmailChangeNotice.objects.get(pk=notice_id)
        message = site_message(template="email_change_notice", recipient=notice.address, context={
            "username": notice.username,
            "replaced": notice.kind == EmailChangeNotice.REPLACED,
            "by_staff": notice.by_staff,
        })
        user_ids = [notice.user_id] if notice.user_id is not None else []
        sent = message_send(message=message, what="email change notice", user_ids=user_ids)
    except BaseException:
        mine.update(claimed_at=None)  # owed still: for this task's retry, or the sweep
        raise
    mine.update(claimed_at=None, **{"sent_at" if sent else "given_up_at": timezone.now()})
    # Kept for a deleted account only while owed: done with, it would be the last of its addresses here.
    email_change_notices_finished().filter(pk=notice_id, user__isnull=True).delete()
    return sent


# A notice no worker has tried for this long lost its task (a broker down when it was queued, a worker lost, retries
# spent on a mail server down): the sweep queues it again. Far above the longest gap between a task's tries.
EMAIL_CHANGE_NOTICE_REQUEUE_AFTER = dt.timedelta(minutes=10)
# Past this, the address has likely changed hands or the change is old news: the notice is given up, with an error.
EMAIL_CHANGE_NOTICE_GIVE_UP_AFTER = dt.timedelta(days=1)


def email_change_notices_requeue() -> tuple[int, int]:
    """Queue again every notice still owed that no worker has tried for EMAIL_CHANGE_NOTICE_REQUEUE_AFTER, and give
    up (with an error in the log) on those owed for EMAIL_CHANGE_NOTICE_GIVE_UP_AFTER; returns (queued, given up)."""
    from accounts.tasks import email_change_notice_send as notice_task

    now = timezone.now()
    stale = selectors.email_change_notice_queryset_owed().filter(queued_at__lt=now - EMAIL_CHANGE_NOTICE_REQUEUE_AFTER)
    given_up = 0
    for notice in stale.filter(created_at__lt=now - EMAIL_CHANGE_NOTICE_GIVE_UP_AFTER).order_by("pk"):
        if EmailChangeNotice.objects.filter(pk=notice.pk, sent_at__isnull=True).update(given_up_at=now):
            given_up += 1
            logger.error("gave up on the notice to the address user %s replaced or removed a day ago, unsent",
                         notice.user_id)
    queued = 0
    for notice_id in stale.filter(created_at__gte=now - EMAIL_CHANGE_NOTICE_GIVE_UP_AFTER).values_list("pk",
                                                                                                         flat=True):
        # Claimed first, so that two sweeps at once queue it once.
        if EmailChangeNotice.objects.filter(pk=notice_id, queued_at__lt=now - EMAIL_CHANGE_NOTICE_REQUEUE_AFTER).update(
                queued_at=now) and task_publish(task=notice_task, kwargs={"notice_id": notice_id},
                                                 what="an email change notice again"):
            queued += 1
    return queued, given_up


def email_change_notices_finished():
    return EmailChangeNotice.objects.exclude(sent_at__isnull=True, given_up_at__isnull=True)


def email_change_notices_forget() -> int:
    """Delete the notices of deleted accounts that are sent or given up; returns how many.

    A deleted account's notice is kept only while still owed: its old address's owner should learn of a change made
    just before the account went. Deleting an account (users_delete) and sending a notice delete such notices at
    once; this catches those that a deletion outside them (a shell) or a race between the two left behind.
    """
    deleted, _ = email_change_notices_finished().filter(user__isnull=True).delete()
    return deleted
