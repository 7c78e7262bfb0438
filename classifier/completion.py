"""Telling waiting requests that predictions finished: a PostgreSQL NOTIFY sent with the commit, polling elsewhere."""
from __future__ import annotations

import time

from django.db import connection

from classifier.models import Prediction

CHANNEL = "mnistsite_predictions_finished"
FINISHED = (Prediction.Status.DONE, Prediction.Status.FAILED)
# Without notifications (SQLite) the database is polled, fast at first, then backing off.
POLL_FIRST_S = 0.005
POLL_MAX_S = 0.05
# Even with notifications the rows are re-read this often, so a prediction finished by a path
# that sends none (an administrator's edit, an older worker) is still noticed.
RECHECK_S = 0.5


def _notifications_available() -> bool:
    return connection.vendor == "postgresql"


def predictions_finished_announce(*, prediction_ids: list[int]) -> None:
    """Call inside the transaction that finishes them: PostgreSQL delivers the notice when, and only if, it commits."""
    if prediction_ids and _notifications_available():
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_notify(%s, %s)", [CHANNEL, ",".join(str(pk) for pk in prediction_ids)])


def _unfinished(prediction_ids: set[int]) -> set[int]:
    finished = Prediction.objects.filter(pk__in=prediction_ids, status__in=FINISHED).values_list("pk", flat=True)
    return prediction_ids - set(finished)


def predictions_wait_finished(*, prediction_ids: list[int], timeout: float) -> bool:
    """Block until every prediction is done or failed, or ``timeout`` seconds pass; True when all finished.

    Inside a transaction the rows never change for us, so it only looks once.
    """
    deadline = time.monotonic() + timeout
    pending = set(prediction_ids)
    if connection.in_atomic_block or timeout <= 0:
        return not _unfinished(pending)
    if _notifications_available():
        return _wait_notified(pending, deadline)
    return _wait_polling(pending, deadline)


def _announced_ids(payload: str) -> set[int]:
    return {int(part) for part in payload.split(",") if part.isdigit()}


def _wait_notified(pending: set[int], deadline: float) -> bool:
    with connection.cursor() as cursor:
        cursor.execute(f"LISTEN {CHANNEL}")
    try:
        # Listening before the first read: a prediction that finishes in between is announced, not missed.
        pending = _unfinished(pending)
        while pending:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            heard = False
            for notice in connection.connection.notifies(timeout=min(remaining, RECHECK_S), stop_after=1):
                heard = True
                pending -= _announced_ids(notice.payload)
            if not heard:
                pending = _unfinished(pending)
        return True
    finally:
        with connection.cursor() as cursor:
            cursor.execute(f"UNLISTEN {CHANNEL}")


def _wait_polling(pending: set[int], deadline: float) -> bool:
    pause = POLL_FIRST_S
    while pending := _unfinished(pending):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        time.sleep(min(pause, remaining))
        pause = min(pause * 1.5, POLL_MAX_S)
    return True
