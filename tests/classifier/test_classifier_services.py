"""Services for uploads and predictions, run in-process against the real database."""
import datetime as dt
import io
import math
import re
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from classifier import selectors, services, statements
from classifier.models import IdempotencyKey, Prediction, StorageUse, Upload
from tests.classifier.fixtures import (
    account_deleted_just_before_the_insert, deletions_race, png_bytes, stored_size, uploads_stored_answer_lost,
    uploads_stored_then_read_back_lost,
)
from tests.devices import DEVICES

pytestmark = pytest.mark.django_db


def _stored_files() -> list[Path]:
    root = Path(settings.MEDIA_ROOT)
    return [p for p in root.rglob("*") if p.is_file()]


def test_upload_create_stores_a_reencoded_png_under_a_generated_name(user, digit_png):
    data = digit_png(0)
    upload = services.upload_create(owner=user, file=io.BytesIO(data), name="../my digit.png", source="file")
    assert upload.original_name == "my digit.png"
    assert upload.image.name.startswith("uploads/") and upload.image.name.endswith(".png")
    assert "my digit" not in upload.image.name
    assert upload.format == "PNG" and upload.size == len(data) and upload.width == 112
    assert Path(upload.image.path).is_file()


def test_a_rejected_batch_stores_nothing(user, digit_png, django_capture_on_commit_callbacks, published):
    files = [(io.BytesIO(digit_png(0)), "good.png"), (io.BytesIO(b"garbage"), "bad.png")]
    with django_capture_on_commit_callbacks(execute=True), pytest.raises(ValidationError) as info:
        services.predictions_submit(owner=user, files=files, source="file")
    assert "bad.png" in " ".join(info.value.messages)
    assert Upload.objects.count() == 0 and Prediction.objects.count() == 0
    assert _stored_files() == []
    assert published.prediction_ids() == []


def test_a_batch_whose_second_file_cannot_be_written_leaves_no_file_and_no_row(
    user, digit_png, django_capture_on_commit_callbacks, published, monkeypatch
):
    import errno
    import os

    # The disk fills at the second file: the system call fails, for files under the media folder only.
    real_write, calls, media = os.write, [], str(Path(settings.MEDIA_ROOT).resolve())

    def disk_full_at_the_second_file(fd, data):
        if os.readlink(f"/proc/self/fd/{fd}").startswith(media):
            calls.append(fd)
            if len(calls) == 2:
                raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", disk_full_at_the_second_file)
    files = [(io.BytesIO(digit_png(i)), f"{i}.png") for i in range(3)]
    with django_capture_on_commit_callbacks(execute=True), pytest.raises(services.UploadStorageError):
        services.predictions_submit(owner=user, files=files, source="file")
    assert len(calls) == 2  # the first file was written, the third never tried
    assert _stored_files() == []
    assert Upload.objects.count() == 0 and Prediction.objects.count() == 0
    assert published.prediction_ids() == []


def test_a_batch_is_stored_with_pending_predictions_published_after_commit(
    user, digit_png, django_capture_on_commit_callbacks, published
):
    files = [(io.BytesIO(digit_png(i)), f"{i}.png") for i in range(3)]
    with django_capture_on_commit_callbacks(execute=True):
        predictions = services.predictions_submit(owner=user, files=files, source="file")
        assert published.prediction_ids() == []  # nothing leaves before the commit
    assert [p.upload.original_name for p in predictions] == ["0.png", "1.png", "2.png"]
    assert {p.status for p in Prediction.objects.all()} == {"pending"}
    assert published.prediction_ids() == [p.pk for p in predictions]
    assert all(p.published_at is not None and p.publish_attempts == 1 for p in Prediction.objects.all())


def test_a_broker_outage_keeps_the_upload_and_its_pending_prediction(
    user, digit_png, django_capture_on_commit_callbacks, broker_down
):
    with django_capture_on_commit_callbacks(execute=True):
        (prediction,) = services.predictions_submit(owner=user, files=[(io.BytesIO(digit_png(0)), "a.png")], source="file")
    prediction.refresh_from_db()
    assert prediction.status == "pending"
    assert prediction.published_at is None and prediction.publish_attempts == 1


@pytest.mark.django_db(transaction=True)  # the insert commits by itself, as outside a test
def test_uploads_stored_whose_predictions_cannot_be_read_back_are_an_unknown_outcome_not_nothing_stored(
    user, digit_png, published
):
    files = [(io.BytesIO(digit_png(i)), f"{i}.png") for i in range(2)]
    with uploads_stored_then_read_back_lost(), pytest.raises(services.UploadOutcomeUnknownError):
        services.predictions_submit(owner=user, files=files, source="file")

    # Stored: an error saying that nothing was would have the same images sent again.
    assert Upload.objects.count() == 2 and Prediction.objects.filter(status="pending").count() == 2
    assert all(upload.image.storage.exists(upload.image.name) for upload in Upload.objects.all())
    # Not sent, as their ids were never read: the sweeper sends them.
    assert published.prediction_ids() == []


@pytest.mark.django_db(transaction=True)  # the insert commits by itself, as outside a test
def test_uploads_stored_then_deleted_before_they_were_read_back_are_an_unknown_outcome_not_a_crash(
    user, digit_png, published
):
    import threading

    def delete_first_in_another_tab() -> None:
        try:
            services.upload_delete(upload=Upload.objects.order_by("id").first())
        finally:
            connection.close()

    def delete_one_meanwhile() -> None:
        other = threading.Thread(target=delete_first_in_another_tab)
        other.start()
        other.join()

    files = [(io.BytesIO(digit_png(i)), f"{i}.png") for i in range(3)]
    with uploads_stored_answer_lost(before_read_back=delete_one_meanwhile):
        with pytest.raises(services.UploadOutcomeUnknownError, match="1 of them were deleted"):
            services.predictions_submit(owner=user, files=files, source="file")

    # The user is sent to their history, which shows the two left; those two are on their way to a worker.
    left = list(Prediction.objects.order_by("id").values_list("pk", flat=True))
    assert len(left) == 2 and Upload.objects.count() == 2
    assert sorted(published.prediction_ids()) == left


@pytest.fixture
def silent_broker():
    """A Redis address that accepts connections and never answers, as a hung host or a dead NAT path does."""
    import socket

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)  # the kernel completes the handshakes; nothing ever reads or writes
    yield f"redis://127.0.0.1:{listener.getsockname()[1]}/0"
    listener.close()


def test_a_broker_that_stops_answering_delays_an_upload_by_seconds_not_for_ever(
    user, digit_png, django_capture_on_commit_callbacks, settings, silent_broker
):
    import time

    from tests.processes import broker_switched

    with broker_switched(settings, silent_broker):
        started = time.monotonic()
        with django_capture_on_commit_callbacks(execute=True):
            (prediction,) = services.predictions_submit(
                owner=user, files=[(io.BytesIO(digit_png(0)), "a.png")], source="file"
            )
        waited = time.monotonic() - started
    # Kombu may try the connection more than once, each time up to the socket timeout (5 s).
    assert waited < 30
    prediction.refresh_from_db()
    assert prediction.status == "pending" and prediction.published_at is None


