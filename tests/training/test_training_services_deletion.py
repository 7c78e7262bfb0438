"""Training services: pruning and deleting checkpoints, never one still needed, files only once committed."""
import logging

import pytest
from django.conf import settings
from django.db import transaction

from training import services
from training.models import Checkpoint, TrainingRun

pytestmark = pytest.mark.django_db


def _file(checkpoint):
    return settings.CHECKPOINT_DIR / checkpoint.path


@pytest.mark.django_db(transaction=True)
def test_pruning_deletes_the_epoch_checkpoints_of_finished_runs_and_their_files_only_once_committed(
    make_run_with_checkpoints,
):
    run, checkpoints = make_run_with_checkpoints(status=TrainingRun.Status.SUCCEEDED, epochs=3, final=True)
    epochs = [checkpoints[f"epoch-{epoch}"] for epoch in (1, 2, 3)]
    with transaction.atomic():
        result = services.checkpoints_prune()
        assert not Checkpoint.objects.filter(pk__in=[c.pk for c in epochs]).exists()
        assert all(_file(c).exists() for c in epochs)  # the deletion may still roll back
    assert not any(_file(c).exists() for c in epochs)
    assert [c.id for c in result.checkpoints] == [c.pk for c in epochs]
    assert result.count == 3 and result.bytes_freed == sum(c.size for c in epochs) > 0
    assert list(run.checkpoints.all()) == [checkpoints["final"]] and _file(checkpoints["final"]).exists()


def test_pruning_keeps_the_active_checkpoint_those_predictions_were_made_with_and_every_one_an_unfinished_run_may_resume_from(
    make_run_with_checkpoints, predict_with, django_capture_on_commit_callbacks
):
    _, done = make_run_with_checkpoints(status=TrainingRun.Status.SUCCEEDED, epochs=3, final=True)
    services.checkpoint_activate(checkpoint=done["epoch-1"])
    predict_with(done["epoch-2"])
    _, running = make_run_with_checkpoints(status=TrainingRun.Status.RUNNING, epochs=2)
    _, requeued = make_run_with_checkpoints(status=TrainingRun.Status.QUEUED, epochs=2)
    with django_capture_on_commit_callbacks(execute=True):
        result = services.checkpoints_prune()
    assert [c.id for c in result.checkpoints] == [done["epoch-3"].pk]
    kept = [done["epoch-1"], done["epoch-2"], done["final"], *running.values(), *requeued.values()]
    assert set(Checkpoint.objects.all()) == set(kept)
    assert all(_file(c).exists() for c in kept) and not _file(done["epoch-3"]).exists()


@pytest.mark.parametrize("status", [TrainingRun.Status.FAILED, TrainingRun.Status.CANCELLED])
def test_a_run_that_ended_without_a_final_checkpoint_keeps_its_last_epoch_checkpoint_when_pruned(
    make_run_with_checkpoints, status, django_capture_on_commit_callbacks
):
    run, checkpoints = make_run_with_checkpoints(status=status, epochs=3)
    with django_capture_on_commit_callbacks(execute=True):
        services.checkpoints_prune()
    assert list(run.checkpoints.all()) == [checkpoints["epoch-3"]] and _file(checkpoints["epoch-3"]).exists()
    assert not _file(checkpoints["epoch-1"]).exists() and not _file(checkpoints["epoch-2"]).exists()


def test_epoch_checkpoints_whose_run_is_gone_are_pruned_unless_active_or_predictions_were_made_with_them(
    make_run_with_checkpoints, make_checkpoint, predict_with, django_capture_on_commit_callbacks
):
    succeeded, done = make_run_with_checkpoints(status=TrainingRun.Status.SUCCEEDED, epochs=3, final=True)
    failed, stopped = make_run_with_checkpoints(status=TrainingRun.Status.FAILED, epochs=2)
    services.checkpoint_activate(checkpoint=done["epoch-1"])
    predict_with(done["epoch-2"])
    imported, _model = make_checkpoint()  # a final checkpoint registered without a run
    # Deleted by hand: the checkpoints stay, naming no run.
    TrainingRun.objects.filter(pk__in=[succeeded.pk, failed.pk]).delete()
    assert not Checkpoint.objects.exclude(run=None).exists()

    with django_capture_on_commit_callbacks(execute=True):
        result = services.checkpoints_prune()
    pruned = [done["epoch-3"], stopped["epoch-1"], stopped["epoch-2"]]
    assert sorted(c.id for c in result.checkpoints) == sorted(c.pk for c in pruned)
    assert {c.run_id for c in result.checkpoints} == {None}
    kept = [done["epoch-1"], done["epoch-2"], done["final"], imported]
    assert set(Checkpoint.objects.all()) == set(kept)
    assert all(_file(c).exists() for c in kept) and not any(_file(c).exists() for c in pruned)


@pytest.mark.django_db(transaction=True)
def test_a_prune_of_checkpoints_whose_run_is_gone_removes_their_files_only_once_committed(make_run_with_checkpoints):
    run, checkpoints = make_run_with_checkpoints(status=TrainingRun.Status.SUCCEEDED, epochs=2, final=True)
    TrainingRun.objects.filter(pk=run.pk).delete()
    epochs = [checkpoints["epoch-1"], checkpoints["epoch-2"]]
    with pytest.raises(RuntimeError), transaction.atomic():
        assert services.checkpoints_prune().count == 2
        assert all(_file(c).exists() for c in epochs)
        raise RuntimeError("the caller's transaction fails after the prune")
    assert Checkpoint.objects.count() == 3 and all(_file(c).exists() for c in checkpoints.values())
    assert services.checkpoints_prune().count == 2
    assert list(Checkpoint.objects.all()) == [checkpoints["final"]] and not any(_file(c).exists() for c in epochs)


