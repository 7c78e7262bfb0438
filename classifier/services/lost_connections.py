"""Telling a lost database connection from other errors, and going on after one."""
from __future__ import annotations

import logging
import time

from django.db import DatabaseError, connection

logger = logging.getLogger(__name__)


# How long a request whose connection was lost during its insert waits for the server process that ran it to end
# before it asks what was stored.
LOST_INSERT_WAIT_S = 5.0


def backend_pid() -> int | None:
    """The PostgreSQL server process of this connection, watched for if the connection is lost mid-insert."""
    if connection.vendor != "postgresql" or connection.connection is None:
        return None
    return connection.connection.info.backend_pid


def backend_ended(*, pid: int) -> bool:
    """Whether the server process of a lost connection has ended: until it has, it may still commit its insert."""
    deadline = time.monotonic() + LOST_INSERT_WAIT_S
    with connection.cursor() as cursor:
        while True:
            cursor.execute("SELECT 1 FROM pg_stat_activity WHERE pid = %s", [pid])
            if cursor.fetchone() is None:
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)


def is_transient(exc: Exception) -> bool:
    from django.db import InterfaceError, OperationalError

    return isinstance(exc, (OperationalError, InterfaceError))


def connection_reopen_if_lost() -> None:
    """Drop this thread's connection if an error left it unusable, so that the next statement opens a fresh one.

    Django keeps a lost connection until the task ends; a hand-back after the loss would fail on it, and leave the
    predictions running until the stale limit.
    """
    if not connection.in_atomic_block:
        try:
            connection.close_if_unusable_or_obsolete()
        except DatabaseError:
            logger.warning("could not close a lost database connection", exc_info=True)
