"""Prediction-making services (create, re-run, sweep, clocks), run in-process against the real database."""
import datetime as dt
import io
import uuid

import pytest
from django.utils import timezone

from classifier import services, statements
from classifier.models import Prediction, Upload

pytestmark = pytest.mark.django_db


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


@pytest.mark.django_db(transaction=True)
def test_a_rerun_of_uploads_one_of_which_was_deleted_meanwhile_makes_predictions_for_the_others(
    user, digit_png, published
):
    kept, deleted = (services.upload_create(owner=user, file=io.BytesIO(digit_png(i)), source="file") for i in (1, 2))
    # Read by the caller (a list of uploads to re-run), then deleted by their owner before the re-run took them.
    services.upload_delete(upload=Upload.objects.get(pk=deleted.pk))

    again = services.predictions_rerun(uploads=[kept, deleted])

    assert [prediction.upload_id for prediction in again] == [kept.pk]
    assert list(Prediction.objects.values_list("upload_id", flat=True)) == [kept.pk]


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
