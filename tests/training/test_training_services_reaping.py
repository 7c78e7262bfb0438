"""Training services: the reaper, resuming or failing runs whose trainer went silent and resending lost queued runs."""
from datetime import timedelta

import pytest
from django.conf import settings
from django.utils import timezone

from mnistsite.database_now import Now
from training import services
from training.ml.atomic import sha256_file
from tests.processes import NO_BROKER_URL, broker_switched
from training.models import TrainingRun

pytestmark = pytest.mark.django_db


def _create(recipe, **overrides):
    return services.training_run_create(created_by=None, enqueue=False, **{**recipe, **overrides})


def _sent_run_ids(queue) -> list[int]:
    return [message["kwargs"]["run_id"] for message in queue.messages()]


def test_a_run_whose_message_could_not_be_published_is_republished_by_the_reaper(tiny_recipe, training_queue, settings):
    with broker_switched(settings, NO_BROKER_URL):
        run = _create(tiny_recipe)
        assert services.training_run_publish(run_id=run.pk) is None
    run.refresh_from_db()
    assert run.celery_task_id == ""
    outcome = services.training_runs_reap(now=timezone.now() + timedelta(minutes=5))
    assert outcome["republished"] == [run.pk]
    assert _sent_run_ids(training_queue) == [run.pk]


def _publish_and_lose(run, queue):
    """Send the run's message, then lose it the way a broker restarted without its data would."""
    assert services.training_run_publish(run_id=run.pk)
    assert _sent_run_ids(queue) == [run.pk]
    queue.purge()
    run.refresh_from_db()
    return run


def test_a_queued_run_whose_message_was_lost_is_sent_again_once_no_run_is_running(
    tiny_recipe, training_queue, settings
):
    run = _publish_and_lose(_create(tiny_recipe), training_queue)
    assert run.published_at is not None
    soon = run.published_at + timedelta(seconds=settings.TRAINING_REPUBLISH_AFTER_SECONDS - 5)
    assert services.training_runs_reap(now=soon)["republished"] == []
    later = run.published_at + timedelta(seconds=settings.TRAINING_REPUBLISH_AFTER_SECONDS + 5)
    assert services.training_runs_reap(now=later)["republished"] == [run.pk]
    (message,) = training_queue.messages()
    resent = TrainingRun.objects.get(pk=run.pk)
    assert message["id"] == resent.celery_task_id != run.celery_task_id
    assert resent.published_at > run.published_at and resent.status == TrainingRun.Status.QUEUED


def test_a_queued_run_whose_message_still_waits_for_a_trainer_is_not_sent_again_until_it_is_lost(
    tiny_recipe, training_queue, settings
):
    run = _create(tiny_recipe)
    assert services.training_run_publish(run_id=run.pk)  # no trainer is up to take it
    run.refresh_from_db()
    later = run.published_at + timedelta(seconds=settings.TRAINING_REPUBLISH_AFTER_SECONDS + 5)
    assert services.training_runs_reap(now=later)["republished"] == []
    # Lost after all (here taken off the queue by reading it): then it is sent again.
    assert _sent_run_ids(training_queue) == [run.pk]
    assert services.training_runs_reap(now=later)["republished"] == [run.pk]
    assert _sent_run_ids(training_queue) == [run.pk]


def test_a_lost_message_is_sent_again_even_while_another_runs_message_waits_for_a_trainer(
    tiny_recipe, training_queue, settings
):
    lost = _publish_and_lose(_create(tiny_recipe), training_queue)
    waiting = _create(tiny_recipe)
    assert services.training_run_publish(run_id=waiting.pk)
    later = lost.published_at + timedelta(seconds=settings.TRAINING_REPUBLISH_AFTER_SECONDS + 5)
    # One message for two queued runs: one was lost, and which one the queue cannot say, so both go again.
    assert sorted(services.training_runs_reap(now=later)["republished"]) == sorted([lost.pk, waiting.pk])
    # Now a message waits for each: nothing more is sent, however long no trainer comes.
    assert services.training_runs_reap(now=later + timedelta(hours=1))["republished"] == []
    assert sorted(_sent_run_ids(training_queue)) == sorted([waiting.pk, lost.pk, waiting.pk])


