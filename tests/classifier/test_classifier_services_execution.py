"""Prediction-executing services (claim, run, hand back), run in-process against the real database."""
import datetime as dt
import io
import math
import uuid
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from classifier import services, statements
from classifier.models import Prediction, Upload
from tests.classifier.fixtures import png_bytes
from tests.devices import DEVICES

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize("device", DEVICES)
def test_prediction_execute_stores_digit_probabilities_and_the_model_input(
    user, digit_png, active_checkpoint, mnist_image, settings, device
):
    settings.TORCH_DEVICE = device
    _image, label = mnist_image(0)
    upload = services.upload_create(owner=user, file=io.BytesIO(digit_png(0)), source="file")
    (prediction,) = services.predictions_create(uploads=[upload], publish=False)
    result = services.prediction_execute(prediction_id=prediction.pk)
    assert result.status == "done"
    assert result.digit == label
    assert sum(result.probabilities) == pytest.approx(1.0, abs=1e-6)
    assert len(result.probabilities) == 10
    assert result.confidence == pytest.approx(max(result.probabilities))
    assert result.checkpoint_id == active_checkpoint.pk
    assert result.device == device
    assert result.queue_ms >= 0 and result.compute_ms > 0
    assert result.several_digits is False
    stored = Prediction.objects.get(pk=prediction.pk)
    # What the model saw: 28x28 bright ink on black, the same picture inference produced.
    pixels = np.frombuffer(bytes(stored.input_pixels), dtype=np.uint8).reshape(28, 28)
    assert pixels.max() == 255 and pixels[0].max() == 0 and pixels[-1].max() == 0


def test_a_picture_of_two_digits_is_read_as_one_of_them_and_stored_as_holding_several(
    user, active_checkpoint, mnist_test_split
):
    # "72" written on white paper: the first two MNIST test digits side by side, a digit's width apart.
    first, second = (255 - mnist_test_split.images[index].numpy().astype(np.uint8) for index in (0, 1))
    pair = np.concatenate([first, np.full((28, 12), 255, dtype=np.uint8), second], axis=1)
    picture = Image.fromarray(pair).resize((pair.shape[1] * 4, 112), Image.Resampling.BILINEAR)
    upload = services.upload_create(owner=user, file=io.BytesIO(png_bytes(picture)), source="file")
    (prediction,) = services.predictions_create(uploads=[upload], publish=False)
    services.prediction_execute(prediction_id=prediction.pk)
    stored = Prediction.objects.get(pk=prediction.pk)
    assert stored.status == "done" and stored.digit in (7, 2)
    assert stored.several_digits is True


def test_a_worker_that_cannot_load_the_model_hands_its_predictions_back_instead_of_failing_them(
    user, digit_png, active_checkpoint, settings
):
    model_file = Path(settings.CHECKPOINT_DIR) / active_checkpoint.path
    saved = model_file.read_bytes()
    model_file.unlink()  # as on a worker whose host does not have the checkpoint volume mounted
    upload = services.upload_create(owner=user, file=io.BytesIO(digit_png(0)), source="file")
    mine, someone_elses = services.predictions_create(uploads=[upload, upload], publish=False)

    with pytest.raises(services.ModelUnavailableError):
        services.prediction_execute(prediction_id=mine.pk)
    # Both were claimed (one topped up the batch) and both were handed back, neither counting an attempt: only
    # the message's own counts the hand-back.
    assert set(Prediction.objects.values_list("pk", "status", "attempts", "model_hand_backs", "started_at")) == {
        (mine.pk, "pending", 0, 1, None), (someone_elses.pk, "pending", 0, 0, None)}

    model_file.write_bytes(saved)  # a healthy worker
    done = services.predictions_execute(prediction_ids=[mine.pk, someone_elses.pk])
    assert {prediction.status for prediction in done} == {"done"} and len(done) == 2


