"""The prediction representation written out by hand equals DRF's field-by-field one, in every state."""
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
