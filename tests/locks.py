"""Transactions held open in another thread, and PostgreSQL's lock waits, for tests of requests that overlap."""
import contextlib
import threading
import time
from collections.abc import Callable

import pytest
from django.db import connection, transaction


def lock_waits() -> int:
    """How many of this database's sessions wait for a lock now."""
    with connection.cursor() as cursor:
        # Read live, not from a snapshot: pg_locks is no table of the transaction's. This database's only: a row
        # lock's wait names no database (its session does), and other test runs on the server have waits of their own.
        cursor.execute("SELECT count(*) FROM pg_locks WHERE NOT granted AND pid IN "
                       "(SELECT pid FROM pg_stat_activity WHERE datname = current_database())")
        return cursor.fetchone()[0]


def lock_waits_reach(count: int) -> bool:
    """Whether ``count`` sessions wait for a lock within 15 s."""
    deadline = time.monotonic() + 15
    while lock_waits() < count:
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return True


@contextlib.contextmanager
def held_open(hold: Callable[[], object]):
    """Runs ``hold`` in a transaction of a thread of its own, and commits it once the block ends."""
    holding, release = threading.Event(), threading.Event()

    def holder() -> None:
        try:
            with transaction.atomic():
                hold()
                holding.set()
                release.wait(15)
        finally:
            connection.close()

    thread = threading.Thread(target=holder)
    thread.start()
    try:
        assert holding.wait(15)
        yield
    finally:
        release.set()
        thread.join()


def overtaken(*, first, then: list) -> list:
    """Runs ``first`` in a transaction of its own thread and holds it open while each of ``then`` (a request from
    another tab) runs in a thread of its own, until every one of them waits for a lock ``first`` took; then commits
    it. Returns what each of ``then`` returned (or raised), in order."""
    answers: list = [None] * len(then)

    def other_tab(index: int) -> None:
        try:
            answers[index] = then[index]()
        except Exception as exc:  # noqa: BLE001 - a server error is an answer here, asserted on
            answers[index] = exc
        finally:
            connection.close()

    others = [threading.Thread(target=other_tab, args=(index,)) for index in range(len(then))]
    try:
        with held_open(first):
            for other in others:
                other.start()
            if not lock_waits_reach(len(then)):
                pytest.fail(f"the other tabs never all waited for the first one ({lock_waits()} waiting): {answers}")
    finally:
        for other in others:
            if other.ident is not None:
                other.join(30)
    return answers
