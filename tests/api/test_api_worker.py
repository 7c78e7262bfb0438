"""Uploading with ?wait against a real Celery worker returns the finished predictions."""
from __future__ import annotations

import datetime as dt

import pytest
from django.utils import timezone

from classifier.models import Prediction
from tests.api.conftest import upload_file
from tests.classifier.fixtures import png_bytes

pytestmark = [pytest.mark.worker, pytest.mark.django_db(transaction=True)]

LIST = "/api/v1/predictions/"


def test_waiting_returns_200_with_the_digits_once_the_worker_has_finished(
    celery_worker_process, active_checkpoint, mnist_image, user_client
):
    images = [mnist_image(index) for index in range(3)]
    files = [upload_file(png_bytes(image), name=f"mnist-{i}.png") for i, (image, _label) in enumerate(images)]

    response = user_client.post(f"{LIST}?wait=30", {"images": files}, format="multipart")
    answered_at = timezone.now()

    assert response.status_code == 200, (response.json(), celery_worker_process.log()[-3000:])
    items = response.json()["predictions"]
    # Answered as the worker finished them, not when the wait ran out, however long the worker took.
    last_finished = max(Prediction.objects.filter(pk__in=[item["id"] for item in items]).values_list(
        "finished_at", flat=True))
    assert answered_at - last_finished < dt.timedelta(seconds=10)
    assert [item["digit"] for item in items] == [label for _image, label in images]
    for item in items:
        assert item["status"] == "done" and item["finished"] is True
        assert len(item["probabilities"]) == 10
        assert item["checkpoint"] == active_checkpoint.pk
        assert item["input_image_url"].endswith(f"/api/v1/predictions/{item['id']}/input/")
        assert item["latency"]["compute_ms"] is not None and item["latency"]["queue_ms"] is not None


def test_without_an_active_model_waiting_returns_200_with_the_failure(celery_worker_process, user_client):
    response = user_client.post(f"{LIST}?wait=20", {"image": upload_file()}, format="multipart")

    assert response.status_code == 200, response.json()
    (item,) = response.json()["predictions"]
    assert item["status"] == "failed" and item["digit"] is None
    assert "No trained model is active" in item["error"]
