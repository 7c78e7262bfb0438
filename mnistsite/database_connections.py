"""Telling a lost database connection from other errors, and opening a fresh one after it."""
from __future__ import annotations

import logging

from django.db import DatabaseError, InterfaceError, OperationalError, connection

logger = logging.getLogger(__name__)


def is_transient(exc: BaseException) -> bool:
    """Whether ``exc`` is the connection failing (a restart, a failover, a killed server process), not the statement."""
    return isinstance(exc, (OperationalError, InterfaceError))


def connection_reopen_if_lost() -> None:
    """Drop this thread's connection if an error left it unusable, so that the next statement opens a fresh one.

    Django keeps a lost connection until the request or task ends: a hand-back after the loss, or a training run's
    next report hours later, would fail on it.
    """
    if not connection.in_atomic_block:
        try:
            connection.close_if_unusable_or_obsolete()
        except DatabaseError:
            logger.warning("could not close a lost database connection", exc_info=True)