@pytest.mark.django_db(transaction=True)  # the results' reference to the model is checked when they commit
@pytest.mark.parametrize("model_loaded", [True, False], ids=["model loaded", "model not loaded yet"])
def test_a_batch_whose_checkpoint_staff_delete_while_it_runs_is_taken_again_with_the_active_one_uncounted(
    user, digit_png, register_checkpoint, trained_model_file, monkeypatch, model_loaded
):
    from classifier import inference, statements
    from training import services as training_services

    old = register_checkpoint(trained_model_file, name="old")
    new = register_checkpoint(trained_model_file, name="new", activate=False)
    if model_loaded:
        inference.model_for_checkpoint_id(checkpoint_id=old.pk)
    upload = services.upload_create(owner=user, file=io.BytesIO(digit_png(1)), source="file")
    (prediction,) = services.predictions_create(uploads=[upload], publish=False)
    real_claim, staff_acted = statements.predictions_claim, []

    def claim_then_staff_roll_forward_and_delete_the_old_model(**kwargs):
        claimed = real_claim(**kwargs)
        if not staff_acted:
            # Between the worker's claim (naming the old model) and its results: nothing it holds stops them.
            training_services.checkpoint_activate(checkpoint=new)
            training_services.checkpoint_delete(checkpoint=old)
            staff_acted.append(True)
        return claimed

    monkeypatch.setattr(statements, "predictions_claim", claim_then_staff_roll_forward_and_delete_the_old_model)
    (done,) = services.predictions_execute(prediction_ids=[prediction.pk])
    prediction.refresh_from_db()
    assert staff_acted and (prediction.status, prediction.checkpoint_id, prediction.attempts) == ("done", new.pk, 1)
    assert done.pk == prediction.pk


def test_a_worker_that_cannot_load_the_model_claims_nothing_for_a_while_so_it_fails_no_one_elses_predictions(
    user, digit_png, active_checkpoint, settings, monkeypatch
):
    settings.MODEL_LOAD_RETRY_AFTER_SECONDS = 60
    # A worker process that has not failed to load a model yet (earlier tests ran in this one).
    monkeypatch.setattr(services.execution, "_model_load_failed_at", [-math.inf])
    model_file = Path(settings.CHECKPOINT_DIR) / active_checkpoint.path
    saved = model_file.read_bytes()
    model_file.unlink()
    upload = services.upload_create(owner=user, file=io.BytesIO(digit_png(0)), source="file")
    (waiting,) = services.predictions_create(uploads=[upload], publish=False)
    messages = [services.predictions_create(uploads=[upload], publish=False)[0] for _ in range(settings.PREDICTION_MAX_ATTEMPTS + 1)]

    # More messages reach the broken worker than a prediction has attempts.
    for prediction in messages:
        with pytest.raises(services.ModelUnavailableError):
            services.prediction_execute(prediction_id=prediction.pk)
    # Only the first claimed anything: its own prediction counts one hand-back, the one it topped up none.
    assert dict(Prediction.objects.values_list("pk", "model_hand_backs")) == {
        waiting.pk: 0, messages[0].pk: 1, **{prediction.pk: 0 for prediction in messages[1:]}}
    assert set(Prediction.objects.values_list("attempts", flat=True)) == {0}
    assert set(Prediction.objects.values_list("status", flat=True)) == {"pending"}

    model_file.write_bytes(saved)  # the volume is back: the next message loads the model and claims again
    done = services.predictions_execute(prediction_ids=[waiting.pk, *(prediction.pk for prediction in messages)])
    assert len(done) == len(messages) + 1 and {prediction.status for prediction in done} == {"done"}


