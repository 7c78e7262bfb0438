"""Waiting for predictions: woken by the worker's commit on PostgreSQL, cheap polling elsewhere, honest timeouts."""
from __future__ import annotations

import datetime as dt
import io
import os
import threading
import time

import pytest
from django.db import connection, connections, transaction
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from classifier import services
from classifier import completion
from classifier.completion import (
    CHANNEL, SLOT_AFTER_S, STALL_CHECK_EVERY_S, listener_start, predictions_wait_finished,
)
from classifier.models import Prediction
from tests.caches import cache_backend

pytestmark = pytest.mark.django_db(transaction=True)

on_postgresql = pytest.mark.skipif("connection.vendor != 'postgresql'", reason="LISTEN/NOTIFY is PostgreSQL's")
on_sqlite = pytest.mark.skipif("connection.vendor != 'sqlite'", reason="the polling fallback is for SQLite")


@pytest.fixture
def pending(user, digit_png):
    def make(count: int = 1) -> list[Prediction]:
        upload = services.upload_create(owner=user, file=io.BytesIO(digit_png(0)), source="file")
        return services.predictions_create(uploads=[upload] * count, publish=False)

    return make


# The tests below tell "woken by the notification" from "found at the safety re-read" by the reads made: one, the
# first, when woken. With the re-read further off than their waits' timeouts, a slow machine cannot blur the two.
SLOW_RECHECK_S = 30.0


@pytest.fixture
def slow_recheck(monkeypatch):
    monkeypatch.setattr(completion, "RECHECK_S", SLOW_RECHECK_S)


def _wait_timed(ids: list[int], timeout: float, *, user_id: int = 1) -> tuple[bool, float, int]:
    started = time.monotonic()
    with CaptureQueriesContext(connection) as queries:
        finished = predictions_wait_finished(prediction_ids=ids, timeout=timeout, user_id=user_id)
    return finished, time.monotonic() - started, len(queries)


def _execute_later(ids: list[int], delay: float) -> threading.Thread:
    """What a worker does, from another thread with its own database connection."""

    def run() -> None:
        time.sleep(delay)
        try:
            services.predictions_execute(prediction_ids=ids)
        finally:
            connections.close_all()

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def test_waiting_returns_at_once_when_everything_has_finished(pending):
    done, failed = pending(2)
    Prediction.objects.filter(pk=done.pk).update(status=Prediction.Status.DONE)
    Prediction.objects.filter(pk=failed.pk).update(status=Prediction.Status.FAILED)
    finished, elapsed, queries = _wait_timed([done.pk, failed.pk], timeout=30)
    # One read found them finished: nothing was waited for, nothing read again.
    assert finished is True and queries == 1 and elapsed < 10


def test_a_wait_inside_a_transaction_looks_once_and_answers_at_once_as_the_rows_cannot_change_for_it(pending):
    (prediction,) = pending()

    with transaction.atomic():
        finished, elapsed, queries = _wait_timed([prediction.pk], timeout=5)

    assert finished is False and queries == 1 and elapsed < 2


@on_postgresql
def test_a_waiting_request_is_woken_by_the_commit_that_finishes_its_predictions(
    pending, active_checkpoint, slow_recheck
):
    # The model loads here, so that the timed part below is only the wait and one batch.
    services.predictions_execute(prediction_ids=[prediction.pk for prediction in pending(1)])
    # Listening before the worker starts: the wait's one read then comes before the worker's commit.
    assert listener_start(timeout=5)
    ids = [prediction.pk for prediction in pending(3)]
    worker = _execute_later(ids, delay=0.1)
    finished, elapsed, queries = _wait_timed(ids, timeout=10)
    worker.join()
    assert finished is True
    # One read, then woken by the notification before the safety re-read would have added a second.
    assert queries == 1
    assert elapsed >= 0.1  # it waited for the worker
    assert set(Prediction.objects.filter(pk__in=ids).values_list("status", flat=True)) == {"done"}


