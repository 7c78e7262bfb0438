"""What an upload whose insert lost its connection can still learn: whether its server process has ended."""
from __future__ import annotations

import time

from django.db import connection


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
