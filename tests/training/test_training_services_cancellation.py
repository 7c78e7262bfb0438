"""Training services: cancelling runs, queued ones at once and running ones at their next step."""
from datetime import timedelta

import pytest
from django.conf import settings
from django.db import connection
from django.utils import timezone

from tests.training.fixtures import HeldInAnotherConnection
from training import services
from training.models import Checkpoint, TrainingRun

pytestmark = pytest.mark.django_db


def _create(recipe, **overrides):
    return services.training_run_create(created_by=None, enqueue=False, **{**recipe, **overrides})


def _shut_down_in_epoch_two(fraction, epoch, step, eta):
    # What a worker's pool process raises when the worker is stopped (a cold shutdown, a terminate).
    if epoch == 2:
        raise SystemExit(15)


def _make_stale(run, *, attempts):
    old = timezone.now() - timedelta(seconds=settings.TRAINING_STALE_AFTER_SECONDS + 30)
    TrainingRun.objects.filter(pk=run.pk).update(
        status=TrainingRun.Status.RUNNING, attempts=attempts, started_at=old, heartbeat_at=old
    )


def test_cancelling_a_queued_run_cancels_it_at_once(tiny_recipe):
    run = services.training_run_cancel(run=_create(tiny_recipe))
    assert run.status == TrainingRun.Status.CANCELLED and run.finished_at is not None
    assert services.training_run_execute(run_id=run.pk) is None


@pytest.mark.parametrize(
    ("status", "message"),
    [
        (TrainingRun.Status.SUCCEEDED, "has already succeeded; it cannot be cancelled."),
        (TrainingRun.Status.FAILED, "has already failed; it cannot be cancelled."),
        (TrainingRun.Status.CANCELLED, "is already cancelled."),
    ],
)
def test_cancelling_a_finished_run_says_in_words_what_became_of_it(tiny_recipe, status, message):
    run = _create(tiny_recipe)
    TrainingRun.objects.filter(pk=run.pk).update(status=status)
    with pytest.raises(services.TrainingRunStateError) as caught:
        services.training_run_cancel(run=run)
    assert str(caught.value) == f"Run {run.pk} {message}"


def test_cancelling_a_finished_run_is_refused(tiny_recipe):
    run = _create(tiny_recipe)
    TrainingRun.objects.filter(pk=run.pk).update(status=TrainingRun.Status.SUCCEEDED)
    with pytest.raises(services.TrainingRunStateError, match="cannot be cancelled"):
        services.training_run_cancel(run=run)


def test_a_cancel_request_stops_a_running_run_at_its_next_step(tiny_recipe, monkeypatch):
    monkeypatch.setattr(services.reporting, "CANCEL_CHECK_EVERY_S", 0.0)
    run = _create(tiny_recipe, epochs=3)
    seen_epochs = set()

    def request_cancel(fraction, epoch, step, eta):
        seen_epochs.add(epoch)
        services.training_run_cancel(run=run)

    services.training_run_execute(run_id=run.pk, on_progress=request_cancel)
    run.refresh_from_db()
    assert run.status == TrainingRun.Status.CANCELLED
    assert seen_epochs == {1}
    assert not run.checkpoints.filter(is_final=True).exists()


def test_a_cancel_request_after_the_last_step_still_cancels_the_run_and_activates_nothing(tiny_recipe, monkeypatch):
    monkeypatch.setattr(services.reporting, "CANCEL_CHECK_EVERY_S", 0.0)
    run = _create(tiny_recipe, epochs=1, activate_on_success=True)
    steps = []

    def cancel_on_the_last_step(fraction, epoch, step, eta):
        steps.append(step)
        if fraction >= 1.0:
            services.training_run_cancel(run=run)

    services.training_run_execute(run_id=run.pk, on_progress=cancel_on_the_last_step)
    run.refresh_from_db()
    assert run.status == TrainingRun.Status.CANCELLED, run.error
    assert steps[-1] == run.total_steps  # trained to the end before the cancel came
    assert not run.checkpoints.filter(is_final=True).exists()
    assert not Checkpoint.objects.filter(is_active=True).exists()
    # The final file, written before the cancel was seen, is not left behind unregistered.
    assert list(services.run_files.run_dir(run).rglob("final.pt")) == []


def test_a_run_cancelled_after_a_restart_no_longer_says_that_it_resumes(tiny_recipe, training_queue):
    # Queued again after its trainer shut down, then cancelled before a trainer took it.
    queued = _create(tiny_recipe, epochs=2)
    with pytest.raises(SystemExit):
        services.training_run_execute(run_id=queued.pk, on_progress=_shut_down_in_epoch_two)
    assert "resumes from its last epoch checkpoint" in TrainingRun.objects.get(pk=queued.pk).error
    services.training_run_cancel(run=queued)
    # Resumed once, asked to cancel, then its trainer died: the reaper cancels it.
    stale = _create(tiny_recipe)
    _make_stale(stale, attempts=2)
    TrainingRun.objects.filter(pk=stale.pk).update(
        cancel_requested=True, error="worker stopped responding (attempt 1); resuming from the last epoch checkpoint"
    )
    assert services.training_runs_reap()["cancelled"] == [stale.pk]
    for run in TrainingRun.objects.filter(pk__in=[queued.pk, stale.pk]):
        assert (run.status, run.error) == (TrainingRun.Status.CANCELLED, ""), run.pk


@pytest.mark.django_db(transaction=True)
@pytest.mark.skipif(connection.vendor != "postgresql", reason="row locks and concurrent writers")
def test_a_cancel_sent_while_a_trainer_claims_the_queued_run_asks_the_running_run_to_stop(tiny_recipe):
    from training.services.execution import _training_run_claim

    run = _create(tiny_recipe)
    # The trainer's claim still uncommitted while the cancel reads the run, until the cancel is seen waiting for it.
    holder = HeldInAnotherConnection(lambda: _training_run_claim(run_id=run.pk), timeout=30)
    holder.start()
    answered = services.training_run_cancel(run=run)
    holder.finish()

    run.refresh_from_db()
    # Marked cancelled over the claim, the run would train on to its end under a cancelled status.
    assert (answered.status, run.status, run.cancel_requested, run.finished_at) == ("running", "running", True, None)
