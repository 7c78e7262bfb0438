"""Log records cleared of the secrets that mailed links carry in their paths."""
from __future__ import annotations

import logging
import re

# The secret parts of the links mailed to people: a password reset link's token (a link works until it is used or
# expires) and an email confirmation's. gunicorn.conf.py masks them in the access log with the same pattern (its
# master does not import the project; a test holds the two equal).
SECRET_IN_PATH = re.compile(r"(/accounts/(?:password/reset/[^/?#\s]+|email/confirm))/(?!set-password/)[^/?#\s]+")


def secrets_masked(text: str) -> str:
    return SECRET_IN_PATH.sub(r"\1/***", text)


class SecretsInPathsMasked(logging.Filter):
    """Writes the secret part of a mailed link's path as *** in a record's message.

    Django names the path of every refused request (a 403 for a form's security code, a 400, a 405) in its warning:
    a confirmation link posted from a page left open would otherwise put its token in the log in plain text.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        masked = secrets_masked(message)
        if masked != message:
            record.msg, record.args = masked, None
        return True