def test_a_queued_run_waiting_behind_a_running_one_is_not_sent_again(tiny_recipe, training_queue, settings):
    waiting = _publish_and_lose(_create(tiny_recipe), training_queue)
    later = waiting.published_at + timedelta(seconds=settings.TRAINING_REPUBLISH_AFTER_SECONDS + 5)
    busy = _create(tiny_recipe)
    # Its trainer is alive: the heartbeat is fresh at the reaper's "now".
    TrainingRun.objects.filter(pk=busy.pk).update(
        status=TrainingRun.Status.RUNNING, attempts=1, started_at=timezone.now(), heartbeat_at=later
    )
    assert services.training_runs_reap(now=later)["republished"] == []
    assert training_queue.messages() == []


def _make_stale(run, *, attempts):
    old = timezone.now() - timedelta(seconds=settings.TRAINING_STALE_AFTER_SECONDS + 30)
    TrainingRun.objects.filter(pk=run.pk).update(
        status=TrainingRun.Status.RUNNING, attempts=attempts, started_at=old, heartbeat_at=old
    )


def test_the_reaper_fails_a_stale_run_that_has_used_all_its_attempts(tiny_recipe):
    run = _create(tiny_recipe)
    _make_stale(run, attempts=services.MAX_ATTEMPTS)
    assert services.training_runs_reap()["failed"] == [run.pk]
    run.refresh_from_db()
    assert run.status == TrainingRun.Status.FAILED and "worker stopped responding" in run.error


def test_the_reaper_fails_a_run_started_long_ago_that_never_beat_and_leaves_one_just_started(tiny_recipe):
    # A running run without any heartbeat (a row set so by hand, say) is judged by when it started.
    silent, starting = _create(tiny_recipe), _create(tiny_recipe)
    _make_stale(silent, attempts=services.MAX_ATTEMPTS)
    TrainingRun.objects.filter(pk=silent.pk).update(heartbeat_at=None)
    TrainingRun.objects.filter(pk=starting.pk).update(
        status=TrainingRun.Status.RUNNING, attempts=1, started_at=timezone.now(), heartbeat_at=None
    )

    assert services.training_runs_reap()["failed"] == [silent.pk]
    assert TrainingRun.objects.get(pk=starting.pk).status == TrainingRun.Status.RUNNING


def test_the_reaper_leaves_a_run_with_a_fresh_heartbeat_alone(tiny_recipe):
    run = _create(tiny_recipe)
    TrainingRun.objects.filter(pk=run.pk).update(
        status=TrainingRun.Status.RUNNING, attempts=1, started_at=timezone.now(), heartbeat_at=timezone.now()
    )
    assert services.training_runs_reap() == {"requeued": [], "failed": [], "cancelled": [], "republished": []}
    run.refresh_from_db()
    assert run.status == TrainingRun.Status.RUNNING


def test_a_run_on_a_trainer_whose_clock_is_slow_is_not_taken_for_dead(tiny_recipe, monkeypatch):
    # The trainer and the reaper run on different hosts; only the database's clock is the same for both.
    right_time = timezone.now
    monkeypatch.setattr(timezone, "now", lambda: right_time() - timedelta(minutes=3))
    run = _create(tiny_recipe)
    outcomes = []

    def reap_on_a_host_whose_clock_is_right(fraction, epoch, step, eta):
        with monkeypatch.context() as reaper_host:
            reaper_host.setattr(timezone, "now", right_time)
            outcomes.append(services.training_runs_reap())

    services.training_run_execute(run_id=run.pk, on_progress=reap_on_a_host_whose_clock_is_right)
    run.refresh_from_db()
    assert outcomes and all(outcome["requeued"] == [] for outcome in outcomes)
    assert (run.status, run.attempts) == (TrainingRun.Status.SUCCEEDED, 1), run.error


