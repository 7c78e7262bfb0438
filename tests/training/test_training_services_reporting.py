"""Training services: what an attempt writes as it trains, and how one that lost its run stops without touching it."""
import pytest
from django.db import connection

from training import services
from tests.training.fixtures import HeldInAnotherConnection
from training.models import TrainingRun

pytestmark = pytest.mark.django_db


def _create(recipe, **overrides):
    return services.training_run_create(created_by=None, enqueue=False, **{**recipe, **overrides})


def test_progress_is_written_to_the_run_while_it_trains(tiny_recipe, monkeypatch):
    monkeypatch.setattr(services.reporting, "PROGRESS_WRITE_EVERY_S", 0.0)
    run = _create(tiny_recipe, epochs=2)
    snapshots = []

    def snapshot(fraction, epoch, step, eta):
        snapshots.append(TrainingRun.objects.values("progress", "current_epoch", "heartbeat_at").get(pk=run.pk))

    services.training_run_execute(run_id=run.pk, on_progress=snapshot)
    # Each snapshot is taken before that call's write, so it shows the previous report.
    assert len(snapshots) >= 2
    assert snapshots[-1]["current_epoch"] >= 1 and 0 < snapshots[-1]["progress"] < 1
    assert all(s["heartbeat_at"] is not None for s in snapshots)


def test_the_end_of_an_epoch_writes_its_progress_and_last_step_together_with_its_metrics(tiny_recipe, monkeypatch):
    # Only the run's first step is written by the throttle then: what the run shows between epochs is the epoch's.
    monkeypatch.setattr(services.reporting, "PROGRESS_WRITE_EVERY_S", 3600.0)
    run = _create(tiny_recipe, epochs=2)
    between_epochs = []

    def snapshot(fraction, epoch, step, eta):
        if epoch == 2 and not between_epochs:
            between_epochs.append(TrainingRun.objects.values(
                "progress", "current_epoch", "current_step", "total_steps", "metrics"
            ).get(pk=run.pk))

    services.training_run_execute(run_id=run.pk, on_progress=snapshot)
    (shown,) = between_epochs
    assert [row["epoch"] for row in shown["metrics"]] == [1]
    assert (shown["progress"], shown["current_epoch"], shown["current_step"]) == (0.5, 1, shown["total_steps"])


def test_a_worker_whose_run_was_taken_over_stops_without_touching_it(tiny_recipe, monkeypatch):
    monkeypatch.setattr(services.reporting, "CANCEL_CHECK_EVERY_S", 0.0)
    run = _create(tiny_recipe, epochs=2)

    def taken_over(fraction, epoch, step, eta):
        # What the reaper plus a second worker's claim look like from the first worker.
        TrainingRun.objects.filter(pk=run.pk).update(attempts=2, error="resumed elsewhere")

    assert services.training_run_execute(run_id=run.pk, on_progress=taken_over) is None
    run.refresh_from_db()
    assert run.status == TrainingRun.Status.RUNNING and run.error == "resumed elsewhere"
    assert not run.checkpoints.exists()


def test_a_worker_whose_run_was_taken_over_and_then_fails_leaves_the_successors_run_untouched(tiny_recipe, monkeypatch):
    monkeypatch.setattr(services.reporting, "CANCEL_CHECK_EVERY_S", 3600.0)  # the attempt does not notice the take-over first
    run = _create(tiny_recipe, epochs=2)

    def taken_over_then_failing(fraction, epoch, step, eta):
        # The reaper re-queued the run and a second worker claimed it; then this, the first, attempt fails.
        TrainingRun.objects.filter(pk=run.pk).update(attempts=2, error="resumed elsewhere")
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    assert services.training_run_execute(run_id=run.pk, on_progress=taken_over_then_failing) is None
    run.refresh_from_db()
    assert (run.status, run.attempts, run.error, run.finished_at) == (
        TrainingRun.Status.RUNNING, 2, "resumed elsewhere", None
    )
    assert not run.checkpoints.exists()


