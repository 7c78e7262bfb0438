"""Training services: a run's folder of checkpoints, where it lies and what an attempt may write there."""
import pytest
import torch
from django.conf import settings
from django.core.management.color import no_style
from django.db import connection

from training import services
from training.ml.atomic import sha256_file
from training.models import Checkpoint, TrainingRun

pytestmark = pytest.mark.django_db


def _create(recipe, **overrides):
    return services.training_run_create(created_by=None, enqueue=False, **{**recipe, **overrides})


def _as_a_database_created_empty():
    """What a database volume recreated empty holds: no runs, no checkpoints, and ids starting again at 1."""
    Checkpoint.objects.all().delete()
    TrainingRun.objects.all().delete()
    tables = [{"table": model._meta.db_table, "column": "id"} for model in (TrainingRun, Checkpoint)]
    with connection.cursor() as cursor:
        for statement in connection.ops.sequence_reset_by_name_sql(no_style(), tables):
            cursor.execute(statement)


def test_a_database_recreated_empty_does_not_write_over_the_checkpoints_the_earlier_one_left(tiny_recipe):
    from training.ml.checkpoints import load_checkpoint
    from training.selectors import checkpoint_file_path

    _as_a_database_created_empty()
    earlier = _create(tiny_recipe)
    services.training_run_execute(run_id=earlier.pk)
    left = {checkpoint_file_path(checkpoint=c): c.sha256 for c in Checkpoint.objects.filter(run=earlier)}
    assert len(left) == 2  # epoch 1 and final

    # The checkpoint volume kept, the database started again: its first run is run 1 again.
    _as_a_database_created_empty()
    later = _create(tiny_recipe, seed=1)
    assert later.pk == earlier.pk
    services.training_run_execute(run_id=later.pk)
    later.refresh_from_db()
    assert later.status == TrainingRun.Status.SUCCEEDED, later.error
    assert not {checkpoint_file_path(checkpoint=c) for c in later.checkpoints.all()} & set(left)
    for path, sha256 in left.items():
        load_checkpoint(path, expected_sha256=sha256)


def test_a_run_refuses_to_write_over_a_checkpoint_file_it_did_not_write(tiny_recipe):
    from training.ml.architectures import build_model
    from training.ml.checkpoints import save_checkpoint

    run = TrainingRun.objects.get(pk=_create(tiny_recipe).pk)
    foreign = services.run_files.run_dir(run) / "attempt-1" / "epoch-1.pt"
    sha256, _size = save_checkpoint(
        foreign, model=build_model("mlp", {"hidden": 16}), config=None, epoch=1, metrics={}
    )
    services.training_run_execute(run_id=run.pk)
    run.refresh_from_db()
    assert run.status == TrainingRun.Status.FAILED
    assert "was not written by this run; refusing to write over it" in run.error
    assert sha256_file(foreign) == sha256 and not run.checkpoints.exists()


def test_a_file_that_appears_while_a_run_writes_its_checkpoint_is_kept_and_the_run_fails_saying_why(
    tiny_recipe, monkeypatch
):
    run = TrainingRun.objects.get(pk=_create(tiny_recipe).pk)
    foreign = services.run_files.run_dir(run) / "attempt-1" / "epoch-1.pt"
    save = torch.save

    def another_writer_gets_there_first(obj, f, *args, **kwargs):
        # Lands after the run looked at the name and before its file takes it.
        if not foreign.exists():
            foreign.parent.mkdir(parents=True, exist_ok=True)
            foreign.write_bytes(b"another run's checkpoint")
        return save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", another_writer_gets_there_first)
    services.training_run_execute(run_id=run.pk)
    run.refresh_from_db()
    assert run.status == TrainingRun.Status.FAILED
    assert "was not written by this run; refusing to write over it" in run.error
    assert foreign.read_bytes() == b"another run's checkpoint" and not run.checkpoints.exists()
    assert [p.name for p in foreign.parent.iterdir()] == ["epoch-1.pt"]  # no temporary file left


def test_a_resumed_attempt_writes_its_own_epoch_checkpoint_again_when_that_one_no_longer_loads(tiny_recipe):
    run = _create(tiny_recipe, epochs=3)

    def shut_down_in_epoch_three(fraction, epoch, step, eta):
        if epoch == 3:
            raise SystemExit(15)

    with pytest.raises(SystemExit):
        services.training_run_execute(run_id=run.pk, on_progress=shut_down_in_epoch_three)
    second = run.checkpoints.get(epoch=2)
    (settings.CHECKPOINT_DIR / second.path).write_bytes(b"damaged")
    epochs_trained = set()
    services.training_run_execute(run_id=run.pk, on_progress=lambda f, epoch, s, e: epochs_trained.add(epoch))
    run.refresh_from_db()
    assert run.status == TrainingRun.Status.SUCCEEDED, run.error
    assert epochs_trained == {2, 3} and run.attempts == 1
    second.refresh_from_db()
    assert second.path.endswith("attempt-1/epoch-2.pt")
    assert second.sha256 == sha256_file(settings.CHECKPOINT_DIR / second.path)
