"""Management commands: predict from the command line, extract MNIST samples, load the sample sets."""
import io
import json
import logging
from pathlib import Path

import pytest
from django.core.management import call_command

from classifier.models import Prediction, Upload

pytestmark = pytest.mark.django_db


def test_predict_prints_one_json_line_per_file_and_fails_on_unreadable_ones(tmp_path, digit_png, active_checkpoint):
    folder = tmp_path / "imgs" / "nested"
    folder.mkdir(parents=True)
    (folder / "seven.png").write_bytes(digit_png(0))
    (tmp_path / "imgs" / "two.png").write_bytes(digit_png(1))
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not an image")
    out = io.StringIO()
    with pytest.raises(SystemExit) as exit_info:
        call_command("predict", "--json", str(tmp_path / "imgs"), str(bad), str(tmp_path / "missing.png"), stdout=out, stderr=io.StringIO())
    assert exit_info.value.code == 1
    rows = [json.loads(line) for line in out.getvalue().splitlines()]
    by_name = {row["path"].rsplit("/", 1)[-1]: row for row in rows}
    assert by_name["seven.png"]["digit"] == 7 and by_name["two.png"]["digit"] == 2
    assert set(by_name["seven.png"]) == {"path", "digit", "confidence", "probabilities"}
    assert sum(by_name["seven.png"]["probabilities"]) == pytest.approx(1.0, abs=1e-4)
    assert "error" in by_name["broken.png"] and "error" in by_name["missing.png"]
    assert not Upload.objects.exists()  # the command writes nothing to the database


def test_predict_says_why_no_digit_was_found(tmp_path, active_checkpoint):
    from tests.classifier.fixtures import empty_ruled_sheet_png

    (tmp_path / "ruled.png").write_bytes(empty_ruled_sheet_png())
    out = io.StringIO()
    with pytest.raises(SystemExit):
        call_command("predict", "--json", str(tmp_path / "ruled.png"), stdout=out, stderr=io.StringIO())
    assert json.loads(out.getvalue())["error"] == "no digit found: its only marks are specks or printed lines"


def test_predict_prints_a_table_and_accepts_a_checkpoint_id(tmp_path, digit_png, register_checkpoint, trained_model_file):
    checkpoint = register_checkpoint(trained_model_file, name="not-active", activate=False)
    (tmp_path / "seven.png").write_bytes(digit_png(0))
    out = io.StringIO()
    call_command("predict", "--checkpoint", str(checkpoint.pk), str(tmp_path / "seven.png"), stdout=out)
    lines = out.getvalue().splitlines()
    assert lines[0].split() == ["digit", "confidence", "path"]
    assert lines[1].split()[0] == "7"


def test_predict_with_a_checkpoint_whose_file_changed_says_so_in_one_line(tmp_path, digit_png, active_checkpoint):
    from django.core.management.base import CommandError

    from training.selectors import checkpoint_file_path

    with checkpoint_file_path(checkpoint=active_checkpoint).open("ab") as handle:
        handle.write(b"damaged")
    (tmp_path / "seven.png").write_bytes(digit_png(0))
    with pytest.raises(CommandError, match="the checkpoint cannot be loaded: .*sha256 .* does not match"):
        call_command("predict", str(tmp_path / "seven.png"), stdout=io.StringIO())
    with pytest.raises(CommandError, match="the checkpoint cannot be loaded"):
        call_command("predict", "--checkpoint", str(active_checkpoint.pk), str(tmp_path / "seven.png"), stdout=io.StringIO())


def test_extract_mnist_samples_writes_five_labelled_pngs_per_digit(tmp_path):
    call_command("extract_mnist_samples", "--output", str(tmp_path), stdout=io.StringIO())
    files = sorted(p.name for p in tmp_path.glob("*.png"))
    assert len(files) == 50
    assert all(sum(name.startswith(f"{d}_mnist_") for name in files) == 5 for d in range(10))


def test_load_samples_registers_each_image_once_and_predicts_them(tmp_path, digit_png, active_checkpoint, caplog):
    (tmp_path / "mnist").mkdir()
    (tmp_path / "other").mkdir()
    (tmp_path / "mnist" / "7_mnist_0.png").write_bytes(digit_png(0))
    (tmp_path / "other" / "2_hand.png").write_bytes(digit_png(1))
    call_command("load_samples", "--root", str(tmp_path), "--sync", stdout=io.StringIO())
    with caplog.at_level(logging.INFO):
        call_command("load_samples", "--root", str(tmp_path), "--sync", stdout=io.StringIO())
    # Nothing new to predict, and nothing said of predictions that were never asked for.
    assert "already running or finished" not in caplog.text
    uploads = Upload.objects.order_by("sample_set")
    assert [(u.sample_set, u.label, u.source, u.owner.username) for u in uploads] == [
        ("mnist", 7, "sample", "samples"),
        ("other", 2, "sample", "samples"),
    ]
    assert Prediction.objects.count() == 2
    assert set(Prediction.objects.values_list("status", flat=True)) == {"done"}


def test_load_samples_before_any_model_is_active_stores_the_images_unread_and_reads_them_when_run_again(
    tmp_path, digit_png, register_checkpoint, trained_model_file
):
    (tmp_path / "mnist").mkdir()
    (tmp_path / "mnist" / "7_mnist_0.png").write_bytes(digit_png(0))
    out = io.StringIO()

    call_command("load_samples", "--root", str(tmp_path), stdout=out)

    assert "no model is active yet" in out.getvalue() and "run load_samples again" in out.getvalue()
    assert Upload.objects.count() == 1 and not Prediction.objects.exists()
    register_checkpoint(trained_model_file, name="trained")
    call_command("load_samples", "--root", str(tmp_path), "--sync", stdout=io.StringIO())
    assert list(Prediction.objects.values_list("status", "digit")) == [("done", 7)]


def test_load_samples_reads_the_sets_shipped_with_the_code_wherever_the_media_volume_is(settings, active_checkpoint):
    # MEDIA_ROOT is this test's own empty folder, as a media volume created by an earlier release holds no newer set.
    shipped = [path for path in (Path(settings.BASE_DIR) / "media" / "samples").glob("*/*") if path.suffix != ".json"]
    assert not (Path(settings.MEDIA_ROOT) / "samples").exists() and len(shipped) == 200
    call_command("load_samples", "--sync", stdout=io.StringIO())
    assert sorted(Upload.objects.values_list("original_name", flat=True)) == sorted(path.name for path in shipped)


def test_the_shipped_mnist_samples_exist():
    from django.conf import settings as django_settings
    from pathlib import Path

    folder = Path(django_settings.BASE_DIR) / "media" / "samples" / "mnist"
    names = [p.name for p in folder.glob("*_mnist_*.png")]
    assert all(sum(n.startswith(f"{d}_") for n in names) >= 5 for d in range(10))


def test_load_samples_run_again_before_the_workers_read_the_images_queues_nothing_twice(
    tmp_path, digit_png, active_checkpoint, published, django_capture_on_commit_callbacks
):
    (tmp_path / "mnist").mkdir()
    (tmp_path / "mnist" / "7_mnist_0.png").write_bytes(digit_png(0))
    out = io.StringIO()

    for _ in range(2):
        with django_capture_on_commit_callbacks(execute=True):
            call_command("load_samples", "--root", str(tmp_path), stdout=out, stderr=io.StringIO())

    assert Prediction.objects.filter(status="pending").count() == 1 and len(published.prediction_ids()) == 1
    assert "1 still waiting for a worker; 0 prediction(s) queued" in out.getvalue()
