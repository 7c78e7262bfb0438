"""The downloads: a user's history as a CSV or a ZIP with the stored images, and the admin's CSV of results."""
import csv
import io
import os
import zipfile

import pytest

from classifier import exports, selectors, services
from classifier.models import Prediction

pytestmark = pytest.mark.django_db


def _upload(owner, digit_png, index=0, *, name=None, predict=True):
    upload = services.upload_create(
        owner=owner, file=io.BytesIO(digit_png(index)), name=name or f"{index}.png", source="file"
    )
    if predict:
        (prediction,) = services.predictions_create(uploads=[upload], publish=False)
        services.prediction_execute(prediction_id=prediction.pk)
    return upload


def _csv(data: bytes) -> list[dict[str, str]]:
    assert data.startswith(b"\xef\xbb\xbf"), "without a byte order mark spreadsheets garble non-ASCII names"
    return list(csv.DictReader(io.StringIO(data.decode("utf-8-sig"), newline="")))


def _history_csv(user, **filters) -> list[dict[str, str]]:
    rows = selectors.upload_export_rows(user=user, filters=selectors.UploadFilters(**filters))
    return _csv(b"".join(exports.history_csv(rows)))


def _history_zip(user) -> zipfile.ZipFile:
    data = b"".join(exports.history_zip(selectors.upload_export_rows(user=user)))
    archive = zipfile.ZipFile(io.BytesIO(data))
    assert archive.testzip() is None
    # Streamed, each entry's sizes follow its data: streaming readers (Java's ZipInputStream) take that from deflated
    # entries only.
    assert all(info.compress_type == zipfile.ZIP_DEFLATED for info in archive.infolist())
    return archive


def test_the_csv_lists_each_upload_once_with_its_newest_result_newest_first(user, digit_png, active_checkpoint):
    first = _upload(user, digit_png, 0, name="première.png")
    waiting = _upload(user, digit_png, 1, predict=False)
    (retried,) = services.predictions_create(uploads=[first], publish=False)
    newest = services.prediction_execute(prediction_id=retried.pk)
    services.prediction_feedback_set(prediction=newest, digit=3)

    rows = _history_csv(user)

    assert list(rows[0]) == list(exports.COLUMNS)
    assert [row["upload_id"] for row in rows] == [str(waiting.pk), str(first.pk)]
    assert rows[0]["status"] == "not read" and rows[0]["digit"] == "" and rows[0]["p0"] == ""
    row = rows[1]
    assert row["file_name"] == "première.png"
    assert row["status"] == "done" and row["digit"] == str(newest.digit) and row["your_answer"] == "3"
    assert row["checkpoint_id"] == str(active_checkpoint.pk)
    probabilities = [float(row[f"p{d}"]) for d in range(10)]
    assert sum(probabilities) == pytest.approx(1, abs=1e-5)
    assert float(row["confidence"]) == pytest.approx(max(probabilities), abs=1e-6)
    assert row["uploaded_at"].endswith("Z") and row["predicted_at"].endswith("Z")


def test_a_failed_result_says_why_in_the_csv(user, digit_png):
    # No checkpoint is active: the prediction fails, saying so.
    upload = _upload(user, digit_png, 0)

    (row,) = _history_csv(user)

    assert row["upload_id"] == str(upload.pk)
    assert row["status"] == Prediction.Status.FAILED and "No trained model" in row["error"]


def test_a_prediction_waiting_for_a_worker_is_queued_in_both_downloads_as_on_the_pages(user, digit_png):
    upload = _upload(user, digit_png, 0, predict=False)
    services.predictions_create(uploads=[upload], publish=False)

    (row,) = _history_csv(user)
    (in_zip,) = _csv(_history_zip(user).read("history.csv"))

    # It said "pending", a word the pages never show.
    assert row["status"] == in_zip["status"] == "queued"