def test_the_sweeper_republishes_old_pending_predictions_only(user, digit_png, published, settings):
    settings.PREDICTION_REPUBLISH_AFTER_SECONDS = 60
    upload = services.upload_create(owner=user, file=io.BytesIO(digit_png(0)), source="file")
    old = services.predictions_create(uploads=[upload], publish=False)[0]
    services.predictions_create(uploads=[upload], publish=False)  # too young to be republished
    done = services.predictions_create(uploads=[upload], publish=False)[0]
    long_ago = timezone.now() - dt.timedelta(minutes=5)
    Prediction.objects.filter(pk__in=[old.pk, done.pk]).update(created_at=long_ago)
    Prediction.objects.filter(pk=done.pk).update(status="done")
    assert services.predictions_sweep() == 1
    assert published.prediction_ids() == [old.pk]


def test_the_sweeper_does_not_resend_an_old_pending_prediction_it_published_recently(user, digit_png, published, settings):
    settings.PREDICTION_REPUBLISH_AFTER_SECONDS = 60
    upload = services.upload_create(owner=user, file=io.BytesIO(digit_png(0)), source="file")
    resent_lately, resent_long_ago = services.predictions_create(uploads=[upload, upload], publish=False)
    now = timezone.now()
    # Both created long ago; one was sent again seconds ago (waiting behind a backlog), the other not for minutes.
    Prediction.objects.filter(pk__in=[resent_lately.pk, resent_long_ago.pk]).update(
        created_at=now - dt.timedelta(hours=1), publish_attempts=2
    )
    Prediction.objects.filter(pk=resent_lately.pk).update(published_at=now - dt.timedelta(seconds=10))
    Prediction.objects.filter(pk=resent_long_ago.pk).update(published_at=now - dt.timedelta(minutes=5))
    assert services.predictions_sweep() == 1
    assert published.prediction_ids() == [resent_long_ago.pk]
    assert Prediction.objects.get(pk=resent_lately.pk).publish_attempts == 2


def test_the_sweeper_republishes_predictions_stuck_running_on_a_dead_worker(user, digit_png, published):
    upload = services.upload_create(owner=user, file=io.BytesIO(digit_png(0)), source="file")
    (stuck,) = services.predictions_create(uploads=[upload], publish=False)
    Prediction.objects.filter(pk=stuck.pk).update(status="running", started_at=timezone.now() - dt.timedelta(hours=1))
    assert services.predictions_sweep() == 1
    assert published.prediction_ids() == [stuck.pk]


def test_the_sweeper_fails_a_prediction_that_lost_its_worker_too_often_and_republishes_the_others(
    user, digit_png, published, settings
):
    settings.PREDICTION_MAX_ATTEMPTS = 3
    upload = services.upload_create(owner=user, file=io.BytesIO(digit_png(0)), source="file")
    given_up, retried = services.predictions_create(uploads=[upload] * 2, publish=False)
    long_ago = timezone.now() - dt.timedelta(hours=1)
    Prediction.objects.filter(pk=given_up.pk).update(status="running", started_at=long_ago, attempts=3)
    Prediction.objects.filter(pk=retried.pk).update(status="running", started_at=long_ago, attempts=2)

    assert services.predictions_sweep() == 1
    assert published.prediction_ids() == [retried.pk]
    given_up.refresh_from_db()
    assert given_up.status == "failed" and given_up.finished_at is not None
    assert "stopped while computing this prediction 3 times" in given_up.error
    assert Prediction.objects.get(pk=retried.pk).status == "running"


@pytest.fixture
def host_clock(monkeypatch):
    """Sets this host's clock off the database's by the given amount; returns the true time when it was set."""

    def run_off(by: dt.timedelta) -> dt.datetime:
        true_now = timezone.now
        monkeypatch.setattr(timezone, "now", lambda: true_now() + by)
        return true_now()

    return run_off


def _near(moment: dt.datetime | None, true_now: dt.datetime) -> bool:
    return moment is not None and abs(moment - true_now) < dt.timedelta(minutes=1)


def test_a_sweeper_whose_clock_runs_ahead_leaves_live_claims_and_fresh_predictions_alone(
    user, digit_png, published, host_clock
):
    upload = services.upload_create(owner=user, file=io.BytesIO(digit_png(0)), source="file")
    running, _pending = services.predictions_create(uploads=[upload] * 2, publish=False)
    Prediction.objects.filter(pk=running.pk).update(status="running", started_at=timezone.now(), attempts=1)

    host_clock(dt.timedelta(hours=1))
    # By its own clock both waited an hour: republished, a live claim would be computed twice.
    assert services.predictions_sweep() == 0
    assert published.prediction_ids() == []


def test_a_sweeper_whose_clock_runs_behind_still_takes_up_predictions_lost_long_ago(
    user, digit_png, published, host_clock, settings
):
    settings.PREDICTION_MAX_ATTEMPTS = 3
    upload = services.upload_create(owner=user, file=io.BytesIO(digit_png(0)), source="file")
    lost, given_up, unsent = services.predictions_create(uploads=[upload] * 3, publish=False)
    long_ago = timezone.now() - dt.timedelta(minutes=10)
    Prediction.objects.filter(pk=lost.pk).update(status="running", started_at=long_ago, attempts=1)
    Prediction.objects.filter(pk=given_up.pk).update(status="running", started_at=long_ago, attempts=3)
    Prediction.objects.filter(pk=unsent.pk).update(created_at=long_ago)

    true_now = host_clock(-dt.timedelta(hours=1))
    assert services.predictions_sweep() == 2
    assert sorted(published.prediction_ids()) == sorted([lost.pk, unsent.pk])
    given_up.refresh_from_db()
    assert given_up.status == "failed" and _near(given_up.finished_at, true_now)
    # Sent again now by the database's clock: the next sweep, however its host's clock runs, leaves them be.
    assert _near(Prediction.objects.get(pk=unsent.pk).published_at, true_now)


def test_a_worker_whose_clock_runs_ahead_does_not_take_over_a_claim_another_worker_holds(
    user, digit_png, active_checkpoint, host_clock
):
    upload = services.upload_create(owner=user, file=io.BytesIO(digit_png(1)), source="file")
    (prediction,) = services.predictions_create(uploads=[upload], publish=False)
    Prediction.objects.filter(pk=prediction.pk).update(status="running", started_at=timezone.now(), attempts=1)

    host_clock(dt.timedelta(hours=1))
    assert services.prediction_execute(prediction_id=prediction.pk) is None
    assert Prediction.objects.filter(pk=prediction.pk, status="running", attempts=1).exists()


