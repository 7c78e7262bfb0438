"""The train, evaluate and fetch_mnist management commands, each ending in a machine-readable line."""
import json
from io import StringIO

import numpy as np
import pytest
from django.conf import settings
from django.core.management import CommandError, call_command
from PIL import Image

from training.ml.data import load_split
from training.models import Checkpoint, TrainingRun

pytestmark = pytest.mark.django_db


def _run(*args) -> tuple[dict, str, str]:
    out, err = StringIO(), StringIO()
    call_command(*args, stdout=out, stderr=err)
    lines = out.getvalue().strip().splitlines()
    return json.loads(lines[-1]), out.getvalue(), err.getvalue()


@pytest.fixture
def trained():
    result, _, err = _run("train", "--arch", "mlp", "--sync", "--subset", "300", "--epochs", "1", "--activate")
    return result, err


def test_train_sync_trains_in_process_and_prints_a_json_line(trained):
    result, err = trained
    run = TrainingRun.objects.get(pk=result["run"])
    checkpoint = Checkpoint.objects.get(pk=result["checkpoint"])
    assert run.status == TrainingRun.Status.SUCCEEDED and run.train_subset == 300 and run.epochs == 1
    assert checkpoint.is_active and checkpoint.run == run
    assert result["test_accuracy"] == pytest.approx(run.test_accuracy) and result["seconds"] > 0
    assert result["validation_accuracy"] == pytest.approx(run.validation_accuracy)
    assert f"run {run.pk}" in err  # the tqdm bar and summary go to stderr