def test_an_upload_whose_predictions_staff_deleted_is_not_read_in_both_downloads_as_in_the_history_list(
    user, digit_png
):
    upload = _upload(user, digit_png, 0)
    Prediction.objects.filter(upload=upload).delete()

    (row,) = _history_csv(user)
    (in_zip,) = _csv(_history_zip(user).read("history.csv"))

    for exported in (row, in_zip):
        assert exported["upload_id"] == str(upload.pk)
        assert exported["status"] == "not read"
        assert exported["digit"] == exported["p0"] == exported["predicted_at"] == exported["error"] == ""


def test_a_file_name_a_spreadsheet_would_run_as_a_formula_stays_text(user, digit_png):
    _upload(user, digit_png, 0, name="=SUM(1+2)*cmd.png", predict=False)
    _upload(user, digit_png, 1, name="@sheet.png", predict=False)

    rows = _history_csv(user)

    assert [row["file_name"] for row in rows] == ["'@sheet.png", "'=SUM(1+2)*cmd.png"]


def test_a_file_name_a_semicolon_separated_spreadsheet_would_split_into_a_formula_is_kept_text(user, digit_png):
    upload = _upload(user, digit_png, 0, name="x;=1+1.png", predict=False)
    rows = selectors.upload_export_rows(user=user, filters=selectors.UploadFilters())

    lines = b"".join(exports.history_csv(rows)).decode("utf-8-sig").splitlines()

    # Read with semicolons as its separator, as some locales' spreadsheets do, quotes or not: no cell is a formula.
    (row,) = csv.reader(lines[1:], delimiter=";")
    assert not any(cell.startswith(("=", "+", "-", "@")) for cell in row), row
    assert f"{upload.pk},x;'=1+1.png," in lines[1]


def test_the_export_holds_only_the_owners_uploads_and_follows_the_filters(
    user, other_user, digit_png, active_checkpoint
):
    mine = [_upload(user, digit_png, index) for index in range(4)]
    _upload(other_user, digit_png, 0)
    digit = Prediction.objects.get(upload=mine[0]).digit

    everything = _history_csv(user)
    one_digit = _history_csv(user, digit=digit)

    assert {row["upload_id"] for row in everything} == {str(upload.pk) for upload in mine}
    assert one_digit and all(row["digit"] == str(digit) for row in one_digit)
    assert len(one_digit) == Prediction.objects.filter(upload__owner=user, digit=digit).count()


def test_a_long_history_is_read_in_chunks_with_a_fixed_number_of_queries_each(
    user, digit_png, monkeypatch, django_assert_num_queries
):
    uploads = [_upload(user, digit_png, index, predict=index % 2 == 0) for index in range(7)]
    monkeypatch.setattr(selectors, "EXPORT_CHUNK", 3)

    # The ids once, then uploads and predictions for each of three chunks.
    with django_assert_num_queries(1 + 2 * 3):
        rows = list(selectors.upload_export_rows(user=user))

    assert [row.upload.pk for row in rows] == [upload.pk for upload in reversed(uploads)]
    assert [row.prediction is not None for row in rows] == [index % 2 == 0 for index in reversed(range(7))]


def test_the_archive_holds_every_stored_image_and_a_csv_naming_each_file(user, digit_png, active_checkpoint):
    uploads = [_upload(user, digit_png, index) for index in range(3)]

    archive = _history_zip(user)

    rows = _csv(archive.read("history.csv"))
    assert [row["upload_id"] for row in rows] == [str(upload.pk) for upload in reversed(uploads)]
    for upload, row in zip(reversed(uploads), rows):
        with upload.image.open("rb") as stored:
            assert archive.read(row["image_file"]) == stored.read()