def test_a_dry_run_prune_lists_what_it_would_delete_and_deletes_nothing(
    make_run_with_checkpoints, django_capture_on_commit_callbacks
):
    _, checkpoints = make_run_with_checkpoints(status=TrainingRun.Status.SUCCEEDED, epochs=2, final=True)
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        result = services.checkpoints_prune(dry_run=True)
    assert result.dry_run
    assert [c.id for c in result.checkpoints] == [checkpoints["epoch-1"].pk, checkpoints["epoch-2"].pk]
    assert callbacks == [] and Checkpoint.objects.count() == 3
    assert all(_file(c).exists() for c in checkpoints.values())


@pytest.mark.django_db(transaction=True)
def test_a_prune_that_rolls_back_leaves_every_row_and_file(make_run_with_checkpoints):
    _, checkpoints = make_run_with_checkpoints(status=TrainingRun.Status.SUCCEEDED, epochs=2, final=True)
    with pytest.raises(RuntimeError), transaction.atomic():
        assert services.checkpoints_prune().count == 2
        raise RuntimeError("the caller's transaction fails after the prune")
    assert Checkpoint.objects.count() == 3 and all(_file(c).exists() for c in checkpoints.values())


def test_pruning_a_checkpoint_whose_file_is_already_gone_deletes_its_row_and_never_touches_files_no_row_names(
    make_run_with_checkpoints, django_capture_on_commit_callbacks, caplog
):
    run, checkpoints = make_run_with_checkpoints(status=TrainingRun.Status.SUCCEEDED, epochs=2, final=True)
    _file(checkpoints["epoch-1"]).unlink()
    # Another database's run sharing the volume, and a file of this run's folder that no row names.
    foreign = settings.CHECKPOINT_DIR / "runs" / f"{run.pk}-20200101T000000000000Z" / "attempt-1" / "epoch-1.pt"
    foreign.parent.mkdir(parents=True)
    foreign.write_bytes(b"another database's checkpoint")
    stray = _file(checkpoints["epoch-2"]).with_name("epoch-7.pt")
    stray.write_bytes(b"not a registered checkpoint")
    with django_capture_on_commit_callbacks(execute=True):
        assert services.checkpoints_prune().count == 2
    assert list(run.checkpoints.all()) == [checkpoints["final"]] and not _file(checkpoints["epoch-2"]).exists()
    assert foreign.read_bytes() == b"another database's checkpoint" and stray.exists()
    assert [record.getMessage() for record in caplog.records if record.levelno >= logging.WARNING] == []


def test_deleting_every_checkpoint_of_a_run_removes_its_emptied_folders_and_keeps_those_still_holding_files(
    make_run_with_checkpoints, django_capture_on_commit_callbacks
):
    emptied, emptied_checkpoints = make_run_with_checkpoints(status=TrainingRun.Status.SUCCEEDED, epochs=2, final=True)
    holding, holding_checkpoints = make_run_with_checkpoints(status=TrainingRun.Status.SUCCEEDED, epochs=1, final=True)
    stray = _file(holding_checkpoints["final"]).with_name("notes.txt")
    stray.write_text("kept by whoever wrote it")
    with django_capture_on_commit_callbacks(execute=True):
        services.checkpoints_delete(checkpoints=[*emptied_checkpoints.values(), *holding_checkpoints.values()])
    assert not services.run_files.run_dir(emptied).exists()
    assert stray.read_text() == "kept by whoever wrote it"
    assert (settings.CHECKPOINT_DIR / "runs").is_dir()


def test_deleting_a_checkpoint_removes_its_file_once_committed(make_checkpoint, django_capture_on_commit_callbacks):
    checkpoint, _ = make_checkpoint()
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        services.checkpoint_delete(checkpoint=checkpoint)
    assert not Checkpoint.objects.exists() and _file(checkpoint).exists()
    for callback in callbacks:
        callback()
    assert not _file(checkpoint).exists()


def test_deleting_checkpoints_that_are_still_needed_is_refused_and_deletes_none_of_those_asked(
    make_checkpoint, make_run_with_checkpoints, predict_with, django_capture_on_commit_callbacks
):
    active, _ = make_checkpoint(activate=True)
    used, _ = make_checkpoint()
    predict_with(used)
    _, running = make_run_with_checkpoints(status=TrainingRun.Status.RUNNING, epochs=1)
    unneeded, _ = make_checkpoint()
    asked = [active, used, running["epoch-1"], unneeded]
    with django_capture_on_commit_callbacks(execute=True), pytest.raises(services.CheckpointInUseError) as refused:
        services.checkpoints_delete(checkpoints=asked)
    assert refused.value.reasons == [
        f"{active} is the active checkpoint: activate another one before deleting it.",
        f"{used} made predictions, which keep naming the model that made them: it cannot be deleted.",
        f"{running['epoch-1']} belongs to run {running['epoch-1'].run_id}, which is still running and may resume "
        "from it: delete it once the run has finished.",
    ]
    assert Checkpoint.objects.count() == 4 and all(_file(c).exists() for c in asked)
