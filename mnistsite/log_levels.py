"""Log records worth less than the level they are sent at, brought down to it."""
from __future__ import annotations

import logging


class WarningWithoutTraceback(logging.Filter):
    """Makes every record of the logger it is set on a warning of one line.

    For ``django.security.DisallowedHost``: Django logs every request for a Host the site does not serve as an error
    with a traceback, and scanners that reach a server by its address send such requests all day. Errors a person
    must look at would drown in them; the 400 they are answered with is all there is to it.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno > logging.WARNING:
            record.levelno, record.levelname = logging.WARNING, logging.getLevelName(logging.WARNING)
        record.exc_info, record.exc_text = None, None
        return True
