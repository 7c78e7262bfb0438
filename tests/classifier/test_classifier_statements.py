"""Hand-written reads of predictions: the rows as the ORM would load them, and which have finished."""
from __future__ import annotations

import io

import pytest

from classifier import services, statements
from classifier.models import Prediction

pytestmark = pytest.mark.django_db


@pytest.fixture
def three(user, digit_png) -> list[Prediction]:
    upload = services.upload_create(owner=user, file=io.BytesIO(digit_png(1)), source="file")
    return services.predictions_create(uploads=[upload] * 3, publish=False)


def test_predictions_get_loads_current_rows_with_converted_values(three):
    done, failed, pending = three
    Prediction.objects.filter(pk=done.pk).update(
        status="done", digit=4, confidence=0.75, probabilities=[0.75] + [0.25 / 9] * 9, input_pixels=bytes(range(256)) * 3
    )
    Prediction.objects.filter(pk=failed.pk).update(status="failed", error="No digit was found.")

    fresh = statements.predictions_get(prediction_ids=[p.pk for p in three] + [10**12])

    assert set(fresh) == {done.pk, failed.pk, pending.pk}
    expected = {
        field.attname: getattr(Prediction.objects.get(pk=done.pk), field.attname) for field in Prediction._meta.fields
    }
    assert {name: getattr(fresh[done.pk], name) for name in expected} == expected
    assert fresh[done.pk].probabilities[0] == 0.75 and bytes(fresh[done.pk].input_pixels)[:3] == b"\x00\x01\x02"
    assert (fresh[failed.pk].status, fresh[failed.pk].error) == ("failed", "No digit was found.")
    assert fresh[pending.pk].status == "pending" and fresh[pending.pk].digit is None


def test_predictions_finished_ids_are_the_done_and_failed_ones(three):
    done, failed, running = three
    Prediction.objects.filter(pk=done.pk).update(status="done")
    Prediction.objects.filter(pk=failed.pk).update(status="failed")
    Prediction.objects.filter(pk=running.pk).update(status="running")

    assert statements.predictions_finished_ids(prediction_ids=[p.pk for p in three]) == {done.pk, failed.pk}
    assert statements.predictions_finished_ids(prediction_ids=[running.pk]) == set()


def test_asking_for_no_ids_sends_no_query(django_assert_num_queries):
    with django_assert_num_queries(0):
        assert statements.predictions_get(prediction_ids=[]) == {}
        assert statements.predictions_finished_ids(prediction_ids=[]) == set()