def test_a_heartbeat_on_the_databases_clock_is_fresh_to_a_reaper_whose_clock_runs_ahead(tiny_recipe, monkeypatch):
    run = _create(tiny_recipe)
    TrainingRun.objects.filter(pk=run.pk).update(
        status=TrainingRun.Status.RUNNING, attempts=1, started_at=Now(), heartbeat_at=Now()
    )
    right_time = timezone.now
    monkeypatch.setattr(timezone, "now", lambda: right_time() + timedelta(minutes=3))
    assert services.training_runs_reap() == {"requeued": [], "failed": [], "cancelled": [], "republished": []}
    assert TrainingRun.objects.get(pk=run.pk).status == TrainingRun.Status.RUNNING


def test_a_run_created_on_a_web_host_whose_clock_runs_ahead_is_resent_on_time(tiny_recipe, training_queue, settings,
                                                                              monkeypatch):
    right_time = timezone.now
    monkeypatch.setattr(timezone, "now", lambda: right_time() + timedelta(minutes=5))
    with broker_switched(settings, NO_BROKER_URL):
        run = _create(tiny_recipe)
        assert services.training_run_publish(run_id=run.pk) is None
    assert abs(run.created_at - right_time()) < timedelta(minutes=1)
    monkeypatch.setattr(timezone, "now", right_time)
    assert services.training_runs_reap(now=right_time() + timedelta(minutes=1))["republished"] == [run.pk]
    assert _sent_run_ids(training_queue) == [run.pk]


def test_the_reaper_cancels_a_stale_run_that_was_asked_to_cancel(tiny_recipe):
    run = _create(tiny_recipe)
    _make_stale(run, attempts=1)
    TrainingRun.objects.filter(pk=run.pk).update(cancel_requested=True)
    assert services.training_runs_reap()["cancelled"] == [run.pk]


def test_a_stale_run_is_requeued_and_resumes_from_its_last_epoch_checkpoint(
    tiny_recipe, training_queue, django_capture_on_commit_callbacks
):
    run = _create(tiny_recipe, epochs=2)

    class WorkerDied(BaseException):
        pass

    def die_in_epoch_two(fraction, epoch, step, eta):
        if epoch == 2:
            raise WorkerDied

    with pytest.raises(WorkerDied):
        services.training_run_execute(run_id=run.pk, on_progress=die_in_epoch_two)
    first_epoch = TrainingRun.objects.get(pk=run.pk).metrics[0]
    # What a killed worker leaves behind: still "running", heartbeat going stale.
    _make_stale(run, attempts=1)

    with django_capture_on_commit_callbacks(execute=True):
        assert services.training_runs_reap()["requeued"] == [run.pk]
    assert _sent_run_ids(training_queue) == [run.pk]
    assert TrainingRun.objects.get(pk=run.pk).status == TrainingRun.Status.QUEUED

    epochs_trained = set()
    services.training_run_execute(run_id=run.pk, on_progress=lambda f, epoch, s, e: epochs_trained.add(epoch))
    run.refresh_from_db()
    assert run.status == TrainingRun.Status.SUCCEEDED, run.error
    assert epochs_trained == {2} and run.attempts == 2
    assert run.metrics[0] == first_epoch and [row["epoch"] for row in run.metrics] == [1, 2]
    assert run.error == ""


def test_the_reaper_clears_the_temp_files_of_writes_killed_in_a_run_it_gives_up_on_and_keeps_its_checkpoints(
    tiny_recipe, make_run_with_checkpoints, killed_write
):
    run, checkpoints = make_run_with_checkpoints(status=TrainingRun.Status.RUNNING, epochs=1)
    _make_stale(run, attempts=services.MAX_ATTEMPTS)
    attempt = services.run_files.run_dir(run) / "attempt-1"
    left = killed_write(attempt / "epoch-2.pt", age_s=services.ABANDONED_TEMP_FILE_AGE_S + 60)
    # A write under way (its file written to a moment ago) is left to finish.
    under_way = killed_write(attempt / "final.pt")
    assert services.training_runs_reap()["failed"] == [run.pk]
    assert not left.exists() and under_way.exists()
    assert sha256_file(settings.CHECKPOINT_DIR / checkpoints["epoch-1"].path) == checkpoints["epoch-1"].sha256