@pytest.mark.django_db(transaction=True)
@pytest.mark.skipif(connection.vendor != "postgresql", reason="SQLite runs one writer at a time")
def test_an_attempt_taken_over_while_it_finishes_registers_nothing_and_leaves_no_file(tiny_recipe, monkeypatch):
    # No progress write after the start: the only wait for the row is then the attempt's, to register its file.
    monkeypatch.setattr(services.reporting, "PROGRESS_WRITE_EVERY_S", 3600.0)
    run = _create(tiny_recipe, epochs=1)

    def take_over():
        # The reaper taking the run over, the row locked, just as the attempt finishes: the attempt must wait for
        # the hand-over before it registers its files, then find the run gone.
        TrainingRun.objects.select_for_update().get(pk=run.pk)
        TrainingRun.objects.filter(pk=run.pk).update(attempts=2, error="resumed elsewhere")

    reaper = HeldInAnotherConnection(take_over, timeout=60)

    def on_progress(fraction, epoch, step, eta):
        if fraction >= 1.0 and not reaper.thread.is_alive():
            reaper.start()

    assert services.training_run_execute(run_id=run.pk, on_progress=on_progress) is None
    reaper.finish()
    assert list(services.run_files.run_dir(run).rglob("*.pt")) == []
    run.refresh_from_db()
    assert run.status == TrainingRun.Status.RUNNING and run.error == "resumed elsewhere"
    assert not run.checkpoints.exists()


def _connection_killed() -> None:
    """End this thread's database connection from another one, as a restart, a failover or a proxy's limit ends it:
    the next statement on it fails."""
    pid = connection.connection.info.backend_pid
    killer = connection.get_new_connection(connection.get_connection_params())
    try:
        killer.execute("SELECT pg_terminate_backend(%s)", [pid])
    finally:
        killer.close()


@pytest.mark.django_db(transaction=True)
@pytest.mark.skipif(connection.vendor != "postgresql", reason="ends the server process of a PostgreSQL connection")
@pytest.mark.parametrize("killed_before", ["a progress report", "a cancel check", "an epoch checkpoint"])
def test_a_run_whose_database_connection_is_lost_mid_epoch_trains_on_to_success_in_the_same_attempt(
    tiny_recipe, monkeypatch, killed_before
):
    # One report or check at each step, so that the connection's loss is met by the one named.
    writes, checks = (0.0, 3600.0) if killed_before == "a progress report" else (3600.0, 0.0)
    monkeypatch.setattr(services.reporting, "PROGRESS_WRITE_EVERY_S", writes)
    monkeypatch.setattr(services.reporting, "CANCEL_CHECK_EVERY_S", checks)
    run = _create(tiny_recipe, epochs=2)
    killed = []

    def kill_once(fraction, epoch, step, eta):
        at_epoch_end = fraction >= 0.5
        if not killed and (at_epoch_end if killed_before == "an epoch checkpoint" else epoch == 1):
            killed.append(epoch)
            _connection_killed()

    services.training_run_execute(run_id=run.pk, on_progress=kill_once)
    assert killed
    run.refresh_from_db()
    assert (run.status, run.attempts, run.error) == (TrainingRun.Status.SUCCEEDED, 1, "")
    assert [row["epoch"] for row in run.metrics] == [1, 2]
    assert run.checkpoints.filter(is_final=True).count() == 1


@pytest.mark.django_db(transaction=True)
@pytest.mark.skipif(connection.vendor != "postgresql", reason="ends the server process of a PostgreSQL connection")
def test_after_a_lost_connection_training_leaves_the_database_alone_for_a_while_instead_of_waiting_on_it_every_step(
    tiny_recipe, monkeypatch
):
    # A database out of reach holds each try for its connect_timeout (5 s): tried at every step, training would crawl.
    monkeypatch.setattr(services.reporting, "PROGRESS_WRITE_EVERY_S", 0.0)
    monkeypatch.setattr(services.reporting, "CANCEL_CHECK_EVERY_S", 0.0)
    run = _create(tiny_recipe, epochs=2)
    statements, reports = [], []

    def count(execute, sql, params, many, context):
        statements.append(sql)
        return execute(sql, params, many, context)

    def kill_at_the_first_report(fraction, epoch, step, eta):
        if not reports:
            _connection_killed()
        reports.append((step, len(statements)))

    with connection.execute_wrapper(count):
        services.training_run_execute(run_id=run.pk, on_progress=kill_at_the_first_report)
    run.refresh_from_db()
    assert run.status == TrainingRun.Status.SUCCEEDED
    (first_step, at_kill), (later_step, at_later) = reports[:2]
    assert later_step > first_step + 1, "no steps between the reports"
    # The one report that met the lost connection, then no report and no cancel check for the rest of the epoch.
    assert at_later - at_kill == 1, statements[at_kill:at_later]