@on_postgresql
def test_a_dropped_listening_connection_is_replaced_and_wakes_waiters_again(pending, active_checkpoint, slow_recheck):
    services.predictions_execute(prediction_ids=[prediction.pk for prediction in pending(1)])
    assert listener_start(timeout=5)
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = current_database() AND query = %s",
            [f"LISTEN {CHANNEL}"],
        )
        assert cursor.fetchall() == [(True,)]
    deadline = time.monotonic() + 5
    while listener_start(timeout=0) and time.monotonic() < deadline:
        time.sleep(0.01)
    # Noticed the loss; listening again within a few seconds.
    assert listener_start(timeout=5)

    ids = [prediction.pk for prediction in pending(2)]
    worker = _execute_later(ids, delay=0.1)
    finished, elapsed, queries = _wait_timed(ids, timeout=10)
    worker.join()
    # Woken by the notification heard on the new connection, before the safety re-read would have added a read.
    assert finished is True and queries == 1 and elapsed >= 0.1


def test_waiting_for_pending_predictions_gives_up_after_the_timeout_without_a_busy_loop(pending, monkeypatch):
    # The safety re-read far off: a wait that ran past its timeout to the next re-read could not pass for one that
    # stopped at it, however slow this machine.
    monkeypatch.setattr(completion, "RECHECK_S", 60.0)
    ids = [prediction.pk for prediction in pending(2)]
    finished, elapsed, queries = _wait_timed(ids, timeout=1.0)
    assert finished is False
    assert 1.0 <= elapsed < 20
    if connection.vendor == "postgresql":
        # One read, asleep until the timeout (before the safety re-read is due), one last look.
        assert queries == 2
    else:
        # Polled every 5-50 ms: more than a handful of queries even if this process is held up for half the
        # wait, never a busy loop.
        assert 5 <= queries <= 60


def _age(prediction: Prediction, seconds: float) -> None:
    Prediction.objects.filter(pk=prediction.pk).update(created_at=timezone.now() - dt.timedelta(seconds=seconds))


def _running(prediction: Prediction, *, started_seconds_ago: float) -> None:
    started = timezone.now() - dt.timedelta(seconds=started_seconds_ago)
    Prediction.objects.filter(pk=prediction.pk).update(status=Prediction.Status.RUNNING, started_at=started)


def test_a_wait_gives_up_early_once_the_queue_is_seen_stalled_so_it_frees_its_web_thread(pending, settings):
    settings.PREDICTION_WAIT_STALLED_AFTER_SECONDS = 10
    stuck, abandoned = pending(2)
    _age(stuck, 60)  # nothing taken for a minute...
    _running(abandoned, started_seconds_ago=300)  # ...and the last one taken, by a worker that died since
    ids = [prediction.pk for prediction in pending(1)]
    finished, elapsed, _ = _wait_timed(ids, timeout=120)
    assert finished is False
    # It looked after STALL_CHECK_EVERY_S, and gave up long before its timeout.
    assert STALL_CHECK_EVERY_S <= elapsed < 60


def test_a_wait_behind_a_backlog_that_a_worker_is_taking_runs_to_its_timeout(pending, settings):
    settings.PREDICTION_WAIT_STALLED_AFTER_SECONDS = 10
    behind, taken = pending(2)
    _age(behind, 60)  # a long backlog...
    _running(taken, started_seconds_ago=1)  # ...that a worker is working through
    ids = [prediction.pk for prediction in pending(1)]
    finished, elapsed, _ = _wait_timed(ids, timeout=STALL_CHECK_EVERY_S + 0.5)
    assert finished is False and elapsed >= STALL_CHECK_EVERY_S + 0.5


@on_postgresql
def test_a_wait_behind_a_backlog_whose_batches_finish_between_its_looks_runs_to_its_timeout(
    pending, active_checkpoint, settings
):
    settings.PREDICTION_WAIT_STALLED_AFTER_SECONDS = 10
    settings.INFERENCE_BATCH_SIZE = 1  # each batch takes its message's own prediction only
    (behind,) = pending(1)
    _age(behind, 60)  # a long backlog, which workers take batch by batch: between batches none is running
    ids = [prediction.pk for prediction in pending(1)]
    stop = threading.Event()

    def worker() -> None:
        try:
            while not stop.is_set():
                services.predictions_execute(prediction_ids=[prediction.pk for prediction in pending(1)])
                stop.wait(0.3)
        finally:
            connections.close_all()

    draining = threading.Thread(target=worker)
    draining.start()
    try:
        finished, elapsed, _ = _wait_timed(ids, timeout=STALL_CHECK_EVERY_S * 2 + 0.5)
    finally:
        stop.set()
        draining.join()
    assert finished is False and elapsed >= STALL_CHECK_EVERY_S * 2 + 0.5
    assert not Prediction.objects.filter(status=Prediction.Status.RUNNING).exists()