def test_a_worker_whose_clock_runs_behind_dates_its_claim_by_the_database_clock(
    user, digit_png, active_checkpoint, host_clock
):
    upload = services.upload_create(owner=user, file=io.BytesIO(digit_png(1)), source="file")
    (prediction,) = services.predictions_create(uploads=[upload], publish=False)

    true_now = host_clock(-dt.timedelta(hours=1))
    claimed, _ = statements.predictions_claim(
        prediction_ids=[prediction.pk], limit=5, stale_after_s=120, max_attempts=3, token=uuid.uuid4()
    )
    # Dated by its own clock, the claim would look an hour stale to every other worker and the sweeper.
    (stored,) = Prediction.objects.filter(pk=prediction.pk)
    assert _near(stored.started_at, true_now) and stored.started_at == claimed[0].started_at
    assert services.predictions_sweep() == 0


def test_a_prediction_computed_by_a_worker_whose_clock_runs_off_has_true_times(
    user, digit_png, active_checkpoint, host_clock
):
    upload = services.upload_create(owner=user, file=io.BytesIO(digit_png(1)), source="file")
    (prediction,) = services.predictions_create(uploads=[upload], publish=False)

    true_now = host_clock(-dt.timedelta(hours=1))
    done = services.prediction_execute(prediction_id=prediction.pk)
    assert done.status == "done" and 0 <= done.queue_ms < 60_000
    stored = Prediction.objects.get(pk=prediction.pk)
    assert _near(stored.finished_at, true_now) and stored.started_at <= stored.finished_at == done.finished_at


def test_predictions_are_dated_and_published_by_the_database_clock_not_the_web_hosts(
    user, digit_png, published, host_clock, django_capture_on_commit_callbacks
):
    true_now = host_clock(-dt.timedelta(days=1))
    with django_capture_on_commit_callbacks(execute=True):
        (submitted,) = services.predictions_submit(owner=user, files=[(io.BytesIO(digit_png(0)), "a.png")], source="file")
        (rerun,) = services.predictions_rerun(uploads=[submitted.upload])
    (unpublished,) = services.predictions_create(uploads=[submitted.upload], publish=False)

    for made in (submitted, rerun, unpublished):
        stored = Prediction.objects.get(pk=made.pk)
        assert _near(stored.created_at, true_now), stored.created_at
        # The objects returned carry the database's values, not the host's time or an unevaluated expression.
        assert (made.created_at, made.published_at) == (stored.created_at, stored.published_at)
    assert Prediction.objects.get(pk=submitted.pk).published_at == Prediction.objects.get(pk=submitted.pk).created_at
    assert _near(Prediction.objects.get(pk=rerun.pk).published_at, true_now)
    assert Prediction.objects.get(pk=unpublished.pk).published_at is None
    # Served oldest first by the database's order of arrival, whatever each web host's clock said.
    assert list(Prediction.objects.order_by("created_at", "id").values_list("pk", flat=True)) == [
        submitted.pk, rerun.pk, unpublished.pk]


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
    # Both were claimed (one topped up the batch) and both were handed back; only the message's own counts.
    assert set(Prediction.objects.values_list("pk", "status", "attempts", "started_at")) == {
        (mine.pk, "pending", 1, None), (someone_elses.pk, "pending", 0, None)}

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
    monkeypatch.setattr(services, "_model_load_failed_at", [-math.inf])
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
    # Only the first claimed anything: its own prediction counts one attempt, the one it topped up none.
    assert dict(Prediction.objects.values_list("pk", "attempts")) == {
        waiting.pk: 0, messages[0].pk: 1, **{prediction.pk: 0 for prediction in messages[1:]}}
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
    # Not left "running" for the stale wait, nor failed as the images' fault: back in the queue, only the
    # message's own counted.
    assert set(Prediction.objects.filter(pk__in=[mine.pk, someone_elses.pk]).values_list("pk", "status", "attempts")) == {
        (mine.pk, "pending", 1), (someone_elses.pk, "pending", 0)}
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
    assert Prediction.objects.filter(pk=prediction.pk).values_list("status", "attempts").get() == ("pending", 1)


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
    assert str(settings.CHECKPOINT_DIR) not in failed.error and active_checkpoint.path not in failed.error


def test_a_late_hand_back_leaves_a_claim_that_another_worker_took_over_alone(user, digit_png):
    upload = services.upload_create(owner=user, file=io.BytesIO(digit_png(0)), source="file")
    (prediction,) = services.predictions_create(uploads=[upload], publish=False)
    claim = dict(limit=5, stale_after_s=3600, max_attempts=3)
    (stalled,), _ = statements.predictions_claim(prediction_ids=[prediction.pk], token=uuid.uuid4(), **claim)
    Prediction.objects.filter(pk=prediction.pk).update(started_at=timezone.now() - dt.timedelta(days=1))
    statements.predictions_claim(prediction_ids=[prediction.pk], token=uuid.uuid4(), **claim)  # taken over

    services._predictions_release(predictions=[stalled], uncount=True)
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
    (upload,) = services._uploads_insert(uploads=services._upload_files_write(owner=user, images=[image], source="file"))
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


def test_feedback_is_recorded_and_validated(user, digit_png):
    upload = services.upload_create(owner=user, file=io.BytesIO(digit_png(0)), source="file")
    (prediction,) = services.predictions_create(uploads=[upload], publish=False)
    services.prediction_feedback_set(prediction=prediction, digit=4)
    assert Prediction.objects.get(pk=prediction.pk).feedback == 4
    with pytest.raises(services.PredictionFeedbackError):
        services.prediction_feedback_set(prediction=prediction, digit=10)
    services.prediction_feedback_set(prediction=prediction, digit=None)
    assert Prediction.objects.get(pk=prediction.pk).feedback is None


def test_feedback_on_a_prediction_deleted_meanwhile_says_it_is_gone(user, digit_png):
    upload = services.upload_create(owner=user, file=io.BytesIO(digit_png(0)), source="file")
    (prediction,) = services.predictions_create(uploads=[upload], publish=False)
    services.upload_delete(upload=Upload.objects.get(pk=upload.pk))  # in another tab, after this one loaded it
    with pytest.raises(Prediction.DoesNotExist):
        services.prediction_feedback_set(prediction=prediction, digit=4)
    assert not Prediction.objects.exists()


def test_feedback_sent_from_a_page_a_re_run_replaced_is_kept_by_the_uploads_newest_prediction(user, digit_png, published):
    upload = services.upload_create(owner=user, file=io.BytesIO(digit_png(7)), source="file")
    shown = services.prediction_create(upload=upload)  # the page its owner has open
    (newest,) = services.predictions_rerun(uploads=[upload])  # staff re-run it meanwhile
    services.prediction_feedback_set(prediction=shown, digit=7)

    # History shows the newest prediction: the digit said must be there, and a later re-run must keep it.
    (listed,) = selectors.upload_list_for_user(user=user, filters=selectors.UploadFilters())
    assert listed.latest_prediction_id == newest.pk and listed.latest_feedback == 7
    assert Prediction.objects.get(pk=shown.pk).feedback == 7
    assert services.predictions_rerun(uploads=[upload])[0].feedback == 7


