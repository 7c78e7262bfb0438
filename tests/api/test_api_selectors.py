"""Waiting for predictions: one query per poll, and an honest "not yet" when time runs out."""
from __future__ import annotations

import time

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from api.selectors import predictions_wait_finished
from classifier.models import Prediction


@pytest.mark.django_db(transaction=True)
def test_waiting_for_pending_predictions_gives_up_after_the_timeout_polling_cheaply(user, make_prediction):
    ids = [make_prediction(owner=user).pk, make_prediction(owner=user).pk]

    started = time.monotonic()
    with CaptureQueriesContext(connection) as queries:
        finished = predictions_wait_finished(prediction_ids=ids, timeout=0.3)
    elapsed = time.monotonic() - started

    assert finished is False
    assert 0.3 <= elapsed < 0.6
    # Polled every 20-50 ms: more than a handful of queries, never a busy loop.
    assert 5 <= len(queries) <= 20


@pytest.mark.django_db(transaction=True)
def test_waiting_returns_at_once_when_everything_has_finished(user, make_prediction):
    done = make_prediction(owner=user, done=True)
    failed = make_prediction(owner=user)
    Prediction.objects.filter(pk=failed.pk).update(status=Prediction.Status.FAILED)

    started = time.monotonic()
    assert predictions_wait_finished(prediction_ids=[done.pk, failed.pk], timeout=5) is True
    assert time.monotonic() - started < 0.1