def test_a_model_that_fails_on_its_device_mid_batch_hands_the_batch_back_and_is_loaded_afresh(
    user, digit_png, active_checkpoint, monkeypatch
):
    import torch

    from classifier import inference

    upload = services.upload_create(owner=user, file=io.BytesIO(digit_png(0)), source="file")
    services.predictions_execute(prediction_ids=[p.pk for p in services.predictions_create(uploads=[upload], publish=False)])
    loaded = inference.model_for_checkpoint_id(checkpoint_id=active_checkpoint.pk)
    mine, someone_elses = services.predictions_create(uploads=[upload, upload], publish=False)

    def device_error(*args, **kwargs):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    with monkeypatch.context() as patched:
        patched.setattr(torch, "softmax", device_error)  # as a GPU in an error state fails every batch
        with pytest.raises(services.ModelUnavailableError):
            services.prediction_execute(prediction_id=mine.pk)
    # Not left "running" for the stale wait, nor failed as the images' fault: back in the queue, no attempt
    # counted, only the message's own hand-back.
    assert set(Prediction.objects.filter(pk__in=[mine.pk, someone_elses.pk]).values_list(
        "pk", "status", "attempts", "model_hand_backs")) == {
        (mine.pk, "pending", 0, 1), (someone_elses.pk, "pending", 0, 0)}
    done = services.predictions_execute(prediction_ids=[mine.pk, someone_elses.pk])
    assert {p.status for p in done} == {"done"} and len(done) == 2
    assert inference.model_for_checkpoint_id(checkpoint_id=active_checkpoint.pk) is not loaded  # loaded afresh


def test_a_time_limit_reached_while_the_model_loads_keeps_the_claim_instead_of_counting_a_broken_model(
    user, digit_png, active_checkpoint, monkeypatch
):
    import torch
    from celery.exceptions import SoftTimeLimitExceeded

    def out_of_time(*args, **kwargs):
        raise SoftTimeLimitExceeded()

    # The limit's signal arriving while the checkpoint is deserialised, which wraps any error as a damaged file.
    monkeypatch.setattr(torch, "load", out_of_time)
    upload = services.upload_create(owner=user, file=io.BytesIO(digit_png(0)), source="file")
    (prediction,) = services.predictions_create(uploads=[upload], publish=False)

    with pytest.raises(SoftTimeLimitExceeded):
        services.prediction_execute(prediction_id=prediction.pk)
    # Still claimed, as a worker out of time leaves it, for a retry after the stale wait; not handed back.
    assert Prediction.objects.filter(pk=prediction.pk).values_list("status", "attempts", "error").get() == (
        "running", 1, "")


def test_a_model_that_fails_to_load_with_an_error_chain_that_loops_is_still_handed_back(
    user, digit_png, active_checkpoint, monkeypatch
):
    import torch

    def damaged(*args, **kwargs):
        error = RuntimeError("unpickling stack underflow")
        error.__context__ = error  # a chain that loops: looking through it for a time limit must end
        raise error

    monkeypatch.setattr(torch, "load", damaged)
    upload = services.upload_create(owner=user, file=io.BytesIO(digit_png(0)), source="file")
    (prediction,) = services.predictions_create(uploads=[upload], publish=False)

    with pytest.raises(services.ModelUnavailableError):
        services.prediction_execute(prediction_id=prediction.pk)
    assert Prediction.objects.filter(pk=prediction.pk).values_list("status", "attempts", "model_hand_backs").get() == (
        "pending", 0, 1)


def test_a_model_no_worker_can_load_fails_the_prediction_after_its_attempts_without_showing_server_paths(
    user, digit_png, active_checkpoint, settings
):
    settings.PREDICTION_MAX_ATTEMPTS = 2
    (Path(settings.CHECKPOINT_DIR) / active_checkpoint.path).unlink()  # gone for every worker
    upload = services.upload_create(owner=user, file=io.BytesIO(digit_png(0)), source="file")
    (prediction,) = services.predictions_create(uploads=[upload], publish=False)

    for _ in range(2):
        with pytest.raises(services.ModelUnavailableError):
            services.prediction_execute(prediction_id=prediction.pk)
    failed = Prediction.objects.get(pk=prediction.pk)
    assert failed.status == "failed" and "could not be loaded" in failed.error
    assert failed.model_hand_backs == 2  # the failing hand-back counted as the one before it
    assert str(settings.CHECKPOINT_DIR) not in failed.error and active_checkpoint.path not in failed.error