@pytest.mark.skipif(connection.vendor != "postgresql", reason="row locks and concurrent writers")
@pytest.mark.django_db(transaction=True)  # two connections, each committing by itself
def test_feedback_given_while_a_re_run_replaces_the_prediction_is_carried_to_the_new_one(user, digit_png, published):
    import threading

    upload = services.upload_create(owner=user, file=io.BytesIO(digit_png(7)), source="file")
    shown = services.prediction_create(upload=upload)
    feedback_read, feedback_given, made = threading.Event(), threading.Event(), []

    def pause_after_reading_feedback(execute, sql, params, many, context):
        result = execute(sql, params, many, context)
        if sql.startswith("SELECT") and '"feedback"' in sql and not feedback_read.is_set():
            feedback_read.set()
            # A re-run that rightly holds the upload until it commits makes the feedback wait instead: on after 2 s.
            feedback_given.wait(2)
        return result

    def re_run() -> None:
        try:
            with connection.execute_wrapper(pause_after_reading_feedback):
                made.extend(services.predictions_rerun(uploads=[upload]))
        finally:
            connection.close()

    other = threading.Thread(target=re_run)
    other.start()
    assert feedback_read.wait(5)
    services.prediction_feedback_set(prediction=shown, digit=7)
    feedback_given.set()
    other.join()

    (newest,) = made
    (listed,) = selectors.upload_list_for_user(user=user, filters=selectors.UploadFilters())
    assert listed.latest_prediction_id == newest.pk and listed.latest_feedback == 7


def test_upload_delete_removes_the_rows_and_the_file(user, digit_png, active_checkpoint, django_capture_on_commit_callbacks):
    upload = services.upload_create(owner=user, file=io.BytesIO(digit_png(0)), source="file")
    (prediction,) = services.predictions_create(uploads=[upload], publish=False)
    services.prediction_execute(prediction_id=prediction.pk)
    files = [Path(upload.image.path)]
    assert all(f.is_file() for f in files)
    with django_capture_on_commit_callbacks(execute=True):
        services.upload_delete(upload=upload)
    assert not Upload.objects.exists() and not Prediction.objects.exists()
    assert not any(f.exists() for f in files)


def test_deleting_a_user_deletes_their_uploaded_files_once_committed(
    user, other_user, digit_png, django_capture_on_commit_callbacks
):
    theirs = [services.upload_create(owner=user, file=io.BytesIO(digit_png(i)), source="file") for i in range(2)]
    kept = services.upload_create(owner=other_user, file=io.BytesIO(digit_png(2)), source="file")
    with django_capture_on_commit_callbacks(execute=False) as pending:
        user.delete()
    # Nothing leaves the disk before the rows are gone for good.
    assert all(Path(upload.image.path).is_file() for upload in theirs)
    for callback in pending:
        callback()
    assert not any(Path(upload.image.path).exists() for upload in theirs)
    assert Path(kept.image.path).is_file() and list(Upload.objects.all()) == [kept]


def test_rerun_creates_a_new_pending_prediction(user, digit_png, published, django_capture_on_commit_callbacks):
    upload = services.upload_create(owner=user, file=io.BytesIO(digit_png(0)), source="file")
    with django_capture_on_commit_callbacks(execute=True):
        (first,) = services.predictions_rerun(uploads=[upload])
        (second,) = services.predictions_rerun(uploads=[upload])
    # Two messages: Kombu's filesystem broker orders those sent within one millisecond at random.
    assert first.pk != second.pk and sorted(published.prediction_ids()) == [first.pk, second.pk]


def test_reruns_send_nothing_before_the_transaction_commits(
    user, digit_png, published, django_capture_on_commit_callbacks
):
    uploads = [services.upload_create(owner=user, file=io.BytesIO(digit_png(i)), source="file") for i in range(2)]
    with django_capture_on_commit_callbacks(execute=True):
        again = services.predictions_rerun(uploads=uploads)
        assert published.prediction_ids() == []  # nothing leaves before the commit
    assert published.prediction_ids() == [prediction.pk for prediction in again]
    assert {p.status for p in Prediction.objects.filter(pk__in=[p.pk for p in again])} == {"pending"}


def test_a_rerun_keeps_the_digit_the_owner_last_said_the_image_shows(user, digit_png, published):
    said_three, said_nothing = (
        services.upload_create(owner=user, file=io.BytesIO(digit_png(i)), source="file") for i in (3, 5)
    )
    first = services.prediction_create(upload=said_three)
    services.prediction_feedback_set(prediction=first, digit=8)
    services.prediction_feedback_set(prediction=services.prediction_create(upload=said_three), digit=3)
    services.prediction_create(upload=said_nothing)
    again = services.predictions_rerun(uploads=[said_three, said_nothing])
    assert [prediction.feedback for prediction in again] == [3, None]
    assert [p.feedback for p in Prediction.objects.filter(pk__in=[p.pk for p in again]).order_by("upload_id")] == [
        3, None]
    # Cleared on the newest prediction: cleared it stays, not brought back from an older one.
    services.prediction_feedback_set(prediction=again[0], digit=None)
    assert services.predictions_rerun(uploads=[said_three])[0].feedback is None


def test_reading_an_upload_without_predictions_makes_one_however_often_asked(user, digit_png, published):
    upload = services.upload_create(owner=user, file=io.BytesIO(digit_png(0)), source="file")

    first = services.upload_read(upload=upload)
    again = services.upload_read(upload=upload)

    assert first.pk == again.pk and list(upload.predictions.all()) == [first]


def test_reading_an_upload_deleted_meanwhile_says_so(user, digit_png, published):
    upload = services.upload_create(owner=user, file=io.BytesIO(digit_png(0)), source="file")
    services.upload_delete(upload=Upload.objects.get(pk=upload.pk))

    with pytest.raises(Upload.DoesNotExist):
        services.upload_read(upload=upload)
    assert not Prediction.objects.exists()


def test_a_sample_image_is_registered_once_per_set(tmp_path, digit_png):
    path = tmp_path / "3_sample.png"
    path.write_bytes(digit_png(0))
    owner = services.samples_user_get_or_create()
    assert not owner.has_usable_password()
    first, created = services.sample_upload_get_or_create(owner=owner, path=path, sample_set="other", label=3)
    again, created_again = services.sample_upload_get_or_create(owner=owner, path=path, sample_set="other", label=3)
    assert created and not created_again and first.pk == again.pk
    assert first.source == "sample" and first.label == 3


def test_a_samples_account_someone_can_log_in_to_is_not_taken_as_the_samples_owner(django_user_model):
    django_user_model.objects.create_user(username="samples", password="mallory's password")
    with pytest.raises(services.SamplesOwnerError, match="rename it"):
        services.samples_user_get_or_create()


def test_storing_an_upload_batch_on_postgresql_is_one_statement(user, digit_png):
    if connection.vendor != "postgresql":
        pytest.skip("the single-statement insert is PostgreSQL's")
    files = [(io.BytesIO(digit_png(digit)), f"{digit}.png") for digit in (1, 2, 3)]
    with CaptureQueriesContext(connection) as queries:
        predictions = services.predictions_submit(owner=user, files=files, source="file")
    assert len(queries) == 1
    stored = {p.pk: p.upload.original_name for p in Prediction.objects.select_related("upload")}
    assert stored == {p.pk: f"{digit}.png" for p, digit in zip(predictions, (1, 2, 3), strict=True)}
    assert all(p.status == "pending" and p.publish_attempts == 1 for p in Prediction.objects.all())


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


