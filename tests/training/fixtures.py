"""Shared training test helpers: a transaction held open in another connection until another waits on it."""
import threading
import time
from collections.abc import Callable

from django.db import connection, transaction

from tests.locks import lock_waits


class HeldInAnotherConnection:
    """``hold`` run in a thread's own transaction, left open until another connection is seen waiting for a lock."""

    def __init__(self, hold: Callable[[], None], *, timeout: float) -> None:
        self.held, self.waited, self.errors = threading.Event(), threading.Event(), []
        self.thread = threading.Thread(target=self._run, args=(hold, timeout))

    def _run(self, hold: Callable[[], None], timeout: float) -> None:
        try:
            with transaction.atomic():
                hold()
                self.held.set()
                deadline = time.monotonic() + timeout
                while not self.waited.is_set() and time.monotonic() < deadline:
                    if lock_waits():
                        self.waited.set()
                    time.sleep(0.02)
        except Exception as exc:  # noqa: BLE001 - reported by finish()
            self.errors.append(exc)
        finally:
            self.held.set()
            connection.close()

    def start(self) -> None:
        """Start it, and return once ``hold`` ran and its transaction is still open."""
        self.thread.start()
        assert self.held.wait(30)

    def finish(self) -> None:
        """Wait for the commit, and check that it went well and that another connection waited for it."""
        self.thread.join(60)
        assert self.errors == [] and self.waited.is_set()
