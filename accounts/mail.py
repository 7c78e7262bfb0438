"""Helpers for the account mail and the pages about it: a link's lifetime in words, and which mail errors may pass."""
import math
import smtplib

from django.template.defaultfilters import pluralize


def duration_words(*, seconds: int) -> str:
    """A whole number of days, hours or minutes ("1 hour", "3 days"), else seconds, for the account pages and mail."""
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds % size == 0:
            return f"{seconds // size} {unit}{pluralize(seconds // size)}"
    return f"{seconds} second{pluralize(seconds)}"


def wait_words(*, seconds: float) -> str:
    """How long to wait, in whole minutes rounded up ("1 minute", "3 minutes"), for a refusal's "try again in …"."""
    minutes = max(1, math.ceil(seconds / 60))
    return f"{minutes} minute{pluralize(minutes)}"


def mail_error_words(exc: BaseException) -> str:
    """A mail error for the log, without the addresses a server's answer names (a refusal is keyed by them)."""
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        codes = sorted({code for code, _message in exc.recipients.values()})
        return f"SMTPRecipientsRefused ({', '.join(map(str, codes))})"
    if isinstance(exc, smtplib.SMTPResponseException):
        return f"{type(exc).__name__} ({exc.smtp_code})"
    return f"{type(exc).__name__}: {exc}"


def mail_error_is_transient(exc: BaseException) -> bool:
    """Whether sending may work later: a 4xx answer, a dropped or refused connection, a timeout; not a 5xx answer
    (no such mailbox, a refused sender or password) or a server lacking what the settings ask of it."""
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        return all(code < 500 for code, _message in exc.recipients.values())
    if isinstance(exc, smtplib.SMTPResponseException):
        # -1: the server's answer never came.
        return exc.smtp_code < 500
    if isinstance(exc, smtplib.SMTPServerDisconnected):
        return True
    if isinstance(exc, smtplib.SMTPException):
        return False
    # Connections refused or reset, timeouts, TLS handshakes cut short; a full disk for filemail://.
    return isinstance(exc, OSError)