@on_sqlite
def test_a_polling_wait_sees_predictions_finished_by_another_connection(pending, active_checkpoint):
    ids = [prediction.pk for prediction in pending(2)]
    worker = _execute_later(ids, delay=0.2)
    finished, elapsed, _ = _wait_timed(ids, timeout=10)
    worker.join()
    assert finished is True and 0.2 <= elapsed < 5


def test_a_wait_for_a_prediction_deleted_meanwhile_ends_instead_of_holding_its_web_thread_to_the_timeout(pending):
    (kept, finished), (deleted,) = pending(2), pending(1)
    Prediction.objects.filter(pk=finished.pk).update(status=Prediction.Status.DONE)
    Prediction.objects.filter(pk=kept.pk).update(status=Prediction.Status.FAILED)

    def delete_in_another_tab() -> None:
        time.sleep(0.3)
        try:
            services.upload_delete(upload=deleted.upload)
        finally:
            connections.close_all()

    thread = threading.Thread(target=delete_in_another_tab)
    thread.start()
    try:
        result, elapsed, _ = _wait_timed([kept.pk, finished.pk, deleted.pk], timeout=20)
    finally:
        thread.join()
    # Nothing is left to wait for: a deleted prediction never finishes.
    assert result is True and elapsed < 10


@pytest.fixture(params=["locmem", "redis"])
def wait_cap_cache(request, settings):
    """A cap of two waits per user, counted in the local-memory cache or in Redis."""
    settings.PREDICTION_WAITS_PER_USER = 2
    with cache_backend(request.param, settings, key_prefix=f"wait-cap-test-{os.getpid()}"):
        yield


def test_a_wait_beyond_the_users_cap_gives_up_after_a_second_while_another_users_waits_on(
    pending, wait_cap_cache, monkeypatch, caplog
):
    monkeypatch.setattr(completion, "RECHECK_S", 60.0)
    ids = [prediction.pk for prediction in pending(1)]
    holders = [threading.Thread(target=_wait_in_thread, args=(ids, 6.0, 1)) for _ in range(2)]
    for holder in holders:
        holder.start()
    time.sleep(SLOT_AFTER_S + 0.5)  # both waiting past the second, each holding one of user 1's two slots

    beyond, beyond_elapsed, _ = _wait_timed(ids, timeout=4.0, user_id=1)
    other, other_elapsed, _ = _wait_timed(ids, timeout=2.0, user_id=2)
    for holder in holders:
        holder.join()
    # Both holders have ended, giving their slots back: user 1 waits on again.
    again, again_elapsed, _ = _wait_timed(ids, timeout=2.0, user_id=1)

    # A second, then no longer: its web thread free for the server's other requests.
    assert beyond is False and SLOT_AFTER_S <= beyond_elapsed < 3.0
    assert "user 1 already has 2 uploads waiting" in caplog.text
    assert other is False and other_elapsed >= 2.0
    assert again is False and again_elapsed >= 2.0


def test_waits_shorter_than_a_second_count_against_no_cap_however_many_run_at_once(
    pending, wait_cap_cache, active_checkpoint
):
    ids = [prediction.pk for prediction in pending(1)]
    services.predictions_execute(prediction_ids=ids)  # the model loaded here, not during the waits
    ids = [prediction.pk for prediction in pending(1)]
    results: list[bool] = []
    waits = [threading.Thread(target=_wait_in_thread, args=(ids, 10.0, 1, results)) for _ in range(4)]
    for wait in waits:
        wait.start()
    worker = _execute_later(ids, 0.3)
    for thread in (*waits, worker):
        thread.join()

    # Four at once against a cap of two: every one waited for the result.
    assert results == [True] * 4


def _wait_in_thread(ids: list[int], timeout: float, user_id: int, results: list[bool] | None = None) -> None:
    try:
        finished = predictions_wait_finished(prediction_ids=ids, timeout=timeout, user_id=user_id)
        if results is not None:
            results.append(finished)
    finally:
        connections.close_all()
