"""Sending the site's mail: a message tried once on its own connection, a task queued, a claim's lease."""
import contextlib
import datetime as dt
import logging
import smtplib
from urllib.parse import urlsplit

from celery.exceptions import SoftTimeLimitExceeded
from django.conf import settings
from django.core.mail import EmailMessage, get_connection
from django.template.loader import render_to_string

from accounts.mail import mail_error_is_transient, mail_error_words

logger = logging.getLogger(__name__)


class EmailDeferred(Exception):
    """The mail server could not take a message now and may later; ``user_ids`` are the accounts it is for."""

    def __init__(self, message: str, *, user_ids: list[int]) -> None:
        super().__init__(message)
        self.user_ids = user_ids


def message_send(*, message: EmailMessage, what: str, user_ids: list[int],
                  deferred: type[EmailDeferred] = EmailDeferred, refusals: list | None = None) -> bool:
    """Send ``message`` (the ``what`` for ``user_ids``); False when the server refused it for good (a 5xx answer: no
    such mailbox), which is logged, and the refusal added to ``refusals`` when given. Raises ``deferred`` when the
    server cannot take it now and may later, or stalled until the task's soft time limit (SoftTimeLimitExceeded).

    A server that stalled may have kept the message before it stopped answering, and then gets it again: every
    message here is safe to receive twice (a reset link works once, and none after the password changed; a
    confirmation link confirms once; a notice says the same again).
    """
    sent = False
    try:
        with get_connection() as connection:
            try:
                connection.send_messages([message])
            except SoftTimeLimitExceeded:
                _connection_abandon(connection)
                raise
            sent = True
    except Exception as exc:
        if sent:
            # The message went; only saying goodbye failed.
            logger.warning("the mail server failed after the %s was sent: %s", what, mail_error_words(exc))
            return True
        if not (isinstance(exc, SoftTimeLimitExceeded) or mail_error_is_transient(exc)):
            if isinstance(exc, smtplib.SMTPException):
                logger.error("the mail server refused the %s to users %s: %s", what, user_ids, mail_error_words(exc))
                if refusals is not None:
                    refusals.append(exc)
                return False
            raise
        raise deferred(
            f"the mail server could not take a {what} now: {mail_error_words(exc)}", user_ids=user_ids
        ) from exc
    return True


def _connection_abandon(connection) -> None:
    """Close a mail connection without saying goodbye: a server that stalled would keep the goodbye waiting for
    EMAIL_TIMEOUT, time the task no longer has before its hard time limit ends its process."""
    smtp = getattr(connection, "connection", None)
    if smtp is not None:
        with contextlib.suppress(OSError):
            smtp.close()
        connection.connection = None


def task_publish(*, task, kwargs: dict, what: str, expires: float | None = None) -> bool:
    try:
        task.apply_async(kwargs=kwargs, expires=expires)
    except Exception:  # noqa: BLE001 - any broker error: what it was for is owed in the database, and swept
        logger.exception("could not queue %s; a sweep queues it once the broker is back", what)
        return False
    return True


def site_message(*, template: str, context: dict, recipient: str) -> EmailMessage:
    site = urlsplit(settings.SITE_URL)
    context = {**context, "domain": site.netloc, "site_url": f"{site.scheme}://{site.netloc}"}
    # One line: a header cannot hold a line break.
    subject = "".join(render_to_string(f"registration/{template}_subject.txt", context).splitlines())
    body = render_to_string(f"registration/{template}_email.txt", context)
    return EmailMessage(subject, body, settings.DEFAULT_FROM_EMAIL, [recipient])


# How long a sender's claim on what it mails holds others off: far beyond one try (the task's 90 s time limit), so
# that only a sender lost with its worker (killed, its machine gone) loses it, and the sweep then sends it again.
MAIL_CLAIM_LEASE = dt.timedelta(minutes=3)