def test_the_orphan_sweep_sets_aside_only_files_no_upload_names_once_they_are_an_hour_old(user, digit_png, settings):
    import os

    from django.core.files.base import ContentFile
    from django.core.files.storage import default_storage

    kept = services.upload_create(owner=user, file=io.BytesIO(digit_png(0)), source="file").image.name
    folder = kept.rsplit("/", 1)[0]
    # Midday of the folder's day: the hours the sweep looks back over then lie in it, whatever the time of the run
    # (just after midnight they are yesterday's).
    now = dt.datetime.strptime(folder, "uploads/%Y/%m/%d").replace(hour=12, tzinfo=dt.timezone.utc)
    orphan = default_storage.save(f"{folder}/orphan.png", ContentFile(b"left by a killed process"))
    young = default_storage.save(f"{folder}/young.png", ContentFile(b"its row is about to be inserted"))
    for name, age in ((kept, 2), (orphan, 2), (young, 0.1)):
        moment = (now - dt.timedelta(hours=age)).timestamp()
        os.utime(default_storage.path(name), (moment, moment))

    assert services.upload_files_orphaned_delete(now=now) == 1
    assert not default_storage.exists(orphan)
    assert default_storage.exists(kept) and default_storage.exists(young)


def test_the_daily_orphan_sweep_also_sets_aside_old_files_whose_upload_is_gone(user, digit_png):
    import os

    from django.core.files.base import ContentFile
    from django.core.files.storage import default_storage

    kept, deleted = (services.upload_create(owner=user, file=io.BytesIO(digit_png(d)), source="file") for d in (0, 1))
    # The file goes once the deletion commits, which this test's transaction never does: as for a process killed
    # after the commit, before it removed the file, or a volume that refused the removal.
    services.upload_delete(upload=deleted)
    left_behind = deleted.image.name
    young = default_storage.save(f"{left_behind.rsplit('/', 1)[0]}/young.png", ContentFile(b"its row is on its way"))
    month_ago = (timezone.now() - dt.timedelta(days=30)).timestamp()
    for name in (kept.image.name, left_behind):
        os.utime(default_storage.path(name), (month_ago, month_ago))

    assert services.upload_files_orphaned_delete() == 0  # the hourly sweep looks at the last hours only
    assert services.upload_files_orphaned_delete(everything=True) == 1
    assert not default_storage.exists(left_behind)
    assert default_storage.exists(kept.image.name) and default_storage.exists(young)


def test_the_daily_sweep_sets_aside_the_model_input_files_of_the_release_before_they_moved_into_the_rows():
    from django.core.files.base import ContentFile
    from django.core.files.storage import default_storage

    old = default_storage.save("derived/inputs/0a1b.png", ContentFile(b"a 28x28 model input of classifier/0002"))

    services.upload_files_orphaned_delete()
    assert default_storage.exists(old)  # the hourly sweep looks at upload folders only
    services.upload_files_orphaned_delete(everything=True)
    assert not default_storage.exists(old)
    assert default_storage.exists(f"orphaned/{old}")


def test_the_sweep_against_a_database_that_lost_the_rows_sets_the_files_aside_to_be_moved_back(user, digit_png):
    import os

    from django.core.files.storage import default_storage

    upload = services.upload_create(owner=user, file=io.BytesIO(digit_png(4)), source="file")
    name, content = upload.image.name, default_storage.open(upload.image.name).read()
    # As after a restore of an older backup: the file is there, its row is not.
    Upload.objects.filter(pk=upload.pk).delete()
    day_ago = (timezone.now() - dt.timedelta(days=1)).timestamp()
    os.utime(default_storage.path(name), (day_ago, day_ago))

    assert services.upload_files_orphaned_delete(everything=True) == 1

    assert not default_storage.exists(name)
    with default_storage.open(f"{services.ORPHANED_FOLDER}/{name}") as set_aside:
        assert set_aside.read() == content


def test_files_set_aside_are_deleted_by_the_daily_sweep_once_kept_for_the_keep_period(user, digit_png, settings):
    import os

    from django.core.files.storage import default_storage

    upload = services.upload_create(owner=user, file=io.BytesIO(digit_png(5)), source="file")
    Upload.objects.filter(pk=upload.pk).delete()
    day_ago = (timezone.now() - dt.timedelta(days=1)).timestamp()
    os.utime(default_storage.path(upload.image.name), (day_ago, day_ago))
    assert services.upload_files_orphaned_delete(everything=True) == 1
    set_aside = f"{services.ORPHANED_FOLDER}/{upload.image.name}"

    keep = dt.timedelta(days=settings.ORPHANED_FILES_KEEP_DAYS)
    services.upload_files_orphaned_delete(everything=True, now=timezone.now() + keep - dt.timedelta(hours=1))
    assert default_storage.exists(set_aside)
    services.upload_files_orphaned_delete(everything=True, now=timezone.now() + keep + dt.timedelta(hours=1))
    assert not default_storage.exists(set_aside)


def _use_of(owner) -> int:
    return StorageUse.objects.get(owner=owner).bytes


def test_uploads_count_towards_their_owners_storage_and_a_deletion_gives_it_back(user, other_user, digit_png):
    (first,) = services.predictions_submit(owner=user, files=[(io.BytesIO(digit_png(0)), "0.png")], source="file")
    services.predictions_submit(owner=user, files=[(io.BytesIO(digit_png(1)), "1.png"), (io.BytesIO(digit_png(2)), "2.png")],
                                source="file")
    sizes = [stored_size(digit_png(index)) for index in range(3)]
    assert _use_of(user) == sum(sizes)
    assert not StorageUse.objects.filter(owner=other_user).exists()

    services.upload_delete(upload=first.upload)
    assert _use_of(user) == sizes[1] + sizes[2]


def test_an_upload_past_its_owners_quota_is_refused_saying_so_and_stores_nothing(user, digit_png, settings):
    settings.UPLOAD_QUOTA_MB = 1
    services.predictions_submit(owner=user, files=[(io.BytesIO(digit_png(0)), "0.png")], source="file")
    # Nearly full: what the owner stored before leaves less room than one more digit takes.
    StorageUse.objects.filter(owner=user).update(bytes=2**20 - stored_size(digit_png(1)) + 1)
    files_before = _stored_files()

    with pytest.raises(services.UploadQuotaError, match=r"past your allowance of 1\.0\s+MB, of which [\d.]+\s+KB is in use"):
        services.predictions_submit(owner=user, files=[(io.BytesIO(digit_png(1)), "1.png")], source="file")

    assert Upload.objects.count() == 1 and Prediction.objects.count() == 1
    assert _stored_files() == files_before
    assert _use_of(user) == 2**20 - stored_size(digit_png(1)) + 1
    # Exactly up to the allowance is still allowed.
    StorageUse.objects.filter(owner=user).update(bytes=2**20 - stored_size(digit_png(1)))
    services.predictions_submit(owner=user, files=[(io.BytesIO(digit_png(1)), "1.png")], source="file")
    assert _use_of(user) == 2**20


