"""Nothing lost, nothing doubled: predictions through killed workers, a dead broker and repeated messages."""
import hashlib
import io
import re

import numpy as np
import pytest
from django.conf import settings
from PIL import Image

from classifier import services
from classifier.models import Prediction, Upload
from classifier.validation import ValidatedImage
from tests.reliability.conftest import prediction_finished, succeeded_count, wait_for_prediction, wait_until

pytestmark = pytest.mark.worker

# Short enough for a test, yet longer than the moment between claim and kill.
STALE_AFTER = "3"


def large_digit_png(mnist_image) -> bytes:
    """A legal 6000x6000 photo-like upload (mostly white paper, a big digit): slow to decode and preprocess."""
    digit, _label = mnist_image(0, size=2400)
    page = Image.new("L", (6000, 6000), 255)
    page.paste(digit, (1800, 1800))
    out = io.BytesIO()
    page.save(out, format="PNG")
    data = out.getvalue()
    assert len(data) < settings.UPLOAD_MAX_BYTES and 6000 * 6000 <= settings.UPLOAD_MAX_PIXELS
    return data


def large_stored_upload(owner, mnist_image) -> Upload:
    """That photo stored whole, as uploads were before stored copies were capped at 2,048 pixels.

    Reading and preprocessing it takes a worker a tenth to a quarter of a second: long enough to be caught mid-run.
    """
    data = large_digit_png(mnist_image)
    image = ValidatedImage(content=data, original_name="big.png", format="PNG", size=len(data), width=6000,
                           height=6000, sha256=hashlib.sha256(data).hexdigest())
    written = services.files.upload_files_write(owner=owner, images=[image], source="file")
    (upload,) = services.uploads._uploads_insert(uploads=written)
    return upload


def test_a_prediction_whose_worker_is_killed_mid_run_completes_exactly_once_on_a_new_worker(
    running_private_redis, workers, user, active_checkpoint, mnist_image
):
    first = workers(PREDICTION_RUNNING_STALE_AFTER_SECONDS=STALE_AFTER)
    (prediction,) = services.predictions_create(uploads=[large_stored_upload(user, mnist_image)])
    prediction_id = prediction.pk

    wait_until(lambda: Prediction.objects.filter(pk=prediction_id, status="running").exists(), timeout=60,
               interval=0.01, what=lambda: f"the worker to claim the prediction: {Prediction.objects.filter(pk=prediction_id).values()} {first.log()[-3000:]}")
    first.kill()  # SIGKILL to the whole process group: the pool child dies mid-computation
    first.popen.wait(timeout=10)
    killed = Prediction.objects.get(pk=prediction_id)
    assert killed.status == "running", "the kill came too late to interrupt the prediction"
    assert succeeded_count(first) == 0

    # The unacknowledged message comes back after the visibility timeout; the stale-running rule lets it claim.
    second = workers(PREDICTION_RUNNING_STALE_AFTER_SECONDS=STALE_AFTER)
    done = wait_for_prediction(prediction_id, timeout=90)
    assert done.status == "done", done.error
    assert done.digit == 7 and done.started_at > killed.started_at
    assert Prediction.objects.filter(upload=prediction.upload_id).count() == 1
    # The pool child logs the success after the result's commit, which the test may see first.
    wait_until(lambda: succeeded_count(second) >= 1, timeout=30, what=lambda: second.log()[-3000:])
    assert succeeded_count(second) == 1
    assert len(done.input_pixels) == 28 * 28


def test_an_upload_while_the_broker_is_down_is_stored_queued_and_completed_once_by_the_sweeper(
    private_redis, workers, client, user, active_checkpoint, digit_png, settings
):
    # Nothing listens on the private broker's port yet: publishing fails at once.
    client.force_login(user)
    response = client.post("/", {"files": [_named(digit_png(0), "seven.png")]})
    assert response.status_code == 302, response.content[:500]
    (upload,) = Upload.objects.filter(owner=user)
    prediction = upload.predictions.get()
    assert prediction.status == "pending" and prediction.published_at is None and prediction.publish_attempts == 1
    assert (settings.MEDIA_ROOT / upload.image.name).is_file()
    page = client.get(response["Location"])
    assert re.search(rb'id="status-badge">\s*queued\s*<', page.content)
    assert client.get(f"/api/v1/predictions/{prediction.pk}/").json()["status"] == "pending"

    private_redis.start()
    worker = workers()
    settings.PREDICTION_REPUBLISH_AFTER_SECONDS = 0
    assert services.predictions_sweep() == 1
    # The original publish firing late as well: two messages for one prediction.
    assert services.prediction_publish(prediction_id=prediction.pk)
    done = wait_for_prediction(prediction.pk)
    assert done.status == "done" and done.digit == 7, done.error
    worker.wait_for_output("already running or finished", timeout=30)
    assert Prediction.objects.filter(upload=upload).count() == 1
    assert Prediction.objects.get(pk=prediction.pk).finished_at == done.finished_at
    assert worker.log().count("already running or finished") == 1
    assert client.get(f"/api/v1/predictions/{prediction.pk}/").json()["status"] == "done"