def test_an_image_gone_from_the_media_volume_is_named_missing_and_the_archive_still_completes(
    user, digit_png, active_checkpoint
):
    kept, lost = _upload(user, digit_png, 0), _upload(user, digit_png, 1)
    os.remove(lost.image.path)

    archive = _history_zip(user)

    rows = {row["upload_id"]: row for row in _csv(archive.read("history.csv"))}
    assert rows[str(lost.pk)]["image_file"] == "missing" and rows[str(lost.pk)]["digit"] != ""
    assert archive.namelist() == [rows[str(kept.pk)]["image_file"], "history.csv"]


def test_staff_export_every_selected_uploads_newest_result_as_text_safe_utf8_csv(
    client, user, django_user_model, digit_png, active_checkpoint, monkeypatch, django_assert_max_num_queries
):
    from django.contrib.auth.models import Permission

    # Usernames may begin with @, + or -: a spreadsheet would run them too.
    mallory = django_user_model.objects.create_user(username="@mallory", password="x9!kQ2#vLp")
    uploads = [_upload(user, digit_png, index, name=f"näme-{index}.png") for index in range(5)]
    evil = _upload(mallory, digit_png, 0, name="=HYPERLINK(1)*.png")
    waiting = _upload(user, digit_png, 1, predict=False)
    services.prediction_feedback_set(prediction=Prediction.objects.get(upload=uploads[0]), digit=8)
    viewer = django_user_model.objects.create_user(username="viewer", password="x9!kQ2#vLp", is_staff=True)
    viewer.user_permissions.set(Permission.objects.filter(codename__in=["view_upload", "view_prediction"]))
    client.force_login(viewer)
    monkeypatch.setattr(selectors, "EXPORT_CHUNK", 3)

    with django_assert_max_num_queries(20):
        response = client.post(
            "/admin/classifier/upload/?q=.png",
            {"action": "export_results_csv", "select_across": "1", "index": "0", "_selected_action": [evil.pk]},
        )
        data = b"".join(response.streaming_content)

    assert response["Content-Type"] == "text/csv; charset=utf-8" and "attachment" in response["Content-Disposition"]
    rows = _csv(data)
    assert list(rows[0]) == list(exports.STAFF_COLUMNS)
    assert [row["upload_id"] for row in rows] == [str(u.pk) for u in [waiting, evil, *reversed(uploads)]]
    by_id = {row["upload_id"]: row for row in rows}
    assert by_id[str(evil.pk)]["owner"] == "'@mallory" and by_id[str(evil.pk)]["file_name"] == "'=HYPERLINK(1)*.png"
    assert by_id[str(waiting.pk)]["status"] == "" and by_id[str(waiting.pk)]["correct"] == ""
    first = by_id[str(uploads[0].pk)]
    assert first["file_name"] == "näme-0.png" and first["feedback"] == "8"
    assert first["correct"] == ("yes" if first["digit"] == "8" else "no")
    assert sum(float(first[f"p{d}"]) for d in range(10)) == pytest.approx(1, abs=1e-5)


def test_staff_export_selected_predictions_each_with_its_verdict_against_a_samples_label(
    admin_client, django_user_model, digit_png, active_checkpoint
):
    from tests.classifier.test_classifier_admin import _rows

    samples = django_user_model.objects.create(username="samples")
    (right,) = _rows(samples, 1, sample_set="mnist", label=9, digit=9, checkpoint=active_checkpoint)
    (wrong,) = _rows(samples, 1, sample_set="mnist", label=9, digit=4, checkpoint=active_checkpoint)

    response = admin_client.post(
        "/admin/classifier/prediction/",
        {"action": "export_results_csv", "_selected_action": list(Prediction.objects.values_list("pk", flat=True))},
    )

    rows = {row["upload_id"]: row for row in _csv(b"".join(response.streaming_content))}
    assert (rows[str(right.pk)]["label"], rows[str(right.pk)]["correct"]) == ("9", "yes")
    assert (rows[str(wrong.pk)]["digit"], rows[str(wrong.pk)]["correct"]) == ("4", "no")
    assert rows[str(wrong.pk)]["sample_set"] == "mnist" and rows[str(wrong.pk)]["p9"] == "0.91"