def test_without_a_quota_uploads_are_still_counted(user, digit_png, settings):
    settings.UPLOAD_QUOTA_MB = 0
    StorageUse.objects.create(owner=user, bytes=2**40)
    services.predictions_submit(owner=user, files=[(io.BytesIO(digit_png(0)), "0.png")], source="file")
    assert _use_of(user) == 2**40 + stored_size(digit_png(0))


def test_the_recount_corrects_every_owners_storage_from_their_uploads(user, other_user, digit_png):
    services.predictions_submit(owner=user, files=[(io.BytesIO(digit_png(0)), "0.png")], source="file")
    services.predictions_submit(owner=other_user, files=[(io.BytesIO(digit_png(1)), "1.png")], source="file")
    # As after uploads a release from before the quota stored while its migration ran, or rows deleted by hand.
    StorageUse.objects.filter(owner=user).update(bytes=5)
    StorageUse.objects.filter(owner=other_user).delete()
    nobody = StorageUse.objects.create(owner=type(user).objects.create_user(username="carol"), bytes=77)

    assert services.storage_use_recount() == 3
    assert _use_of(user) == stored_size(digit_png(0)) and _use_of(other_user) == stored_size(digit_png(1))
    assert StorageUse.objects.get(pk=nobody.pk).bytes == 0
    assert services.storage_use_recount() == 0


def test_uploads_stored_past_the_quota_on_purpose_are_counted_too(user, digit_png, settings):
    # The sample sets and the command line store through upload_create, which no quota holds back.
    settings.UPLOAD_QUOTA_MB = 1
    StorageUse.objects.create(owner=user, bytes=2**20)
    services.upload_create(owner=user, file=io.BytesIO(digit_png(0)), source="file")
    assert _use_of(user) == 2**20 + stored_size(digit_png(0))


def test_deleting_an_upload_twice_gives_its_bytes_back_once(user, digit_png):
    services.predictions_submit(owner=user, files=[(io.BytesIO(digit_png(0)), "0.png")], source="file")
    (prediction,) = services.predictions_submit(owner=user, files=[(io.BytesIO(digit_png(1)), "1.png")], source="file")
    # Two requests for one deletion (a double click, a retried API call): each loaded the upload before either ran.
    first, second = Upload.objects.get(pk=prediction.upload_id), Upload.objects.get(pk=prediction.upload_id)
    services.upload_delete(upload=first)
    services.upload_delete(upload=second)
    assert _use_of(user) == stored_size(digit_png(0))


def test_the_daily_sweep_keeps_model_input_files_until_their_migration_has_read_them(settings):
    from django.core.files.base import ContentFile
    from django.core.files.storage import default_storage
    from django.db.migrations.recorder import MigrationRecorder

    old = default_storage.save("derived/inputs/0a1b.png", ContentFile(b"a 28x28 model input of classifier/0002"))
    # As on a release upgraded past classifier/0003 whose migrations have not run yet.
    MigrationRecorder(connection).migration_qs.filter(app="classifier", name__startswith="0003_").delete()
    services.upload_files_orphaned_delete(everything=True)
    assert default_storage.exists(old)


def test_the_quota_counts_an_upload_as_stored_not_as_sent(user):
    # Noise squeezed into a small JPEG takes many times that once stored as PNG, and the volume holds the PNG.
    noise = np.random.default_rng(0).integers(0, 256, (256, 256), dtype=np.uint8)
    jpeg = png_bytes(Image.fromarray(noise), fmt="JPEG", quality=5)
    (prediction,) = services.predictions_submit(owner=user, files=[(io.BytesIO(jpeg), "noise.jpg")], source="file")
    upload = prediction.upload
    assert upload.stored_size == upload.image.size > 3 * len(jpeg)
    assert _use_of(user) == upload.stored_size


def test_uploads_stored_before_their_stored_size_was_kept_count_as_sent(user, digit_png):
    (prediction,) = services.predictions_submit(owner=user, files=[(io.BytesIO(digit_png(0)), "0.png")], source="file")
    Upload.objects.filter(pk=prediction.upload_id).update(stored_size=None)
    services.storage_use_recount()
    assert _use_of(user) == len(digit_png(0))
    services.upload_delete(upload=Upload.objects.get(pk=prediction.upload_id))
    assert _use_of(user) == 0


def test_the_idempotency_key_sweep_deletes_only_the_keys_past_their_hours(user, settings):
    settings.IDEMPOTENCY_KEY_TTL_HOURS = 24
    now = timezone.now()
    for key, age in (("expired", dt.timedelta(hours=24, seconds=1)), ("live", dt.timedelta(hours=23, minutes=59))):
        IdempotencyKey.objects.create(owner=user, key=key, fingerprint="0" * 64, prediction_ids=[], created_at=now - age)

    assert services.idempotency_keys_expired_delete(now=now) == 1
    assert list(IdempotencyKey.objects.values_list("key", flat=True)) == ["live"]


def test_a_key_stored_meanwhile_is_reported_in_use_even_inside_a_callers_transaction(user, digit_png):
    # The tests run inside a transaction, as a command or a task wrapping the upload in one would.
    from classifier.idempotency import IdempotencyKeyInUseError, IdempotentUpload

    IdempotencyKey.objects.create(owner=user, key="k", fingerprint="0" * 64, prediction_ids=[])

    with pytest.raises(IdempotencyKeyInUseError):
        services.predictions_submit(
            owner=user, files=[(io.BytesIO(digit_png(0)), "0.png")], source="api",
            idempotency=IdempotentUpload(key="k", fingerprint="1" * 64),
        )
    assert not Upload.objects.exists() and _stored_files() == []


def test_beat_runs_the_idempotency_key_sweep_hourly_as_a_registered_task():
    from classifier import tasks
    from mnistsite.celery import app

    (entry,) = [entry for entry in settings.CELERY_BEAT_SCHEDULE.values()
                if entry["task"] == tasks.idempotency_keys_expired_delete.name]
    assert entry["schedule"] == 3600.0
    assert entry["task"] in app.tasks


def _upload_waiting(owner, digit_png, index: int) -> Upload:
    """An upload of digit ``index`` (each stored at its own size) with a pending prediction."""
    upload = services.upload_create(owner=owner, file=io.BytesIO(digit_png(index)), name=f"{index}.png", source="file")
    services.predictions_create(uploads=[upload], publish=False)
    return upload


def _upload_deletes(queries) -> list[int]:
    """How many uploads each DELETE of upload rows in ``queries`` named."""
    statements = [query["sql"] for query in queries if query["sql"].startswith('DELETE FROM "classifier_upload"')]
    return [len(re.search(r" IN \(([^)]*)\)", sql)[1].split(",")) for sql in statements]