def test_the_same_task_message_delivered_twice_computes_one_result(
    running_private_redis, workers, user, active_checkpoint, digit_png
):
    from classifier.tasks import predictions_execute

    worker = workers()
    upload = services.upload_create(owner=user, file=io.BytesIO(digit_png(1)), source="file")
    (prediction,) = services.predictions_create(uploads=[upload], publish=False)
    predictions_execute.apply_async(args=[[prediction.pk]])
    predictions_execute.apply_async(args=[[prediction.pk]])

    first = wait_for_prediction(prediction.pk)
    worker.wait_for_output("already running or finished", timeout=30)
    # At least: under the tests' 10-second visibility timeout a slow first task can bring a third delivery,
    # which must compute nothing either.
    wait_until(lambda: succeeded_count(worker) >= 2, timeout=30,
               what=lambda: f"both messages to be handled:\n{worker.log()[-4000:]}")
    again = Prediction.objects.get(pk=prediction.pk)
    assert first.status == "done", first.error
    # A recomputation would have moved the finish time and the measured compute time.
    assert (again.finished_at, bytes(again.input_pixels), again.digit, again.compute_ms) == (
        first.finished_at, bytes(first.input_pixels), first.digit, first.compute_ms)
    assert Prediction.objects.filter(upload=upload).count() == 1


def test_a_prediction_out_of_time_stays_claimed_for_a_retry_instead_of_failing_as_unreadable(
    running_private_redis, workers, user, active_checkpoint, digit_png, mnist_image
):
    from classifier.tasks import predictions_execute

    worker = workers()
    # A first prediction loads the model, so the time limit below falls inside the big images' reading and
    # preprocessing (0.1 to 0.25 s each, 32 of them: one claim's worth), well after the claim even on a busy
    # machine, and well before the end even on a fast one.
    (warm_up,) = services.predictions_submit(owner=user, files=[(io.BytesIO(digit_png(1)), "one.png")], source="file")
    assert wait_for_prediction(warm_up.pk).status == "done"
    batch = [p.pk for p in services.predictions_create(uploads=[large_stored_upload(user, mnist_image)] * 32, publish=False)]

    task_id = predictions_execute.apply_async(args=[batch], soft_time_limit=0.5).id
    wait_until(lambda: re.search(rf"\[{task_id}\] (succeeded|raised)", worker.log()), timeout=60,
               what=lambda: f"the task to end: {worker.log()[-3000:]}")
    assert "Soft time limit (0.5s) exceeded" in worker.log()
    assert set(Prediction.objects.filter(pk__in=batch).values_list("status", "error", "attempts")) == {("running", "", 1)}


def test_a_prediction_handed_back_by_workers_without_the_model_then_losing_one_worker_is_sent_again_not_failed(
    running_private_redis, workers, user, active_checkpoint, mnist_image, tmp_path, settings
):
    from classifier.tasks import predictions_execute

    settings.PREDICTION_MAX_ATTEMPTS = 3
    settings.PREDICTION_RUNNING_STALE_AFTER_SECONDS = int(STALE_AFTER)
    no_volume = tmp_path / "no-volume"
    no_volume.mkdir()
    (prediction,) = services.predictions_create(uploads=[large_stored_upload(user, mnist_image)], publish=False)
    prediction_id = prediction.pk
    predictions_execute.apply_async(args=[[prediction_id]])

    # Two workers whose hosts lack the checkpoint volume, one after the other, each taking the message (or its
    # retry) and handing the prediction back before the task asks for its retry; each process claims nothing more
    # for a long while, so each hands it back once.
    for _ in range(2):
        broken = workers(CHECKPOINT_DIR=str(no_volume), MODEL_LOAD_RETRY_AFTER_SECONDS="600")
        broken.wait_for_output("retry: Retry in", timeout=60)
        broken.stop()
        assert Prediction.objects.filter(pk=prediction_id).values_list("status", flat=True).get() == "pending"

    # A healthy worker takes the retry and is killed while computing it.
    healthy = workers(PREDICTION_RUNNING_STALE_AFTER_SECONDS=STALE_AFTER)
    wait_until(lambda: Prediction.objects.filter(pk=prediction_id, status="running").exists(), timeout=90,
               interval=0.01, what=lambda: f"the healthy worker to claim the prediction: {healthy.log()[-3000:]}")
    healthy.kill()
    healthy.popen.wait(timeout=10)
    killed = Prediction.objects.get(pk=prediction_id)
    assert killed.status == "running", "the kill came too late to interrupt the prediction"

    # One worker lost on the image is no reason to blame it: the sweeper sends it again.
    wait_until(lambda: services.predictions_sweep() or prediction_finished(prediction_id), timeout=30,
               what="the sweeper to take the lost claim")
    swept = Prediction.objects.get(pk=prediction_id)
    assert (swept.status, swept.error) == ("running", "")
    workers(PREDICTION_RUNNING_STALE_AFTER_SECONDS=STALE_AFTER)
    done = wait_for_prediction(prediction_id, timeout=90)
    assert done.status == "done" and done.digit == 7, done.error


def _named(data: bytes, name: str):
    from django.core.files.uploadedfile import SimpleUploadedFile

    return SimpleUploadedFile(name, data, content_type="image/png")


def test_large_digit_fixture_is_a_real_digit(mnist_image):
    # Guards the kill test: an image the validator rejected would never reach the worker.
    from classifier.validation import validate_image

    accepted = validate_image(io.BytesIO(large_digit_png(mnist_image)), name="big.png")
    assert (accepted.width, accepted.height) == (6000, 6000)
    assert np.asarray(Image.open(io.BytesIO(accepted.content))).min() < 50