def _worker_lost_on(prediction: Prediction) -> None:
    """A healthy worker claims the prediction and is killed while computing it: its claim is left running, stale."""
    claim = dict(limit=5, stale_after_s=3600, max_attempts=3)
    (claimed,), _ = statements.predictions_claim(prediction_ids=[prediction.pk], token=uuid.uuid4(), **claim)
    Prediction.objects.filter(pk=claimed.pk).update(started_at=timezone.now() - dt.timedelta(days=1))


def _handed_back_for_want_of_the_model(*, prediction: Prediction, checkpoint, settings, times: int) -> None:
    """``times`` workers without the checkpoint's file take ``prediction`` and hand it back; the file is back after."""
    model_file = Path(settings.CHECKPOINT_DIR) / checkpoint.path
    saved = model_file.read_bytes()
    model_file.unlink()
    for _ in range(times):
        with pytest.raises(services.ModelUnavailableError):
            services.prediction_execute(prediction_id=prediction.pk)
    model_file.write_bytes(saved)


def test_a_good_image_handed_back_by_workers_that_cannot_load_the_model_is_not_failed_when_one_worker_is_lost(
    user, digit_png, active_checkpoint, settings, published
):
    settings.PREDICTION_MAX_ATTEMPTS = 3
    upload = services.upload_create(owner=user, file=io.BytesIO(digit_png(0)), source="file")
    (prediction,) = services.predictions_create(uploads=[upload], publish=False)
    # Two workers without the checkpoint volume.
    _handed_back_for_want_of_the_model(prediction=prediction, checkpoint=active_checkpoint, settings=settings, times=2)

    _worker_lost_on(prediction)
    # One lost worker: sent again, not failed as an image that keeps killing its worker.
    assert services.predictions_sweep() == 1 and published.prediction_ids() == [prediction.pk]
    assert Prediction.objects.filter(pk=prediction.pk).values_list("status", "error").get() == ("running", "")
    (done,) = services.predictions_execute(prediction_ids=[prediction.pk])
    assert done.status == "done" and done.attempts == 2


def test_an_image_that_keeps_killing_its_worker_is_still_failed_after_its_attempts_despite_hand_backs(
    user, digit_png, active_checkpoint, settings
):
    settings.PREDICTION_MAX_ATTEMPTS = 3
    upload = services.upload_create(owner=user, file=io.BytesIO(digit_png(0)), source="file")
    (prediction,) = services.predictions_create(uploads=[upload], publish=False)
    _handed_back_for_want_of_the_model(prediction=prediction, checkpoint=active_checkpoint, settings=settings, times=1)

    for _ in range(3):
        _worker_lost_on(prediction)
    assert services.predictions_sweep() == 0
    failed = Prediction.objects.get(pk=prediction.pk)
    assert failed.status == "failed" and "stopped while computing this prediction 3 times" in failed.error


def test_a_late_hand_back_leaves_a_claim_that_another_worker_took_over_alone(user, digit_png):
    upload = services.upload_create(owner=user, file=io.BytesIO(digit_png(0)), source="file")
    (prediction,) = services.predictions_create(uploads=[upload], publish=False)
    claim = dict(limit=5, stale_after_s=3600, max_attempts=3)
    (stalled,), _ = statements.predictions_claim(prediction_ids=[prediction.pk], token=uuid.uuid4(), **claim)
    Prediction.objects.filter(pk=prediction.pk).update(started_at=timezone.now() - dt.timedelta(days=1))
    statements.predictions_claim(prediction_ids=[prediction.pk], token=uuid.uuid4(), **claim)  # taken over

    services.execution._predictions_release(predictions=[stalled], uncount=True)
    assert Prediction.objects.filter(pk=prediction.pk, status="running", attempts=2).exists()