def test_deleting_selected_uploads_deletes_only_the_owners_and_gives_back_exactly_their_bytes(
    user, other_user, digit_png
):
    mine = [_upload_waiting(user, digit_png, index) for index in range(3)]
    theirs = _upload_waiting(other_user, digit_png, 3)
    assert len({upload.stored_bytes for upload in mine}) == 3  # a mix-up of sizes would show

    deleted = services.uploads_delete(owner=user, upload_ids=[mine[0].pk, mine[2].pk, theirs.pk, 2**40])

    assert deleted == 2
    assert set(Upload.objects.values_list("pk", flat=True)) == {mine[1].pk, theirs.pk}
    assert set(Prediction.objects.values_list("upload_id", flat=True)) == {mine[1].pk, theirs.pk}
    assert _use_of(user) == stored_size(digit_png(1)) and _use_of(other_user) == stored_size(digit_png(3))
    assert services.storage_use_recount() == 0
    # Already gone (another tab, a double click): nothing more is deleted or given back.
    assert services.uploads_delete(owner=user, upload_ids=[mine[0].pk]) == 0
    assert _use_of(user) == stored_size(digit_png(1))


def test_the_files_of_uploads_deleted_together_go_only_once_the_deletion_commits(
    user, digit_png, django_capture_on_commit_callbacks
):
    uploads = [_upload_waiting(user, digit_png, index) for index in range(3)]
    files = [Path(upload.image.path) for upload in uploads]

    with django_capture_on_commit_callbacks(execute=False) as pending:
        services.uploads_delete(owner=user, upload_ids=[upload.pk for upload in uploads[:2]])

    assert all(file.is_file() for file in files)
    for callback in pending:
        callback()
    assert [file.exists() for file in files] == [False, False, True]


def test_a_deletion_by_filters_goes_in_batches_of_bounded_size_and_deletes_every_match_and_no_other(
    user, other_user, digit_png
):
    matching = [_upload_waiting(user, digit_png, index) for index in range(7)]
    # Neither has a pending prediction (an administrator deleted theirs), so the filter leaves them out.
    unread = [services.upload_create(owner=user, file=io.BytesIO(digit_png(i)), source="file") for i in (7, 8)]
    theirs = _upload_waiting(other_user, digit_png, 9)

    with CaptureQueriesContext(connection) as queries:
        deleted = services.uploads_delete(
            owner=user, filters=selectors.UploadFilters(status="pending"), batch_size=3
        )

    assert deleted == 7
    assert _upload_deletes(queries.captured_queries) == [3, 3, 1]
    assert set(Upload.objects.values_list("pk", flat=True)) == {unread[0].pk, unread[1].pk, theirs.pk}
    assert not Prediction.objects.filter(upload_id__in=[upload.pk for upload in matching]).exists()
    assert _use_of(user) == stored_size(digit_png(7)) + stored_size(digit_png(8))
    assert _use_of(other_user) == stored_size(digit_png(9))
    assert services.storage_use_recount() == 0


def test_a_deletion_by_filters_leaves_out_uploads_stored_after_it_was_confirmed(user, digit_png):
    offered = [_upload_waiting(user, digit_png, index) for index in range(2)]
    newest = selectors.upload_newest_id_for_user(user=user)
    later = _upload_waiting(user, digit_png, 2)  # in another tab, after the count was shown

    assert services.uploads_delete(owner=user, filters=selectors.UploadFilters(), newest_id=newest) == 2

    assert list(Upload.objects.all()) == [later]
    assert not Upload.objects.filter(pk__in=[upload.pk for upload in offered]).exists()
    assert _use_of(user) == stored_size(digit_png(2))


def test_a_deletion_by_filters_past_its_deadline_stops_after_a_whole_batch_with_the_count_right(user, digit_png):
    uploads = [_upload_waiting(user, digit_png, index) for index in range(5)]

    deleted = services.uploads_delete(
        owner=user, filters=selectors.UploadFilters(), deadline=time.monotonic(), batch_size=2
    )

    # The newest two, as the history lists them.
    assert deleted == 2
    assert set(Upload.objects.values_list("pk", flat=True)) == {upload.pk for upload in uploads[:3]}
    assert _use_of(user) == sum(stored_size(digit_png(index)) for index in range(3))


def test_a_deletion_by_filters_deletes_no_more_than_the_number_confirmed_though_more_came_to_match(user, digit_png):
    uploads = [_upload_waiting(user, digit_png, index) for index in range(3)]
    done = selectors.UploadFilters(status="done")
    Prediction.objects.filter(upload__in=uploads[1:]).update(status="done", digit=7, confidence=0.9)
    newest = selectors.upload_newest_id_for_user(user=user)
    confirmed = selectors.upload_count_for_user(user=user, filters=done, newest_id=newest)
    # The oldest finishes between the confirmation and the deletion.
    Prediction.objects.filter(upload=uploads[0]).update(status="done", digit=1, confidence=0.9)

    deleted = services.uploads_delete(owner=user, filters=done, newest_id=newest, limit=confirmed, batch_size=1)

    assert confirmed == deleted == 2
    assert list(Upload.objects.all()) == [uploads[0]]


@pytest.mark.django_db(transaction=True)
def test_a_deletion_by_filters_cut_off_midway_keeps_what_it_committed_counted_and_the_rest_as_it_was(user, digit_png):
    from django.db import OperationalError

    uploads = [_upload_waiting(user, digit_png, index) for index in range(5)]
    files = {upload.pk: Path(upload.image.path) for upload in uploads}
    batches = []

    def connection_lost_in_the_second_batch(execute, sql, params, many, context):
        if sql.startswith('DELETE FROM "classifier_upload"'):
            batches.append(sql)
            if len(batches) == 2:
                raise OperationalError("server closed the connection unexpectedly")
        return execute(sql, params, many, context)

    with connection.execute_wrapper(connection_lost_in_the_second_batch), pytest.raises(
        services.UploadsDeleteInterruptedError
    ) as stopped:
        services.uploads_delete(owner=user, filters=selectors.UploadFilters(), batch_size=2)

    assert stopped.value.deleted == 2 and isinstance(stopped.value.__cause__, OperationalError)

    left = {upload.pk for upload in uploads[:3]}
    assert set(Upload.objects.values_list("pk", flat=True)) == left
    assert Prediction.objects.count() == 3
    assert _use_of(user) == sum(stored_size(digit_png(index)) for index in range(3))
    assert services.storage_use_recount() == 0
    assert {pk for pk, file in files.items() if file.exists()} == left
    # Asked again, the deletion finishes the job.
    assert services.uploads_delete(owner=user, filters=selectors.UploadFilters(), batch_size=2) == 3
    assert not Upload.objects.exists() and _use_of(user) == 0
    assert not any(file.exists() for file in files.values())


@pytest.mark.skipif(connection.vendor != "postgresql", reason="row locks: SQLite writes one transaction at a time")
@pytest.mark.django_db(transaction=True)
def test_one_upload_deleted_while_a_deletion_of_many_takes_it_too_waits_instead_of_deadlocking(user, digit_png):
    first, second = (_upload_waiting(user, digit_png, index) for index in (0, 1))

    outcome = deletions_race(
        held=lambda: services.upload_delete(upload=Upload.objects.get(pk=second.pk)),
        other=lambda: services.uploads_delete(owner=user, upload_ids=[first.pk, second.pk]),
    )

    assert not [value for value in outcome.values() if isinstance(value, Exception)], outcome
    assert not Upload.objects.exists() and _use_of(user) == 0


