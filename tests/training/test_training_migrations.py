"""Migration 0007: runs and checkpoints from before the validation split keep their test accuracy and get no other."""
import pytest

from tests.migrations import latest_migrations, migrate_to

BEFORE = [("training", "0006_times_as_python_writes_them")]
AFTER = [("training", "0007_validation_accuracy")]


@pytest.mark.django_db(transaction=True)
def test_runs_and_checkpoints_from_before_the_validation_split_have_no_validation_accuracy():
    old_apps = migrate_to(BEFORE)
    try:
        run = old_apps.get_model("training", "TrainingRun").objects.create(
            status="succeeded", epochs=2, batch_size=128, learning_rate=0.1, test_accuracy=0.99,
            metrics=[{"epoch": 1, "test_accuracy": 0.98}, {"epoch": 2, "test_accuracy": 0.99}],
        )
        checkpoint = old_apps.get_model("training", "Checkpoint").objects.create(
            run=run, epoch=1, architecture="cnn", path="runs/old/epoch-1.pt", sha256="0" * 64, size=1,
            test_accuracy=0.98, is_final=False,
        )

        new_apps = migrate_to(AFTER)
        migrated_run = new_apps.get_model("training", "TrainingRun").objects.get(pk=run.pk)
        migrated = new_apps.get_model("training", "Checkpoint").objects.get(pk=checkpoint.pk)
        assert (migrated_run.validation_accuracy, migrated_run.test_accuracy) == (None, 0.99)
        assert (migrated.validation_accuracy, migrated.test_accuracy) == (None, 0.98)
    finally:
        migrate_to(latest_migrations())