def test_executing_twice_keeps_one_result_and_does_not_recompute(user, digit_png, active_checkpoint):
    upload = services.upload_create(owner=user, file=io.BytesIO(digit_png(1)), source="file")
    (prediction,) = services.predictions_create(uploads=[upload], publish=False)
    first = services.prediction_execute(prediction_id=prediction.pk)
    assert services.prediction_execute(prediction_id=prediction.pk) is None
    again = Prediction.objects.get(pk=prediction.pk)
    # A recomputation would have stored a new finish time and a new measured compute time.
    assert (again.digit, again.finished_at, again.compute_ms) == (first.digit, first.finished_at, first.compute_ms)


def test_a_prediction_running_elsewhere_is_not_claimed_twice(user, digit_png, active_checkpoint):
    upload = services.upload_create(owner=user, file=io.BytesIO(digit_png(1)), source="file")
    (prediction,) = services.predictions_create(uploads=[upload], publish=False)
    Prediction.objects.filter(pk=prediction.pk).update(status="running", started_at=timezone.now())
    assert services.prediction_execute(prediction_id=prediction.pk) is None
    assert Prediction.objects.get(pk=prediction.pk).status == "running"


def test_a_prediction_running_on_a_dead_worker_is_claimed_again_once_stale(user, digit_png, active_checkpoint, settings):
    upload = services.upload_create(owner=user, file=io.BytesIO(digit_png(1)), source="file")
    (prediction,) = services.predictions_create(uploads=[upload], publish=False)
    stale = timezone.now() - dt.timedelta(seconds=settings.PREDICTION_RUNNING_STALE_AFTER_SECONDS + 5)
    Prediction.objects.filter(pk=prediction.pk).update(status="running", started_at=stale)
    finished = services.prediction_execute(prediction_id=prediction.pk)
    assert finished is not None and finished.status == "done" and finished.started_at > stale


def test_a_batch_takes_the_messages_own_predictions_first_then_the_oldest_waiting(user, digit_png, active_checkpoint, settings):
    settings.INFERENCE_BATCH_SIZE = 2
    upload = services.upload_create(owner=user, file=io.BytesIO(digit_png(1)), source="file")
    older, old, own = services.predictions_create(uploads=[upload] * 3, publish=False)
    finished = services.predictions_execute(prediction_ids=[own.pk])
    assert [p.pk for p in finished] == [own.pk]
    statuses = dict(Prediction.objects.values_list("pk", "status"))
    # The batch of two was topped up with the oldest waiting prediction only.
    assert statuses == {own.pk: "done", older.pk: "done", old.pk: "pending"}


def test_an_image_without_ink_fails_with_a_clear_error(user, active_checkpoint):
    from classifier.validation import ValidatedImage
    from tests.classifier.fixtures import png_bytes
    from PIL import Image

    # Validation refuses blank images, so store one directly as an older upload might have been.
    content = png_bytes(Image.new("L", (28, 28), 0))
    image = ValidatedImage(content=content, original_name="x.png", format="PNG", size=1, width=28, height=28, sha256="0" * 64)
    written = services.files.upload_files_write(owner=user, images=[image], source="file")
    (upload,) = services.uploads._uploads_insert(uploads=written)
    (prediction,) = services.predictions_create(uploads=[upload], publish=False)
    result = services.prediction_execute(prediction_id=prediction.pk)
    assert result.status == "failed"
    assert "empty" in result.error


def test_a_photo_of_an_empty_ruled_sheet_fails_saying_why_no_digit_was_found(user, active_checkpoint):
    from tests.classifier.fixtures import empty_ruled_sheet_png

    upload = services.upload_create(owner=user, file=io.BytesIO(empty_ruled_sheet_png()), source="file")
    (prediction,) = services.predictions_create(uploads=[upload], publish=False)
    result = services.prediction_execute(prediction_id=prediction.pk)
    assert (result.status, result.digit) == ("failed", None)
    assert result.error == "No digit was found in this image: its only marks are specks or printed lines."