def test_selected_uploads_are_deleted_all_or_none(user, digit_png):
    from django.db import OperationalError

    uploads = [_upload_waiting(user, digit_png, index) for index in range(3)]
    used, named = _use_of(user), []

    def lost_once_every_one_was_deleted(execute, sql, params, many, context):
        if sql.startswith('DELETE FROM "classifier_upload"'):
            named.extend(params)
        elif sql.startswith('UPDATE "classifier_storageuse"') and len(named) == len(uploads):
            raise OperationalError("server closed the connection unexpectedly")
        return execute(sql, params, many, context)

    with connection.execute_wrapper(lost_once_every_one_was_deleted), pytest.raises(OperationalError):
        services.uploads_delete(owner=user, upload_ids=[upload.pk for upload in uploads])

    assert Upload.objects.count() == 3 and Prediction.objects.count() == 3
    assert _use_of(user) == used
    assert all(Path(upload.image.path).is_file() for upload in uploads)


def test_more_uploads_than_may_be_selected_at_once_are_refused_and_none_is_deleted(user, digit_png):
    upload = _upload_waiting(user, digit_png, 0)
    ids = [upload.pk, *range(10**9, 10**9 + services.UPLOADS_DELETE_MAX_SELECTED)]

    with pytest.raises(services.UploadsDeleteError, match="At most 500 uploads"):
        services.uploads_delete(owner=user, upload_ids=ids)

    assert list(Upload.objects.all()) == [upload]


def test_deleting_uploads_whose_predictions_a_worker_is_computing_leaves_the_worker_to_finish_the_rest(
    user, digit_png, active_checkpoint, monkeypatch, django_capture_on_commit_callbacks, caplog
):
    from mnistsite.storage import MediaStorage

    first = services.upload_create(owner=user, file=io.BytesIO(digit_png(0)), source="file")
    second = services.upload_create(owner=user, file=io.BytesIO(digit_png(1)), source="file")
    gone, kept = services.predictions_create(uploads=[first, second], publish=False)
    real_open, opened = MediaStorage.open, []

    def deleted_by_its_owner_as_the_worker_reads_it(self, name, mode="rb"):
        if not opened:
            # Claimed and running: the owner deletes the first upload, its file included, before the worker reads it.
            with django_capture_on_commit_callbacks(execute=True):
                assert services.uploads_delete(owner=user, upload_ids=[first.pk]) == 1
        opened.append(name)
        return real_open(self, name, mode)

    monkeypatch.setattr(MediaStorage, "open", deleted_by_its_owner_as_the_worker_reads_it)
    finished = services.predictions_execute(prediction_ids=[gone.pk, kept.pk])

    assert opened == [first.image.name, second.image.name]
    assert [prediction.pk for prediction in finished] == [kept.pk]
    assert Prediction.objects.get(pk=kept.pk).status == "done"
    assert not Prediction.objects.filter(pk=gone.pk).exists() and not Upload.objects.filter(pk=first.pk).exists()
    # A deletion is the owner's to make: nothing for an operator to look into, nor a claim said to be lost.
    assert not [record for record in caplog.records if record.levelname in ("WARNING", "ERROR")]
    # Asked again for it (a redelivered message), the worker finds nothing to do.
    assert services.predictions_execute(prediction_ids=[gone.pk]) == []


def test_a_batch_is_stored_through_a_storage_without_batch_writes(user, digit_png, settings, tmp_path):
    # Another backend than the media storage (an object store, say) gets one save a file.
    settings.STORAGES = {**settings.STORAGES, "default": {
        "BACKEND": "django.core.files.storage.FileSystemStorage", "OPTIONS": {"location": str(tmp_path)}}}
    files = [(io.BytesIO(digit_png(i)), f"{i}.png") for i in range(2)]
    predictions = services.predictions_submit(owner=user, files=files, source="file")
    stored = sorted(str(path.relative_to(tmp_path)) for path in tmp_path.rglob("*.png"))
    assert stored == sorted(p.upload.image.name for p in predictions) and len(stored) == 2


@pytest.mark.django_db(transaction=True)  # the deletion commits before the insert, as another request's would
def test_an_upload_whose_owner_is_deleted_meanwhile_is_refused_saying_so_and_stores_nothing(user, digit_png, published):
    wrapper, deleted = account_deleted_just_before_the_insert(user)
    files = [(io.BytesIO(digit_png(i)), f"{i}.png") for i in range(2)]
    with connection.execute_wrapper(wrapper), pytest.raises(services.UploadOwnerDeletedError) as info:
        services.predictions_submit(owner=user, files=files, source="file")

    assert deleted and "nothing was stored" in str(info.value)
    assert not Upload.objects.exists() and not Prediction.objects.exists() and not StorageUse.objects.exists()
    assert _stored_files() == []
    assert published.prediction_ids() == []


def _keyed_upload_whose_predictions_staff_deleted(user, digit_png):
    """Two images uploaded with the key "k", their predictions then deleted; what a repeat of it sends, and them."""
    from classifier.idempotency import IdempotentUpload, upload_fingerprint

    def request() -> IdempotentUpload:
        files = [("images", io.BytesIO(digit_png(i)), f"{i}.png") for i in range(2)]
        return IdempotentUpload(key="k", fingerprint=upload_fingerprint(files))

    files = [(io.BytesIO(digit_png(i)), f"{i}.png") for i in range(2)]
    made = services.predictions_submit(owner=user, files=files, source="api", idempotency=request())
    Prediction.objects.filter(pk__in=[prediction.pk for prediction in made]).delete()
    return request, made


def test_replaying_a_key_whose_predictions_staff_deleted_makes_one_new_prediction_for_each_upload_left(
    user, digit_png, published
):
    request, made = _keyed_upload_whose_predictions_staff_deleted(user, digit_png)

    first = services.idempotent_upload_replay(user=user, idempotency=request())
    again = services.idempotent_upload_replay(user=user, idempotency=request())

    assert [p.upload_id for p in first] == [p.upload.pk for p in made]
    assert [p.pk for p in again] == [p.pk for p in first] and Prediction.objects.count() == 2
    assert Upload.objects.count() == 2


def test_replaying_a_key_one_of_whose_uploads_is_gone_makes_nothing_for_the_others(user, digit_png):
    from classifier.idempotency import IdempotentUploadsDeletedError

    request, made = _keyed_upload_whose_predictions_staff_deleted(user, digit_png)
    services.upload_delete(upload=Upload.objects.get(pk=made[1].upload.pk))

    with pytest.raises(IdempotentUploadsDeletedError, match="1 of the 2 images"):
        services.idempotent_upload_replay(user=user, idempotency=request())
    assert not Prediction.objects.exists() and Upload.objects.count() == 1