def test_train_without_sync_queues_the_run(training_queue, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        result, _, _ = _run("train", "--arch", "cnn", "--epochs", "2", "--no-augment")
    run = TrainingRun.objects.get(pk=result["run"])
    assert result["checkpoint"] is None and result["test_accuracy"] is None and result["validation_accuracy"] is None
    assert run.status == TrainingRun.Status.QUEUED and not run.augment and run.epochs == 2
    assert run.batch_size == 128  # the CNN recipe's default
    assert [message["kwargs"] for message in training_queue.messages()] == [{"run_id": run.pk}]


def test_train_rejects_an_invalid_recipe():
    with pytest.raises(CommandError, match="epochs"):
        call_command("train", "--arch", "mlp", "--epochs", "0", "--subset", "300", "--sync", stdout=StringIO(), stderr=StringIO())


def test_train_refuses_a_subset_larger_than_the_mnist_training_set(training_queue):
    with pytest.raises(CommandError, match="between 2 and 55,000 images"):
        call_command("train", "--arch", "mlp", "--subset", "70000", stdout=StringIO(), stderr=StringIO())
    assert not TrainingRun.objects.exists() and training_queue.messages() == []


def test_evaluate_reports_accuracy_on_the_mnist_test_set(trained):
    result, out, _ = _run("evaluate")
    assert result["n"] == 10_000 and result["checkpoint"] == trained[0]["checkpoint"]
    assert result["accuracy"] == pytest.approx(trained[0]["test_accuracy"])
    assert "confusion matrix" in out


def test_evaluate_labels_images_by_file_name_or_folder(trained, tmp_path):
    test = load_split(settings.DATA_DIR, split="test").subset(20)
    for index, (image, label) in enumerate(zip(test.images.numpy(), test.labels.tolist())):
        # Black-on-white, like a scan, to go through the upload preprocessing.
        picture = Image.fromarray(255 - np.asarray(image, dtype=np.uint8))
        if index % 2:
            picture.save(tmp_path / f"{label}_sample_{index}.png")
        else:
            (tmp_path / "nested" / str(label)).mkdir(parents=True, exist_ok=True)
            picture.save(tmp_path / "nested" / str(label) / f"sample_{index}.png")
    Image.new("L", (28, 28), 255).save(tmp_path / "blank.png")  # unlabelled and blank: skipped
    result, out, err = _run("evaluate", "--checkpoint", str(trained[0]["checkpoint"]), str(tmp_path))
    assert result["n"] == 20
    # The confusion matrix's rows are the labels read: each must count the images of that digit.
    lines = out.splitlines()
    header = lines.index("confusion matrix (rows: true, columns: predicted)")
    rows = {int(line.split()[0]): sum(map(int, line.split()[1:])) for line in lines[header + 2 : header + 12]}
    assert rows == {digit: test.labels.tolist().count(digit) for digit in range(10)}
    assert "skipped" in err and "blank.png" in err


def test_evaluate_without_an_active_checkpoint_is_a_clear_error():
    with pytest.raises(CommandError, match="No checkpoint is active"):
        call_command("evaluate", stdout=StringIO(), stderr=StringIO())


def test_evaluate_refuses_a_corrupted_checkpoint(trained):
    checkpoint = Checkpoint.objects.get(pk=trained[0]["checkpoint"])
    path = settings.CHECKPOINT_DIR / checkpoint.path
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(CommandError, match="sha256"):
        call_command("evaluate", stdout=StringIO(), stderr=StringIO())


def test_fetch_mnist_finds_the_verified_files_already_present():
    out = StringIO()
    call_command("fetch_mnist", stdout=out)
    assert "already present and verified" in out.getvalue()


def test_ensure_model_keeps_an_active_checkpoint_that_loads(make_checkpoint):
    checkpoint, _model = make_checkpoint(activate=True)
    out = StringIO()
    call_command("ensure_model", stdout=out)
    assert f"Active model: {checkpoint}" in out.getvalue()
    assert not TrainingRun.objects.exists()


def test_ensure_model_trains_and_activates_a_new_model_when_the_active_file_no_longer_loads(make_checkpoint):
    broken, _model = make_checkpoint(activate=True)
    (settings.CHECKPOINT_DIR / broken.path).unlink()
    out = StringIO()
    call_command("ensure_model", "--epochs", "1", "--subset", "256", stdout=out, stderr=StringIO())
    assert f"The active model ({broken}) cannot be loaded" in out.getvalue()
    run = TrainingRun.objects.get()
    assert run.status == TrainingRun.Status.SUCCEEDED and run.train_subset == 256, run.error
    active = Checkpoint.objects.get(is_active=True)
    assert active.run == run and active != broken
    call_command("ensure_model", stdout=out)
    assert f"Active model: {active}" in out.getvalue()


def test_prune_checkpoints_lists_what_it_deletes_and_the_space_freed(
    make_run_with_checkpoints, django_capture_on_commit_callbacks
):
    run, checkpoints = make_run_with_checkpoints(status=TrainingRun.Status.SUCCEEDED, epochs=2, final=True)
    first, second = checkpoints["epoch-1"], checkpoints["epoch-2"]
    total = first.size + second.size
    assert 1000 <= total < 1_000_000  # the tiny MLP's: counted in kB
    out = StringIO()
    call_command("prune_checkpoints", "--dry-run", stdout=out)
    lines = out.getvalue().splitlines()
    assert lines[0].startswith(f"would delete checkpoint {first.pk} (run {run.pk}, epoch 1, ")
    assert lines[0].endswith(f"): {first.path}") and lines[1].startswith(f"would delete checkpoint {second.pk} ")
    assert lines[2] == f"Dry run: 2 checkpoint(s) would be deleted, freeing {total / 1000:.1f} kB; nothing was deleted."
    assert Checkpoint.objects.count() == 3

    out = StringIO()
    with django_capture_on_commit_callbacks(execute=True):
        call_command("prune_checkpoints", stdout=out)
    lines = out.getvalue().splitlines()
    assert [line.split(" (")[0] for line in lines[:2]] == [
        f"deleted checkpoint {first.pk}", f"deleted checkpoint {second.pk}"
    ]
    assert lines[2] == f"Deleted 2 checkpoint(s), freeing {total / 1000:.1f} kB."
    assert list(Checkpoint.objects.all()) == [checkpoints["final"]]
    assert not (settings.CHECKPOINT_DIR / first.path).exists()

    out = StringIO()
    call_command("prune_checkpoints", stdout=out)
    assert out.getvalue() == "No checkpoint to delete.\n"
