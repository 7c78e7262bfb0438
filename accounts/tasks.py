"""Celery tasks for accounts: mailing reset links, address confirmations and change notices from a worker, away from
the request that asked."""
import logging

from celery import shared_task
from celery.exceptions import SoftTimeLimitExceeded
from celery.utils.time import get_exponential_backoff_interval
from django.db import InterfaceError, OperationalError

from accounts import services

logger = logging.getLogger(__name__)

# A mail server that cannot take a message now is asked again after about 5, 10, 20, 40, 80 and 160 seconds (each
# drawn at random up to that, so that a queue of messages does not come back at once), some five minutes in all: a
# restart or a short outage passes, and the links still arrive well within their hour. A retry waits in a worker,
# unacknowledged: one lost meanwhile leaves its message to Redis, which hands it out again only after the visibility
# timeout (CELERY_VISIBILITY_TIMEOUT, an hour). So no task waits longer than this (a link waiting for its address's
# allowance waits in the database), and what is owed (confirmation links, change notices) is kept in the database
# and swept, not left to the message: a reset link lost so is asked for again by whoever waits for it.
RETRY_BACKOFF_S = 5
RETRY_BACKOFF_MAX_S = 160
MAX_RETRIES = 6

MAIL_TASK_OPTIONS = {
    "bind": True,
    "acks_late": True,
    # Each exchange with the mail server waits EMAIL_TIMEOUT at most, and one message takes a handful of them. A
    # server that stalls past the soft limit is tried again later, as one that cannot take the message now; so is a
    # database that stops answering a query for as long (a locked table, a host gone without closing the
    # connection): a reset link has nothing else to send it again, and every message here is safe to send twice.
    # The retry's first query finds the connection the limit cut short unusable and opens another.
    "soft_time_limit": 60,
    "time_limit": 90,
    "autoretry_for": (OperationalError, InterfaceError, SoftTimeLimitExceeded),
    "retry_backoff": RETRY_BACKOFF_S,
    "retry_backoff_max": RETRY_BACKOFF_MAX_S,
    "max_retries": MAX_RETRIES,
    "ignore_result": True,
}


def _retry_or_give_up(task, exc: services.EmailDeferred, *, what: str, kwargs: dict) -> int:
    """Send the message again later (with ``kwargs``), or log giving up once MAX_RETRIES are spent; returns 0 then."""
    tries = task.request.retries + 1
    if task.request.retries >= task.max_retries:
        logger.error("gave up on the %s to users %s after %d tries: %s", what, exc.user_ids, tries, exc)
        return 0
    countdown = get_exponential_backoff_interval(
        factor=RETRY_BACKOFF_S, retries=task.request.retries, maximum=RETRY_BACKOFF_MAX_S, full_jitter=True
    )
    logger.warning("%s to users %s deferred (try %d), again in %d s: %s", what, exc.user_ids, tries, countdown, exc)
    raise task.retry(kwargs=kwargs, countdown=countdown, exc=exc)


@shared_task(name="accounts.tasks.password_reset_email_send", **MAIL_TASK_OPTIONS)
def password_reset_email_send(self, email: str, user_ids: list[int] | None = None) -> int:
    try:
        return services.password_reset_email_send(
            email=email, user_ids=None if user_ids is None else [int(pk) for pk in user_ids]
        )
    except services.PasswordResetEmailDeferred as exc:
        # The same accounts' links: none for an account given the address since the request.
        return _retry_or_give_up(self, exc, what="password reset email", kwargs={"email": email,
                                                                                 "user_ids": exc.user_ids})


@shared_task(name="accounts.tasks.email_confirmation_send", **MAIL_TASK_OPTIONS)
def email_confirmation_send(self, email: str) -> int:
    try:
        return services.email_confirmation_send(email=email)
    except services.EmailDeferred as exc:
        return _retry_or_give_up(self, exc, what="email confirmation link", kwargs={"email": email})


@shared_task(name="accounts.tasks.email_change_notice_send", **MAIL_TASK_OPTIONS)
def email_change_notice_send(self, notice_id: int) -> int:
    try:
        return int(services.email_change_notice_send(notice_id=int(notice_id)))
    except services.EmailDeferred as exc:
        # Given up here, the notice stays owed: email_change_notices_sweep queues it again.
        return _retry_or_give_up(self, exc, what="email change notice", kwargs={"notice_id": notice_id})


# The sweeps end before the next is due (CELERY_BEAT_SCHEDULE), so that sweeps held up (a broker or a cache that stops
# answering) never add up to take every process of the worker; what they leave owed, the next one takes.
@shared_task(name="accounts.tasks.email_confirmations_sweep", soft_time_limit=40, time_limit=50, ignore_result=True)
def email_confirmations_sweep() -> int:
    """Every minute (CELERY_BEAT_SCHEDULE): links owed whose address may be sent one now are queued."""
    return services.email_confirmations_sweep()


@shared_task(name="accounts.tasks.sessions_expired_delete", soft_time_limit=600, time_limit=900, ignore_result=True)
def sessions_expired_delete() -> int:
    """Daily (CELERY_BEAT_SCHEDULE): the session table would otherwise keep a row for every log-in ever made."""
    return services.sessions_expired_delete()


@shared_task(name="accounts.tasks.email_change_notices_sweep", soft_time_limit=120, time_limit=150, ignore_result=True)
def email_change_notices_sweep() -> list[int]:
    """Every few minutes (CELERY_BEAT_SCHEDULE): notices still owed whose task was lost are queued again, and those
    of deleted accounts that are done with are deleted."""
    requeued = list(services.email_change_notices_requeue())
    services.email_change_notices_forget()
    return requeued
