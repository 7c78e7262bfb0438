"""The prediction representations written out by hand equal DRF's field-by-field one, in every state."""
import datetime as dt

import pytest
from django.test import RequestFactory
from django.utils import timezone
from rest_framework import serializers
from rest_framework.request import Request

from api.serializers import PredictionSerializer
from classifier.models import Prediction


def _generic(serializer: PredictionSerializer, prediction: Prediction) -> dict:
    return dict(serializers.Serializer.to_representation(serializer, prediction))


@pytest.mark.parametrize("zone", ["UTC", "Europe/Berlin"])
def test_every_state_is_represented_as_drfs_generic_loop_would(user, make_prediction, settings, zone):
    settings.TIME_ZONE = zone
    pending = make_prediction(owner=user)
    done = make_prediction(owner=user, done=True, digit=3, confidence=0.41)
    done.feedback, done.checkpoint_id = 8, None
    done.started_at = timezone.now() - dt.timedelta(milliseconds=7)
    done.finished_at = timezone.now()
    failed = make_prediction(owner=user)
    failed.status, failed.error, failed.device = Prediction.Status.FAILED, "No digit was found.", "cpu"
    request = Request(RequestFactory().get("/api/v1/predictions/", HTTP_HOST="testserver"))
    serializer = PredictionSerializer(context={"request": request})
    for prediction in (pending, done, failed):
        fast = serializer.to_representation(prediction)
        assert list(fast) == list(serializer.fields)
        assert fast == _generic(serializer, prediction)
    assert serializer.to_representation(done)["low_confidence"] is True
    assert serializer.to_representation(done)["input_image_url"].endswith(f"/predictions/{done.pk}/input/")


def _variety(user, make_prediction, make_checkpoint) -> list[Prediction]:
    """Stored predictions in every state: pending, running, done with and without feedback and checkpoint, failed,
    done with no model input, an empty input and a JSON null among the probabilities."""
    checkpoint, _ = make_checkpoint()
    pending = make_prediction(owner=user)
    running = make_prediction(owner=user)
    Prediction.objects.filter(pk=running.pk).update(status=Prediction.Status.RUNNING, started_at=timezone.now())
    plain = make_prediction(owner=user, done=True, digit=3, confidence=0.41)
    marked = make_prediction(owner=user, done=True, digit=1, confidence=0.999)
    Prediction.objects.filter(pk=marked.pk).update(
        feedback=7, checkpoint=checkpoint, several_digits=True, device="cuda", started_at=timezone.now(),
        finished_at=timezone.now() + dt.timedelta(microseconds=1),
    )
    failed = make_prediction(owner=user)
    Prediction.objects.filter(pk=failed.pk).update(
        status=Prediction.Status.FAILED, error="No digit was found in this image: blank", device="cpu",
        checkpoint=checkpoint, finished_at=timezone.now(),
    )
    odd = make_prediction(owner=user, done=True, confidence=1.0)
    Prediction.objects.filter(pk=odd.pk).update(input_pixels=b"", probabilities=[1.0] + [None] * 9, queue_ms=None)
    blank = make_prediction(owner=user, done=True)
    Prediction.objects.filter(pk=blank.pk).update(input_pixels=None)
    stored = [pending, running, plain, marked, failed, odd, blank]
    fresh = Prediction.objects.select_related("upload").in_bulk([p.pk for p in stored])
    return [fresh[p.pk] for p in stored]


@pytest.mark.parametrize("zone", ["UTC", "Europe/Berlin"])
def test_a_list_and_an_uploads_answer_are_represented_as_the_serializer_writes_them(
    user, make_prediction, make_checkpoint, settings, zone
):
    from api import selectors
    from api.serializers import predictions_represent
    from rest_framework.renderers import JSONRenderer

    settings.TIME_ZONE = zone
    predictions = _variety(user, make_prediction, make_checkpoint)
    request = Request(RequestFactory().get("/api/v1/predictions/", HTTP_HOST="testserver"))
    serializer = PredictionSerializer(context={"request": request})
    expected = PredictionSerializer(predictions, many=True, context={"request": request}).data
    assert expected == [_generic(serializer, prediction) for prediction in predictions]

    listed = predictions_represent(predictions, request=request)
    read_back = selectors.predictions_reload(predictions=predictions)
    answered = predictions_represent(read_back, request=request)

    assert [summary.pk for summary in read_back] == [prediction.pk for prediction in predictions]
    for written in (listed, answered):
        assert written == expected
        assert [list(item) for item in written] == [list(serializer.fields)] * len(predictions)
        assert JSONRenderer().render({"predictions": written}) == JSONRenderer().render({"predictions": expected})


def test_times_python_holds_equal_but_that_are_written_differently_are_each_written_as_the_serializer_would(
    user, make_prediction, settings
):
    from zoneinfo import ZoneInfo

    from api.serializers import predictions_represent

    settings.TIME_ZONE = "Europe/Berlin"
    berlin = ZoneInfo("Europe/Berlin")
    # 02:30 twice on the night the clocks went back: the same wall time, an hour apart (fold), equal to each other
    # as Python compares times of one zone; and the same instant written in UTC and in a fixed offset.
    first = dt.datetime(2024, 10, 27, 2, 30, tzinfo=berlin)
    second = first.replace(fold=1)
    utc = dt.datetime(2024, 10, 27, 0, 30, tzinfo=dt.UTC)
    shifted = utc.astimezone(dt.timezone(dt.timedelta(hours=5)))
    assert first == second and utc == shifted
    predictions = []
    for created_at, started_at in [(first, second), (second, first), (utc, shifted), (shifted, utc)]:
        prediction = make_prediction(owner=user)
        prediction.created_at, prediction.started_at = created_at, started_at
        predictions.append(prediction)
    request = Request(RequestFactory().get("/api/v1/predictions/", HTTP_HOST="testserver"))

    written = predictions_represent(predictions, request=request)

    assert written == PredictionSerializer(predictions, many=True, context={"request": request}).data
    assert written[0]["created_at"] != written[0]["started_at"]
