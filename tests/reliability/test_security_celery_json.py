"""A real worker refuses pickled task messages: only JSON is ever deserialised."""
import io
import os
import uuid

import pytest

from classifier import services
from classifier.models import Prediction
from tests.reliability.conftest import wait_for_prediction

pytestmark = pytest.mark.worker


class _Touch:
    """Unpickling this runs a shell command that creates the marker file."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_pickled_task_message_is_refused_by_the_worker_and_never_unpickled(
    running_private_redis, workers, user, active_checkpoint, digit_png, tmp_path
):
    from mnistsite.celery import app

    worker = workers()
    upload = services.upload_create(owner=user, file=io.BytesIO(digit_png(0)), source="file")
    (prediction,) = services.predictions_create(uploads=[upload], publish=False)
    marker = tmp_path / "pwned"

    task_id = str(uuid.uuid4())
    # Celery message protocol 2, as a forged client would send it, but serialised with pickle.
    body = ([[prediction.pk], _Touch(str(marker))], {}, {"callbacks": None, "errbacks": None, "chain": None, "chord": None})
    headers = {"lang": "py", "task": "classifier.tasks.predictions_execute", "id": task_id, "root_id": task_id,
               "parent_id": None, "group": None, "retries": 0, "argsrepr": "", "kwargsrepr": "", "origin": "attacker"}
    with app.connection_for_write() as conn:
        conn.Producer(serializer="pickle").publish(
            body, exchange="", routing_key="inference", headers=headers, delivery_mode=2,
            correlation_id=task_id, declare=[app.amqp.queues["inference"]],
        )
    worker.wait_for_output("Refusing to deserialize untrusted content of type pickle", timeout=30)

    assert not marker.exists()
    untouched = Prediction.objects.get(pk=prediction.pk)
    assert (untouched.status, untouched.started_at) == ("pending", None)
    # The worker is alive and still does real work: the same prediction over JSON completes.
    assert services.prediction_publish(prediction_id=prediction.pk)
    assert wait_for_prediction(prediction.pk).status == "done"
    assert not marker.exists()
