"""Management commands: predict from the command line, extract MNIST samples, load the sample sets, delete uploads."""
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


def _stored_uploads(owner, count, *, created_at=None, sample_set=""):
    """``count`` uploads of ``owner``, each with a prediction and a file in the media volume."""
    import uuid

    from django.core.files.base import ContentFile
    from django.core.files.storage import default_storage

    uploads = []
    for index in range(count):
        name = default_storage.save(f"uploads/cmd/{uuid.uuid4().hex}.png", ContentFile(b"png"))
        upload = Upload.objects.create(
            owner=owner, image=name, original_name=f"{index}.png", format="PNG", size=3, stored_size=3, width=28,
            height=28, sha256=uuid.uuid4().hex * 2, source="sample" if sample_set else "file", sample_set=sample_set,
        )
        Prediction.objects.create(upload=upload, status="done", digit=3)
        if created_at is not None:
            Upload.objects.filter(pk=upload.pk).update(created_at=created_at)
        uploads.append(upload)
    return uploads


def _deletion_history() -> dict[int, int]:
    from django.contrib.admin.models import DELETION, LogEntry

    return {int(entry.object_id): entry.user_id for entry in LogEntry.objects.filter(action_flag=DELETION)}


def test_delete_uploads_without_yes_only_says_how_many_match(user, staff_user):
    _stored_uploads(user, 3)
    out = io.StringIO()

    call_command("delete_uploads", "--by", staff_user.username, "--owner", user.username, stdout=out)

    assert "3 uploads match; add --yes to delete them." in out.getvalue()
    assert Upload.objects.count() == 3 and not _deletion_history()


def test_delete_uploads_deletes_more_than_one_deletion_takes_in_batches_each_recorded_in_the_admin_history(
    user, other_user, staff_user, monkeypatch, django_capture_on_commit_callbacks
):
    from django.core.files.storage import default_storage

    from classifier.services import staff_deletion

    monkeypatch.setattr(staff_deletion, "STAFF_DELETE_MAX", 2)  # as the admin's 20,000, in fewer rows
    doomed = _stored_uploads(user, 5)
    kept = _stored_uploads(other_user, 1)
    out = io.StringIO()

    with django_capture_on_commit_callbacks(execute=True):  # each batch's files go once it commits
        call_command("delete_uploads", "--by", staff_user.username, "--owner", user.username, "--yes", stdout=out)

    assert "Deleted 5 uploads." in out.getvalue() and out.getvalue().count("deleted ") == 3
    assert _deletion_history() == {upload.pk: staff_user.pk for upload in doomed}
    assert list(Upload.objects.values_list("pk", flat=True)) == [kept[0].pk]
    assert list(Prediction.objects.values_list("upload_id", flat=True)) == [kept[0].pk]
    assert not any(default_storage.exists(upload.image.name) for upload in doomed)
    assert default_storage.exists(kept[0].image.name)


def test_delete_uploads_reads_days_in_the_sites_time_zone(user, staff_user, settings):
    import datetime as dt
    import zoneinfo

    settings.TIME_ZONE = "Asia/Seoul"
    seoul = zoneinfo.ZoneInfo("Asia/Seoul")
    (late_on_the_2nd,) = _stored_uploads(user, 1, created_at=dt.datetime(2026, 3, 2, 23, 30, tzinfo=seoul))
    (early_on_the_3rd,) = _stored_uploads(user, 1, created_at=dt.datetime(2026, 3, 3, 0, 30, tzinfo=seoul))
    (on_the_5th,) = _stored_uploads(user, 1, created_at=dt.datetime(2026, 3, 5, 12, 0, tzinfo=seoul))

    call_command("delete_uploads", "--by", staff_user.username, "--since", "2026-03-03", "--before", "2026-03-05",
                 "--yes", stdout=io.StringIO())

    assert set(Upload.objects.values_list("pk", flat=True)) == {late_on_the_2nd.pk, on_the_5th.pk}
    assert set(_deletion_history()) == {early_on_the_3rd.pk}


@pytest.mark.parametrize("arguments, error", [
    (["--by", "staff"], "Give at least one filter"),
    (["--by", "alice", "--sample-set", "mnist"], "No active staff account is named 'alice'"),
    (["--by", "staff", "--owner", "nobody"], "No account is named 'nobody'"),
    (["--by", "staff", "--before", "3 March"], "'3 March' is not a day written YYYY-MM-DD"),
])
def test_delete_uploads_refuses_what_it_cannot_do_and_deletes_nothing(user, staff_user, arguments, error):
    from django.core.management.base import CommandError

    _stored_uploads(user, 1, sample_set="mnist")
    with pytest.raises(CommandError, match=error):
        call_command("delete_uploads", *arguments, "--yes", stdout=io.StringIO())
    assert Upload.objects.count() == 1
