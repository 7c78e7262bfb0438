"""Celery tasks for accounts: mailing password reset links from a worker, away from the request that asked."""
import logging

from celery import shared_task
from celery.utils.time import get_exponential_backoff_interval
from django.db import InterfaceError, OperationalError

from accounts import services

logger = logging.getLogger(__name__)

# A mail server that cannot take a message now is asked again after about 5, 10, 20, 40, 80 and 160 seconds (each
# drawn at random up to that, so that a queue of messages does not come back at once), some five minutes in all: a
# restart or a short outage passes, and the links still arrive well within their hour. Every wait stays far below the
# broker's visibility timeout (an hour), past which Redis would hand the waiting message to a second worker.
RETRY_BACKOFF_S = 5
RETRY_BACKOFF_MAX_S = 160
MAX_RETRIES = 6


@shared_task(
    bind=True,
    name="accounts.tasks.password_reset_email_send",
    acks_late=True,
    # Each exchange with the mail server waits EMAIL_TIMEOUT at most, and one message takes a handful of them.
    soft_time_limit=60,
    time_limit=90,
    autoretry_for=(OperationalError, InterfaceError),
    retry_backoff=RETRY_BACKOFF_S,
    retry_backoff_max=RETRY_BACKOFF_MAX_S,
    max_retries=MAX_RETRIES,
    ignore_result=True,
)
def password_reset_email_send(self, email: str, user_ids: list[int] | None = None) -> int:
    try:
        return services.password_reset_email_send(
            email=email, user_ids=None if user_ids is None else [int(pk) for pk in user_ids]
        )
    except services.PasswordResetEmailDeferred as exc:
        tries = self.request.retries + 1
        if self.request.retries >= self.max_retries:
            logger.error("gave up on the password reset email to users %s after %d tries: %s", exc.user_ids, tries,
                         exc.__cause__)
            return 0
        countdown = get_exponential_backoff_interval(
            factor=RETRY_BACKOFF_S, retries=self.request.retries, maximum=RETRY_BACKOFF_MAX_S, full_jitter=True
        )
        logger.warning("password reset email to users %s deferred (try %d), again in %d s: %s", exc.user_ids, tries,
                       countdown, exc.__cause__)
        # The same accounts' links: none for an account given the address since the request.
        raise self.retry(kwargs={"email": email, "user_ids": exc.user_ids}, countdown=countdown, exc=exc)
