"""Telling waiting requests that predictions finished: one PostgreSQL LISTEN per process, polling elsewhere.

The worker's statement that stores a batch's results also NOTIFYs ``CHANNEL``
with their ids, so the notice is delivered when, and only if, they commit.
Each web process keeps a single listening connection in a background thread and
hands every notice to the requests waiting for those ids.
"""
from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections.abc import Callable

from django.conf import settings
from django.db import connection

from classifier import selectors, slots, statements

logger = logging.getLogger(__name__)

CHANNEL = "mnistsite_predictions_finished"
# Without notifications (SQLite) the database is polled, fast at first, then backing off.
POLL_FIRST_S = 0.005
POLL_MAX_S = 0.05
# Even with notifications the rows are re-read this often, so a prediction finished by a path
# that sends none (an administrator's edit, an older worker) or a notice lost with the listening
# connection is still noticed.
RECHECK_S = 0.5
# Every waiting request holds a web thread. With no worker taking predictions (all stopped, the broker down) every
# wait would run to its end and hold every thread, the health probes' included; so a wait that has lasted this
# long looks whether the queue is stalled, and then gives up.
STALL_CHECK_EVERY_S = 2.0
# A wait that has lasted this long counts against the user's PREDICTION_WAITS_PER_USER.
SLOT_AFTER_S = 1.0
# How long a wait gives a new listener to connect before it polls instead.
LISTENER_START_S = 1.0
# How often the listener looks up from its connection to see whether it should stop.
LISTENER_TICK_S = 1.0
LISTENER_RETRY_S = 1.0


class _StallWatch:
    """Whether the queue is stalled, looked up at most every STALL_CHECK_EVERY_S.

    A batch finished within the period, heard on the listening connection, says that workers are taking
    predictions even when none is running at the moment of the look: between batches none is.
    """

    def __init__(self, *, last_finished_at: Callable[[], float] = lambda: -math.inf) -> None:
        self._next = time.monotonic() + STALL_CHECK_EVERY_S
        self._last_finished_at = last_finished_at

    def stalled(self) -> bool:
        if time.monotonic() < self._next:
            return False
        self._next = time.monotonic() + STALL_CHECK_EVERY_S
        if time.monotonic() - self._last_finished_at() < settings.PREDICTION_WAIT_STALLED_AFTER_SECONDS:
            return False
        return selectors.prediction_queue_stalled(stalled_after_s=settings.PREDICTION_WAIT_STALLED_AFTER_SECONDS)


def _notifications_available() -> bool:
    return connection.vendor == "postgresql"


def _unfinished(prediction_ids: set[int]) -> set[int]:
    return prediction_ids - statements.predictions_finished_ids(prediction_ids=sorted(prediction_ids))


def predictions_wait_finished(*, prediction_ids: list[int], timeout: float, user_id: int) -> bool:
    """Block until every prediction is done, failed or deleted, or ``timeout`` seconds pass; True when all are.

    It gives up early when the queue is stalled: a prediction has been pending
    for PREDICTION_WAIT_STALLED_AFTER_SECONDS and no worker has started one
    since; and after SLOT_AFTER_S when PREDICTION_WAITS_PER_USER of the user's
    requests have been waiting that long already. Inside a transaction the rows
    never change for us, so it only looks once.
    """
    deadline = time.monotonic() + timeout
    pending = set(prediction_ids)
    if connection.in_atomic_block or timeout <= 0:
        return not _unfinished(pending)
    slot = _SlotWatch(user_id=user_id, hold_s=timeout + STALL_CHECK_EVERY_S)
    try:
        if _notifications_available() and listener_start(timeout=min(LISTENER_START_S, timeout)):
            return _wait_notified(pending, deadline, slot)
        return _wait_polling(pending, deadline, slot)
    finally:
        slot.give_back()


class _SlotWatch:
    """One of the user's PREDICTION_WAITS_PER_USER slots, taken once the wait has lasted SLOT_AFTER_S.

    A wait that long holds its web thread long enough to count, and one the user's other waits leave no slot gives
    up. The waits of a load the workers keep up with end sooner, and cost the cache nothing.
    """

    def __init__(self, *, user_id: int, hold_s: float) -> None:
        self._user_id, self._hold_s = user_id, hold_s
        self._at = time.monotonic() + SLOT_AFTER_S
        self._asked = False
        self._token: str | None = None

    def due_in(self) -> float:
        """Seconds until the slot is to be taken; infinite once it was asked for."""
        return math.inf if self._asked else max(0.0, self._at - time.monotonic())

    def refused(self) -> bool:
        if self._asked or time.monotonic() < self._at:
            return False
        self._asked = True
        self._token = slots.user_slot_take(kind="wait", user_id=self._user_id,
                                           limit=settings.PREDICTION_WAITS_PER_USER, hold_s=self._hold_s)
        if self._token is None:
            logger.info("user %s already has %s uploads waiting over %g s (PREDICTION_WAITS_PER_USER): "
                        "answering without waiting longer", self._user_id, settings.PREDICTION_WAITS_PER_USER,
                        SLOT_AFTER_S)
        return self._token is None

    def give_back(self) -> None:
        if self._token is not None:
            slots.user_slot_give_back(kind="wait", user_id=self._user_id, token=self._token)
            self._token = None