def test_without_an_active_checkpoint_the_prediction_fails_with_a_clear_error(user, digit_png):
    upload = services.upload_create(owner=user, file=io.BytesIO(digit_png(0)), source="file")
    (prediction,) = services.predictions_create(uploads=[upload], publish=False)
    result = services.prediction_execute(prediction_id=prediction.pk)
    assert result.status == "failed" and "No trained model" in result.error


def test_a_batch_costs_one_statement_to_claim_and_one_to_store_once_the_model_is_loaded(
    user, digit_png, active_checkpoint
):
    upload = services.upload_create(owner=user, file=io.BytesIO(digit_png(1)), source="file")
    services.predictions_execute(prediction_ids=[p.pk for p in services.predictions_create(uploads=[upload], publish=False)])
    ids = [p.pk for p in services.predictions_create(uploads=[upload] * 4, publish=False)]
    with CaptureQueriesContext(connection) as queries:
        finished = services.predictions_execute(prediction_ids=ids)
    assert sorted(p.pk for p in finished) == ids
    # The claim also reads which checkpoint is active. SQLite reads which claims it still holds, then stores the
    # batch row by row in one executemany, in a transaction (here a savepoint inside the test's own transaction).
    assert len(queries) == (2 if connection.vendor == "postgresql" else 5)
    assert all(p.checkpoint_id == active_checkpoint.pk for p in Prediction.objects.filter(pk__in=ids))


def test_a_checkpoint_that_made_predictions_cannot_be_deleted(user, digit_png, active_checkpoint):
    from django.db.models import ProtectedError

    upload = services.upload_create(owner=user, file=io.BytesIO(digit_png(1)), source="file")
    (prediction,) = services.predictions_create(uploads=[upload], publish=False)
    services.predictions_execute(prediction_ids=[prediction.pk])
    with pytest.raises(ProtectedError):
        active_checkpoint.delete()
    assert Prediction.objects.get(pk=prediction.pk).checkpoint_id == active_checkpoint.pk


def test_deleting_uploads_whose_predictions_a_worker_is_computing_leaves_the_worker_to_finish_the_rest(
    user, digit_png, active_checkpoint, monkeypatch, django_capture_on_commit_callbacks, caplog
):
    from classifier.services import execution

    first = services.upload_create(owner=user, file=io.BytesIO(digit_png(0)), source="file")
    second = services.upload_create(owner=user, file=io.BytesIO(digit_png(1)), source="file")
    gone, kept = services.predictions_create(uploads=[first, second], publish=False)
    real_read, opened = execution._stored_bytes, []

    def deleted_by_its_owner_as_the_worker_reads_it(name):
        if not opened:
            # Claimed and running: the owner deletes the first upload, its file included, before the worker reads it.
            with django_capture_on_commit_callbacks(execute=True):
                assert services.uploads_delete(owner=user, upload_ids=[first.pk]) == 1
        opened.append(name)
        return real_read(name)

    monkeypatch.setattr(execution, "_stored_bytes", deleted_by_its_owner_as_the_worker_reads_it)
    finished = services.predictions_execute(prediction_ids=[gone.pk, kept.pk])

    assert opened == [first.image.name, second.image.name]
    assert [prediction.pk for prediction in finished] == [kept.pk]
    assert Prediction.objects.get(pk=kept.pk).status == "done"
    assert not Prediction.objects.filter(pk=gone.pk).exists() and not Upload.objects.filter(pk=first.pk).exists()
    # A deletion is the owner's to make: nothing for an operator to look into, nor a claim said to be lost.
    assert not [record for record in caplog.records if record.levelname in ("WARNING", "ERROR")]
    # Asked again for it (a redelivered message), the worker finds nothing to do.
    assert services.predictions_execute(prediction_ids=[gone.pk]) == []