def _announced_ids(payload: str) -> set[int]:
    return {int(part) for part in payload.split(",") if part.isdigit()}


class _Waiter:
    def __init__(self, prediction_ids: set[int]) -> None:
        self.prediction_ids = frozenset(prediction_ids)
        self.heard: set[int] = set()
        self.reread = False
        self.woken = threading.Event()


class _Listener:
    """The process's one listening connection, and the requests waiting for ids announced on it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waiters: dict[int, set[_Waiter]] = {}
        self._listening = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._pid = 0
        # When a batch's results were last announced (monotonic seconds), whoever waited for them.
        self.last_notice_at = -math.inf

    def start(self, *, timeout: float) -> bool:
        """Start listening in this process if nobody has yet; True once the LISTEN is in place."""
        with self._lock:
            if self._pid != os.getpid():
                # A forked child inherits the parent's waiters and flags, but not its thread.
                self._pid, self._waiters, self._thread = os.getpid(), {}, None
            if self._thread is None or not self._thread.is_alive():
                self._listening.clear()
                self._stopping.clear()
                self._thread = threading.Thread(target=self._run, name="prediction-listener", daemon=True)
                self._thread.start()
        return self._listening.wait(timeout)

    def stop(self) -> None:
        """Close the listening connection (tests drop their database at the end, which needs it gone)."""
        self._stopping.set()
        thread = self._thread
        if thread is not None and thread.is_alive():
            thread.join(LISTENER_TICK_S * 5)
        self._thread = None

    def register(self, prediction_ids: set[int]) -> _Waiter:
        waiter = _Waiter(prediction_ids)
        with self._lock:
            for pk in waiter.prediction_ids:
                self._waiters.setdefault(pk, set()).add(waiter)
        return waiter

    def unregister(self, waiter: _Waiter) -> None:
        with self._lock:
            for pk in waiter.prediction_ids:
                waiting = self._waiters.get(pk)
                if waiting is not None:
                    waiting.discard(waiter)
                    if not waiting:
                        del self._waiters[pk]

    def take(self, waiter: _Waiter) -> tuple[set[int], bool]:
        """The ids announced since the last call, and whether the rows must be re-read instead."""
        with self._lock:
            heard, reread = waiter.heard, waiter.reread
            waiter.heard, waiter.reread = set(), False
            waiter.woken.clear()
        return heard, reread

    def _deliver(self, prediction_ids: set[int]) -> None:
        with self._lock:
            for pk in prediction_ids:
                for waiter in self._waiters.get(pk, ()):
                    waiter.heard.add(pk)
                    waiter.woken.set()

    def _wake_all_to_reread(self) -> None:
        with self._lock:
            for waiting in self._waiters.values():
                for waiter in waiting:
                    waiter.reread = True
                    waiter.woken.set()

    def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                self._listen()
            except Exception:  # noqa: BLE001 - any failure means: reconnect, and let the waiters re-read
                logger.warning("prediction listener lost its connection; reconnecting", exc_info=True)
            finally:
                self._listening.clear()
                self._wake_all_to_reread()
            self._stopping.wait(LISTENER_RETRY_S)

    def _listen(self) -> None:
        # A connection of its own: Django's are per thread and come and go with requests.
        conn = connection.get_new_connection(connection.get_connection_params())
        try:
            conn.autocommit = True
            conn.execute(f"LISTEN {CHANNEL}")
            # Waiters left over from a lost connection may have missed notices: they re-read once.
            self._wake_all_to_reread()
            self._listening.set()
            while not self._stopping.is_set():
                for notice in conn.notifies(timeout=LISTENER_TICK_S):
                    self.last_notice_at = time.monotonic()
                    self._deliver(_announced_ids(notice.payload))
        finally:
            conn.close()


_listener = _Listener()


def listener_start(*, timeout: float) -> bool:
    """Make sure this process listens; True once it does (False: not within ``timeout``, waits poll meanwhile)."""
    return _listener.start(timeout=timeout)


def listener_stop() -> None:
    _listener.stop()


def _wait_notified(pending: set[int], deadline: float, slot: _SlotWatch) -> bool:
    waiter = _listener.register(pending)
    watch = _StallWatch(last_finished_at=lambda: _listener.last_notice_at)
    try:
        # Registered before the first read: a prediction that finishes in between is announced, not missed.
        pending = _unfinished(pending)
        while pending:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or watch.stalled() or slot.refused():
                return False
            if waiter.woken.wait(min(remaining, RECHECK_S, slot.due_in())):
                heard, reread = _listener.take(waiter)
                pending -= heard
                if not reread:
                    continue
            pending = _unfinished(pending)
        return True
    finally:
        _listener.unregister(waiter)


def _wait_polling(pending: set[int], deadline: float, slot: _SlotWatch) -> bool:
    pause = POLL_FIRST_S
    watch = _StallWatch()
    while pending := _unfinished(pending):
        remaining = deadline - time.monotonic()
        if remaining <= 0 or watch.stalled() or slot.refused():
            return False
        time.sleep(min(pause, remaining))
        pause = min(pause * 1.5, POLL_MAX_S)
    return True
