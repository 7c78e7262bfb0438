"""The admin lists, the sample-set accuracy summary and the re-run action."""
import io

import pytest
from django.db import connection

from classifier import services
from classifier.models import Prediction
from tests.classifier.fixtures import stored_size

pytestmark = pytest.mark.django_db


@pytest.fixture
def admin_page(client, staff_user):
    client.force_login(staff_user)
    return client


def test_upload_changelist_shows_results_and_sample_accuracy(admin_page, tmp_path, digit_png, active_checkpoint):
    from django.core.management import call_command

    (tmp_path / "mnist").mkdir()
    (tmp_path / "mnist" / "7_mnist_0.png").write_bytes(digit_png(0))
    (tmp_path / "mnist" / "9_mnist_1.png").write_bytes(digit_png(1))  # really a 2: counted wrong
    call_command("load_samples", "--root", str(tmp_path), "--sync", stdout=io.StringIO())
    page = admin_page.get("/admin/classifier/upload/").content.decode()
    assert 'id="sample-accuracy"' in page and "<strong>50.0%</strong>" in page
    assert "/uploads/" in page  # thumbnails through the authenticated view
    for query in ["latest_status=done", "latest_digit=7", "source__exact=sample", "sample_set=mnist", f"checkpoint={active_checkpoint.pk}"]:
        assert admin_page.get(f"/admin/classifier/upload/?{query}").status_code == 200, query
    assert admin_page.get("/admin/classifier/prediction/").status_code == 200
    assert admin_page.get(f"/admin/classifier/prediction/?checkpoint={active_checkpoint.pk}&status__exact=done").status_code == 200


def test_the_rerun_action_queues_a_new_prediction_per_upload(admin_page, user, digit_png, active_checkpoint, published, django_capture_on_commit_callbacks):
    upload = services.upload_create(owner=user, file=io.BytesIO(digit_png(0)), source="file")
    with django_capture_on_commit_callbacks(execute=True):
        response = admin_page.post(
            "/admin/classifier/upload/", {"action": "rerun_uploads", "_selected_action": [upload.pk]}, follow=True
        )
    assert "Queued 1 new prediction" in response.content.decode()
    (queued,) = Prediction.objects.filter(upload=upload, status="pending")
    # Behind an upload sent after it: a re-run of thousands holds up nobody's upload.
    with django_capture_on_commit_callbacks(execute=True):
        (later,) = services.predictions_submit(owner=user, files=[(io.BytesIO(digit_png(1)), "1.png")], source="file")
    assert published.prediction_ids() == [later.pk, queued.pk]


def test_uploads_cannot_be_added_through_the_admin(admin_page):
    # Its form would lack the file and the fields validation fills in: a row without an image, or a 500.
    assert admin_page.get("/admin/classifier/upload/add/").status_code == 403
    assert 'href="/admin/classifier/upload/add/"' not in admin_page.get("/admin/classifier/upload/").content.decode()


@pytest.mark.parametrize("query", ["latest_digit=x", "digit=x", "checkpoint=abc"])
def test_a_hand_edited_filter_value_gets_the_admins_error_page_not_a_500(admin_page, active_checkpoint, query):
    for path in ("/admin/classifier/upload/", "/admin/classifier/prediction/"):
        if query.startswith("latest_digit") != path.endswith("upload/") and not query.startswith("checkpoint"):
            continue  # the newest prediction's digit is the upload list's filter, the digit the prediction list's
        response = admin_page.get(f"{path}?{query}")
        assert response.status_code == 302 and response["Location"].endswith("?e=1"), (path, response.status_code)


def _upload_with_history(owner, digit_png, history):
    """An upload whose predictions are ``history``: (status, digit, seconds after the first) in insertion order."""
    import datetime as dt

    from django.utils import timezone

    upload = services.upload_create(owner=owner, file=io.BytesIO(digit_png(0)), source="file")
    start = timezone.now() - dt.timedelta(hours=1)
    for status, digit, seconds in history:
        prediction = Prediction.objects.create(upload=upload, status=status, digit=digit)
        Prediction.objects.filter(pk=prediction.pk).update(created_at=start + dt.timedelta(seconds=seconds))
    return upload


def test_filtering_uploads_by_their_newest_prediction_matches_reading_the_newest_one(user, digit_png):
    from classifier import selectors
    from classifier.models import Upload

    histories = [
        [("done", 3, 0)],
        [("done", 3, 0), ("failed", None, 10)],  # re-run, and the newer one failed
        [("failed", None, 0), ("done", 3, 10)],
        [("done", 5, 0), ("done", 3, 0)],  # created in the same instant: the later row is the newer
        [("done", 3, 0), ("done", 5, 0)],
        [("done", 3, 20), ("pending", None, 10)],  # the older row by time was inserted last
        [],
    ]
    uploads = [_upload_with_history(user, digit_png, history) for history in histories]
    annotated = selectors.upload_annotate_latest(Upload.objects.all())
    for latest in [{"status": "done"}, {"status": "failed"}, {"status": "pending"}, {"digit": 3}, {"digit": 5}]:
        (field, value), = latest.items()
        expected = set(annotated.filter(**{f"latest_{field}": value}).values_list("pk", flat=True))
        assert set(selectors.upload_filter_latest(Upload.objects.all(), **latest).values_list("pk", flat=True)) == expected
    assert set(selectors.upload_filter_latest(Upload.objects.all(), digit=3).values_list("pk", flat=True)) == {
        uploads[0].pk, uploads[2].pk, uploads[3].pk, uploads[5].pk
    }


def test_the_admin_lists_ask_nothing_that_reads_every_row_for_their_filters(admin_page, user, digit_png):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    _upload_with_history(user, digit_png, [("done", 3, 0)])
    for path in ("/admin/classifier/upload/", "/admin/classifier/prediction/", "/admin/classifier/upload/?latest_status=done"):
        with CaptureQueriesContext(connection) as queries:
            assert admin_page.get(path).status_code == 200
        statements = [query["sql"].upper() for query in queries.captured_queries]
        # A date hierarchy and filters listing every distinct value each read the whole table, on every page.
        assert not [sql for sql in statements if "DATE_TRUNC" in sql or "DJANGO_DATETIME_TRUNC" in sql], path
        distinct = [sql for sql in statements if sql.startswith("SELECT DISTINCT")]
        assert all("WHERE NOT" in sql and "SAMPLE_SET" in sql for sql in distinct), (path, distinct)
        # The filtered count only, not the whole table's beside it.
        assert sum("COUNT(*)" in sql for sql in statements) == 1, path


def test_the_sample_set_filter_lists_the_sets_and_the_users_own_uploads(admin_page, user, tmp_path, digit_png):
    from django.core.management import call_command

    (tmp_path / "mnist").mkdir()
    (tmp_path / "mnist" / "7_mnist_0.png").write_bytes(digit_png(0))
    call_command("load_samples", "--root", str(tmp_path), stdout=io.StringIO())
    own = services.upload_create(owner=user, file=io.BytesIO(digit_png(1)), name="mine.png", source="file")
    services.predictions_create(uploads=[own], publish=False)
    page = admin_page.get("/admin/classifier/upload/").content.decode()
    assert "?sample_set=mnist" in page and "none: users&#x27; uploads" in page
    mnist_only = admin_page.get("/admin/classifier/upload/?sample_set=mnist").context["cl"].result_list
    users_only = admin_page.get("/admin/classifier/upload/?sample_set=").context["cl"].result_list
    assert [u.sample_set for u in mnist_only] == ["mnist"] and [u.pk for u in users_only] == [own.pk]
    predictions = admin_page.get("/admin/classifier/prediction/?upload__sample_set=").context["cl"].result_list
    assert [p.upload_id for p in predictions] == [own.pk]


def test_the_prediction_list_filters_by_digit_and_by_having_none(admin_page, user, digit_png):
    _upload_with_history(user, digit_png, [("done", 3, 0)])
    _upload_with_history(user, digit_png, [("done", 5, 0)])
    failed = _upload_with_history(user, digit_png, [("failed", None, 0)])
    page = admin_page.get("/admin/classifier/prediction/").content.decode()
    assert "?digit=9" in page and "?digit__isnull=True" in page
    threes = admin_page.get("/admin/classifier/prediction/?digit=3").context["cl"].result_list
    assert [p.digit for p in threes] == [3]
    none = admin_page.get("/admin/classifier/prediction/?digit__isnull=True").context["cl"].result_list
    assert [p.upload_id for p in none] == [failed.pk]


@pytest.mark.parametrize("path", ["/admin/classifier/upload/", "/admin/classifier/prediction/"])
def test_the_admin_lists_offer_no_per_choice_counts(admin_page, user, digit_png, path):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    _upload_with_history(user, digit_png, [("done", 3, 0)])
    plain = admin_page.get(path)
    assert "_facets" not in plain.content.decode()
    with CaptureQueriesContext(connection) as queries:
        assert admin_page.get(f"{path}?_facets=True").status_code == 200
    assert not [q["sql"] for q in queries.captured_queries if "FILTER (WHERE" in q["sql"].upper()]


@pytest.mark.parametrize("path", ["/admin/classifier/upload/", "/admin/classifier/prediction/",
                                  "/admin/classifier/upload/?checkpoint={checkpoint}"])
def test_a_page_deep_in_an_admin_list_skips_rows_without_reading_their_predictions_or_joins(
    admin_page, user, digit_png, active_checkpoint, path
):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from classifier.admin import UploadAdmin

    uploads = [services.upload_create(owner=user, file=io.BytesIO(digit_png(i % 5)), source="file")
               for i in range(UploadAdmin.list_per_page + 3)]
    services.predictions_execute(prediction_ids=[p.pk for p in services.predictions_create(uploads=uploads, publish=False)])
    with CaptureQueriesContext(connection) as queries:
        response = admin_page.get(path.format(checkpoint=active_checkpoint.pk), {"p": 2})
    assert response.status_code == 200
    # The three oldest, newest first, each read in full.
    rows = response.context["cl"].result_list
    assert [getattr(row, "upload_id", row.pk) for row in rows] == [upload.pk for upload in reversed(uploads[:3])]
    assert all(getattr(row, "latest_status", "done") == "done" for row in rows)
    (skipping,) = [query["sql"].upper() for query in queries.captured_queries if "OFFSET" in query["sql"].upper()]
    # Neither the newest prediction (a subquery among the columns) nor a joined owner or checkpoint per skipped row.
    assert "SELECT" not in skipping.split(" FROM ", 1)[0][len("SELECT"):]
    assert "AUTH_USER" not in skipping and "TRAINING_CHECKPOINT" not in skipping


def test_staff_see_who_takes_the_most_storage_first(admin_client, user, other_user, digit_png, settings):
    settings.UPLOAD_QUOTA_MB = 1
    services.predictions_submit(owner=user, files=[(io.BytesIO(digit_png(0)), "0.png")], source="file")
    services.predictions_submit(
        owner=other_user, files=[(io.BytesIO(digit_png(i)), f"{i}.png") for i in range(1, 4)], source="file"
    )
    page = admin_client.get("/admin/classifier/storageuse/").content.decode()
    assert page.index(">bob<") < page.index(">alice<")
    share = sum(stored_size(digit_png(i)) for i in range(1, 4)) / 2**20
    assert f">{share:.0%}<" in page and ">no limit<" not in page


def test_an_administrator_can_delete_a_user_who_uploaded(admin_client, user, digit_png):
    services.predictions_submit(owner=user, files=[(io.BytesIO(digit_png(0)), "0.png")], source="file")
    page = admin_client.get(f"/admin/auth/user/{user.pk}/delete/")
    assert page.status_code == 200 and "permission to delete" not in page.content.decode()
    response = admin_client.post(f"/admin/auth/user/{user.pk}/delete/", {"post": "yes"})
    assert response.status_code == 302
    assert not type(user).objects.filter(pk=user.pk).exists()


def test_an_upload_cannot_be_moved_to_another_owner_in_the_admin(admin_page, user, other_user, digit_png):
    services.predictions_submit(owner=user, files=[(io.BytesIO(digit_png(0)), "0.png")], source="file")
    upload = user.uploads.get()
    form = {"original_name": "renamed.png", "owner": other_user.pk, "source": "sample", "sample_set": "mnist"}

    response = admin_page.post(f"/admin/classifier/upload/{upload.pk}/change/", form)

    assert response.status_code == 302
    upload.refresh_from_db()
    assert (upload.original_name, upload.owner, upload.source, upload.sample_set) == ("renamed.png", user, "file", "")
    assert other_user.uploads.count() == 0


@pytest.mark.parametrize(("label", "kept"), [("42", None), ("7", 7)])
def test_an_uploads_true_digit_set_in_the_admin_must_be_a_digit(admin_page, user, digit_png, label, kept):
    services.predictions_submit(owner=user, files=[(io.BytesIO(digit_png(0)), "0.png")], source="file")
    upload = user.uploads.get()

    response = admin_page.post(f"/admin/classifier/upload/{upload.pk}/change/", {"original_name": "0.png", "label": label})

    upload.refresh_from_db()
    assert upload.label == kept
    if kept is None:
        assert response.status_code == 200 and "less than or equal to 9" in response.content.decode()


def test_an_uploads_admin_page_shows_one_image_field_whose_link_answers_for_staff_allowed_to_view_uploads(
    client, user, digit_png, django_user_model
):
    from django.contrib.auth.models import Permission
    from django.urls import reverse

    upload = services.upload_create(owner=user, file=io.BytesIO(digit_png(0)), source="file")
    viewer = django_user_model.objects.create_user(username="viewer", password="x9!kQ2#vLp", is_staff=True)
    viewer.user_permissions.set(Permission.objects.filter(codename="view_upload"))
    client.force_login(viewer)
    page = client.get(reverse("admin:classifier_upload_change", args=[upload.pk]))
    html = page.content.decode()
    image = reverse("classifier:upload_image", args=[upload.pk])
    assert page.status_code == 200 and html.count("Image:") == 1 and "media-not-served" not in html
    assert f'<a href="{image}"' in html
    answer = client.get(image)
    assert answer.status_code == 200 and answer["Content-Type"] == "image/png"


def test_the_prediction_list_and_page_show_times_to_a_tenth_of_a_millisecond_and_confidence_as_a_percentage(
    admin_page, user, digit_png
):
    upload = _upload_with_history(user, digit_png, [("done", 3, 0)])
    Prediction.objects.filter(upload=upload).update(
        confidence=0.98765, queue_ms=108.87299999999999, compute_ms=2.803493000101298
    )
    html = admin_page.get("/admin/classifier/prediction/").content.decode()
    assert "108.9" in html and "2.8" in html and "98.8%" in html
    assert "108.87" not in html and "2.803" not in html and "0.98765" not in html
    # And each prediction's page.
    page = admin_page.get(f"/admin/classifier/prediction/{upload.predictions.get().pk}/change/").content.decode()
    assert "108.9" in page and "2.8" in page and "98.8%" in page
    assert "108.87" not in page and "2.803" not in page and "0.98765" not in page


def test_the_admin_lists_put_what_matters_first_and_keep_their_columns_few(admin_page, user, digit_png):
    _upload_with_history(user, digit_png, [("done", 3, 0)])
    uploads = admin_page.get("/admin/classifier/upload/").context["cl"].list_display
    predictions = admin_page.get("/admin/classifier/prediction/").context["cl"].list_display
    # The action checkbox, then at most ten narrow columns: more do not fit a 1280 px window.
    assert len(uploads) <= 11 and len(predictions) <= 11
    assert predictions.index("result") < predictions.index("checkpoint_display")


def _rows(owner, count, *, sample_set="", label=None, digit=3, status="done", checkpoint=None, feedback=None):
    """``count`` uploads with one prediction each, written in bulk: the lists' cost is in rows, not in images."""
    import uuid

    from classifier.models import Upload

    uploads = Upload.objects.bulk_create([
        Upload(
            owner=owner, image=f"uploads/bulk/{sample_set or 'own'}-{index}.png", original_name=f"{index}.png",
            format="PNG", size=100, stored_size=100, width=28, height=28, sha256=uuid.uuid4().hex * 2,
            source="sample" if sample_set else "file", sample_set=sample_set, label=label,
        )
        for index in range(count)
    ])
    Prediction.objects.bulk_create([
        Prediction(
            upload=upload, status=status, digit=digit if status == "done" else None, checkpoint=checkpoint,
            confidence=0.9 if status == "done" else None, feedback=feedback,
            probabilities=[0.01] * 9 + [0.91] if status == "done" else None,
        )
        for upload in uploads
    ])
    return uploads


def _listed(client, path, **query):
    return {getattr(row, "upload_id", row.pk) for row in client.get(path, query).context["cl"].result_list}


def test_staff_filter_uploads_and_predictions_by_whether_they_got_the_true_digit(
    admin_page, user, django_user_model, active_checkpoint, django_assert_max_num_queries
):
    samples = django_user_model.objects.create(username="samples")
    (right,) = _rows(samples, 1, sample_set="mnist", label=7, digit=7)
    (wrong,) = _rows(samples, 1, sample_set="other", label=7, digit=2)
    (owner_said,) = _rows(user, 1, digit=4, feedback=4)  # no label: its owner's answer is the true digit
    (owner_disagreed,) = _rows(user, 1, digit=4, feedback=1)
    (unknown,) = _rows(user, 1, digit=4)  # nothing says what it shows: neither right nor wrong
    (failed,) = _rows(samples, 1, sample_set="mnist", label=3, status="failed")
    (reread,) = _rows(samples, 1, sample_set="other", label=5, digit=5)
    Prediction.objects.create(upload=reread, status="done", digit=6)  # its newest answer is wrong
    _rows(user, 150, digit=3, feedback=8)  # more than a page of wrong ones

    with django_assert_max_num_queries(12):
        listed_right = _listed(admin_page, "/admin/classifier/upload/", verdict="right")
    assert listed_right == {right.pk, owner_said.pk}
    wrong_uploads = admin_page.get("/admin/classifier/upload/", {"verdict": "wrong", "sample_set": ""})
    assert wrong_uploads.context["cl"].result_count == 151
    assert _listed(admin_page, "/admin/classifier/upload/", verdict="wrong", sample_set__exact="other") == {
        wrong.pk, reread.pk
    }
    assert {unknown.pk, failed.pk}.isdisjoint(_listed(admin_page, "/admin/classifier/upload/", verdict="wrong", p=2))
    # Each prediction against the truth, the older answer of the re-read sample included.
    assert _listed(admin_page, "/admin/classifier/prediction/", verdict="right") == {right.pk, owner_said.pk, reread.pk}
    assert _listed(admin_page, "/admin/classifier/prediction/", verdict="wrong", upload__sample_set="other") == {
        wrong.pk, reread.pk
    }
    # The two wrong samples, the one its owner corrected and the 150.
    assert admin_page.get("/admin/classifier/prediction/", {"verdict": "wrong"}).context["cl"].result_count == 153
    assert owner_disagreed.pk in _listed(admin_page, "/admin/classifier/prediction/", verdict="wrong", p=2)


def test_the_checkpoint_filter_of_the_uploads_list_means_the_newest_prediction_as_its_other_filters_do(
    admin_page, user, register_checkpoint, trained_model_file
):
    first = register_checkpoint(trained_model_file, name="first", activate=False)
    second = register_checkpoint(trained_model_file, name="second", activate=False)
    (upload,) = _rows(user, 1, digit=3, checkpoint=first)
    Prediction.objects.create(upload=upload, status="failed", checkpoint=second, error="broke")

    path = "/admin/classifier/upload/"
    # The first checkpoint read it well: "failed" is the second's.
    assert _listed(admin_page, path, checkpoint=first.pk, latest_status="failed") == set()
    assert _listed(admin_page, path, checkpoint=second.pk, latest_status="failed") == {upload.pk}
    assert _listed(admin_page, path, checkpoint=first.pk) == set()


def test_the_checkpoint_filters_offer_every_checkpoint_that_predicted_and_the_active_one_however_many_came_after(
    admin_page, user, register_checkpoint, trained_model_file
):
    served = register_checkpoint(trained_model_file, name="served", activate=False)
    _rows(user, 1, checkpoint=served)
    active = register_checkpoint(trained_model_file, name="active", activate=True)
    for index in range(60):  # epoch checkpoints of later runs, none of which served
        register_checkpoint(trained_model_file, name=f"epoch-{index}", activate=False)

    for path in ("/admin/classifier/upload/", "/admin/classifier/prediction/"):
        (spec,) = [spec for spec in admin_page.get(path).context["cl"].filter_specs
                   if getattr(spec, "parameter_name", None) == "checkpoint"]
        assert [value for value, _ in spec.lookup_choices] == [str(active.pk), str(served.pk)], path


def test_sample_set_accuracy_is_never_rounded_up_to_a_perfect_score(admin_page, django_user_model, active_checkpoint):
    samples = django_user_model.objects.create(username="samples")
    _rows(samples, 199, sample_set="mnist", label=3, digit=3, checkpoint=active_checkpoint)
    _rows(samples, 1, sample_set="mnist", label=4, digit=9, checkpoint=active_checkpoint)
    _rows(samples, 1, sample_set="other", label=4, digit=9, checkpoint=active_checkpoint)

    html = admin_page.get("/admin/classifier/upload/").content.decode()

    start = html.index('id="sample-accuracy"')
    table = html[start : html.index("</table>", start)]
    cells = [cell.strip() for cell in table.split("<td>")[1:]]
    assert cells[1:5] == ["200</td>", "200</td>", "199</td>", "<strong>99.5%</strong></td>"]
    assert cells[10] == "<strong>0.0%</strong></td>"  # the other set: its one image read wrong


def test_sample_set_accuracy_is_rounded_to_the_nearest_tenth(admin_page, django_user_model, active_checkpoint):
    samples = django_user_model.objects.create(username="samples")
    _rows(samples, 2, sample_set="mnist", label=3, digit=3, checkpoint=active_checkpoint)
    _rows(samples, 1, sample_set="mnist", label=4, digit=9, checkpoint=active_checkpoint)

    html = admin_page.get("/admin/classifier/upload/").content.decode()

    assert "<strong>66.7%</strong>" in html  # 66.67, not cut to 66.6


def test_a_sample_whose_label_was_cleared_counts_neither_right_nor_wrong(admin_page, django_user_model,
                                                                          active_checkpoint):
    samples = django_user_model.objects.create(username="samples")
    _rows(samples, 3, sample_set="mnist", label=3, digit=3, checkpoint=active_checkpoint)
    _rows(samples, 1, sample_set="mnist", label=None, digit=9, checkpoint=active_checkpoint)

    html = admin_page.get("/admin/classifier/upload/").content.decode()

    start = html.index('id="sample-accuracy"')
    cells = [cell.strip() for cell in html[start : html.index("</table>", start)].split("<td>")[1:]]
    assert cells[1:5] == ["3</td>", "3</td>", "3</td>", "<strong>100.0%</strong></td>"]


def _browser_confirms(client, path, confirmation):
    """What a browser posts back from a deletion's confirmation page: its form's hidden fields, to the same address."""
    import re

    form = confirmation.content.decode().split('<form method="post">', 1)[1].split("</form>", 1)[0]
    fields = [(name, value) for name, value in re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)"', form)]
    return client.post(path, {name: [v for n, v in fields if n == name] for name, _ in fields})


def test_deleting_every_upload_of_a_long_list_takes_a_few_statements_and_is_confirmed_by_count(
    admin_page, user, other_user, digit_png, django_assert_max_num_queries
):
    from classifier.models import StorageUse, Upload

    (kept,) = services.predictions_submit(owner=user, files=[(io.BytesIO(digit_png(0)), "k.png")], source="file")
    _rows(user, 700)
    _rows(other_user, 500)
    (sample,) = _rows(other_user, 1, sample_set="mnist", label=3)  # filtered out: stays
    StorageUse.objects.update_or_create(owner=other_user, defaults={"bytes": 501 * 100 + 7})
    path = "/admin/classifier/upload/?source__exact=file"
    select_all = {"action": "delete_selected", "select_across": "1", "index": "0", "_selected_action": [kept.upload_id]}
    few = admin_page.post(path, {**select_all, "select_across": "0"}).content.decode()
    assert f"/admin/classifier/prediction/{kept.pk}/change/" in few  # a short list still names each one

    with django_assert_max_num_queries(20):
        confirmation = admin_page.post(path, select_all)
    page = confirmation.content.decode()
    assert confirmation.status_code == 200 and "1,201 uploads" in page and "1,201 predictions" in page
    assert len(page) < 50_000  # each of them with its link made 4 MB for 10,000

    with django_assert_max_num_queries(60):
        response = _browser_confirms(admin_page, path, confirmation)
    assert response.status_code == 302
    assert list(Upload.objects.values_list("pk", flat=True)) == [sample.pk]
    assert StorageUse.objects.get(owner=other_user).bytes == 107


def test_deleting_every_prediction_of_a_long_list_is_confirmed_by_count(admin_page, user):
    from classifier.models import Upload

    _rows(user, 1100, status="failed")
    (done,) = _rows(user, 1)  # filtered out: stays
    path = "/admin/classifier/prediction/?status__exact=failed"
    first = Prediction.objects.filter(status="failed").first()
    select_all = {"action": "delete_selected", "select_across": "1", "index": "0", "_selected_action": [first.pk]}

    confirmation = admin_page.post(path, select_all)
    page = confirmation.content.decode()
    assert confirmation.status_code == 200 and "1,100 predictions" in page and len(page) < 50_000
    response = _browser_confirms(admin_page, path, confirmation)

    assert response.status_code == 302
    assert list(Prediction.objects.values_list("upload_id", flat=True)) == [done.pk]
    assert Upload.objects.count() == 1101  # the uploads stay: only their predictions were selected


def test_a_confirmed_select_all_deletes_nothing_stored_after_it_and_nothing_if_more_match_by_then(
    admin_page, user
):
    from classifier.models import Upload

    path = "/admin/classifier/upload/?latest_digit=3"
    threes = _rows(user, 2, digit=3)
    (five,) = _rows(user, 1, digit=5)
    select_all = {"action": "delete_selected", "select_across": "1", "index": "0", "_selected_action": [threes[0].pk]}
    confirmation = admin_page.post(path, select_all)
    Prediction.objects.filter(upload=five).update(digit=3)  # read again meanwhile: now it matches too

    response = _browser_confirms(admin_page, path, confirmation)

    assert "3 uploads match now, not the 2 confirmed; nothing was deleted" in admin_page.get(response["Location"]).content.decode()
    assert Upload.objects.count() == 3
    confirmation = admin_page.post(path, select_all)
    (later,) = _rows(user, 1, digit=3)

    _browser_confirms(admin_page, path, confirmation)

    assert list(Upload.objects.values_list("pk", flat=True)) == [later.pk]
    assert not {upload.pk for upload in threes} & set(Upload.objects.values_list("pk", flat=True))


def test_a_re_run_of_more_uploads_than_one_request_can_queue_queues_nothing_and_says_so(
    admin_page, user, active_checkpoint, published, monkeypatch, django_capture_on_commit_callbacks
):
    from classifier import admin as classifier_admin

    monkeypatch.setattr(classifier_admin, "RERUN_MAX_SELECTED", 3)
    uploads = _rows(user, 4)
    select_all = {"action": "rerun_uploads", "select_across": "1", "index": "0", "_selected_action": [uploads[0].pk]}

    with django_capture_on_commit_callbacks(execute=True):
        response = admin_page.post("/admin/classifier/upload/", select_all, follow=True)

    assert "4 uploads are selected, and at most 3 are re-run at once; nothing was queued" in response.content.decode()
    assert Prediction.objects.count() == 4 and published.prediction_ids() == []
    with django_capture_on_commit_callbacks(execute=True):
        response = admin_page.post("/admin/classifier/upload/?p=1&latest_digit=3", {**select_all, "_selected_action": []})
    assert Prediction.objects.count() == 4  # still too many, whatever the page


def test_re_running_twice_queues_each_upload_once(
    admin_page, user, active_checkpoint, published, django_capture_on_commit_callbacks
):
    uploads = _rows(user, 3)
    select_all = {"action": "rerun_uploads", "select_across": "1", "index": "0", "_selected_action": [uploads[0].pk]}

    with django_capture_on_commit_callbacks(execute=True):
        admin_page.post("/admin/classifier/upload/", select_all)
    with django_capture_on_commit_callbacks(execute=True):
        response = admin_page.post("/admin/classifier/prediction/", select_all, follow=True)

    assert "Queued 0 new prediction(s) with the active checkpoint; 3 already waiting" in response.content.decode()
    assert Prediction.objects.filter(status="pending").count() == 3 and len(published.prediction_ids()) == 3


def test_staff_allowed_to_change_predictions_cannot_rewrite_what_the_workers_recorded(
    client, user, django_user_model
):
    from django.contrib.auth.models import Permission

    (upload,) = _rows(user, 1, status="pending")
    prediction = upload.predictions.get()
    staff = django_user_model.objects.create_user(username="editor", password="x9!kQ2#vLp", is_staff=True)
    staff.user_permissions.set(Permission.objects.filter(codename__in=["view_prediction", "change_prediction"]))
    client.force_login(staff)

    client.post(f"/admin/classifier/prediction/{prediction.pk}/change/",
                {"feedback": "5", "attempts": "99", "model_hand_backs": "99"})

    prediction.refresh_from_db()
    assert (prediction.feedback, prediction.attempts, prediction.model_hand_backs) == (5, 0, 0)


def test_a_prediction_and_its_upload_show_the_image_and_all_ten_probabilities_by_digit(admin_page, user):
    (upload,) = _rows(user, 1, digit=9)
    prediction = upload.predictions.get()
    Prediction.objects.filter(pk=prediction.pk).update(probabilities=[0.001 * d for d in range(9)] + [0.964])

    for path in (f"/admin/classifier/prediction/{prediction.pk}/change/", f"/admin/classifier/upload/{upload.pk}/change/"):
        html = admin_page.get(path).content.decode()
        assert "".join(f"<th>{d}</th>" for d in range(10)) in html, path
        assert "<td>0.8%</td><td>96.4%</td>" in html, path
        assert f'src="/uploads/{upload.pk}/image/"' in html or f"/uploads/{upload.pk}/" in html, path
    upload_page = admin_page.get(f"/admin/classifier/upload/{upload.pk}/change/").content.decode()
    assert f"?upload__id__exact={upload.pk}" in upload_page
    assert _listed(admin_page, "/admin/classifier/prediction/", upload__id__exact=upload.pk) == {upload.pk}


def test_an_owners_storage_count_cannot_be_deleted_on_its_own_so_their_uploads_still_count(
    admin_client, user, digit_png, settings
):
    from classifier.models import StorageUse

    settings.UPLOAD_QUOTA_MB = 1
    services.predictions_submit(owner=user, files=[(io.BytesIO(digit_png(0)), "0.png")], source="file")
    used = StorageUse.objects.get(owner=user).bytes
    page = admin_client.get(f"/admin/classifier/storageuse/{user.pk}/change/").content.decode()

    response = admin_client.post(f"/admin/classifier/storageuse/{user.pk}/delete/", {"post": "yes"})

    # Made again at zero by the next upload, the count would leave everything stored so far outside the quota.
    assert f'/admin/classifier/storageuse/{user.pk}/delete/' not in page
    assert response.status_code == 403 and StorageUse.objects.get(owner=user).bytes == used


def test_staff_find_the_uploads_whose_predictions_were_all_deleted_and_re_run_them(
    admin_page, user, active_checkpoint, published, django_capture_on_commit_callbacks
):
    kept, emptied = _rows(user, 2)
    Prediction.objects.filter(upload=emptied).delete()

    assert _listed(admin_page, "/admin/classifier/upload/", latest_status="none") == {emptied.pk}
    with django_capture_on_commit_callbacks(execute=True):
        admin_page.post(
            "/admin/classifier/upload/?latest_status=none",
            {"action": "rerun_uploads", "select_across": "1", "index": "0", "_selected_action": [emptied.pk]},
        )

    assert emptied.predictions.get().status == "pending" and kept.predictions.count() == 1
    assert published.prediction_ids() == [emptied.predictions.get().pk]


def test_the_admin_lists_show_each_upload_small_and_ask_for_it_only_once_in_view(admin_page, user, digit_png):
    upload = _upload_with_history(user, digit_png, [("done", 3, 0)])
    thumbnail = (f'<img src="/uploads/{upload.pk}/image/128px" alt="The image of upload {upload.pk}" '
                 'class="admin-thumbnail" loading="lazy">')
    for listed in ("/admin/classifier/upload/", "/admin/classifier/prediction/"):
        assert thumbnail in admin_page.get(listed).content.decode(), listed
    page = admin_page.get(f"/admin/classifier/upload/{upload.pk}/change/").content.decode()
    assert f'src="/uploads/{upload.pk}/image/512px"' in page


def _history(model):
    from django.contrib.admin.models import DELETION, LogEntry
    from django.contrib.contenttypes.models import ContentType

    from django.utils import timezone

    entries = LogEntry.objects.filter(content_type=ContentType.objects.get_for_model(model), action_flag=DELETION)
    assert all(abs(timezone.now() - entry.action_time).total_seconds() < 60 for entry in entries)
    return {int(entry.object_id): (entry.object_repr, entry.user_id) for entry in entries}


def test_a_select_all_deletion_records_one_history_entry_for_each_upload_it_deleted_and_none_for_others(
    admin_page, staff_user, user, other_user
):
    from classifier.models import StorageUse, Upload

    deleted = [*_rows(user, 3), *_rows(other_user, 2)]
    Upload.objects.filter(pk=deleted[0].pk).update(original_name="")  # named by its source, as str() does
    Upload.objects.filter(pk=deleted[1].pk).update(original_name="é" * 255)  # cut to 200 characters, as Django does
    (kept,) = _rows(other_user, 1, sample_set="mnist", label=3)
    StorageUse.objects.update_or_create(owner=user, defaults={"bytes": 3 * 100 + 9})
    names = {upload.pk: str(upload)[:200] for upload in Upload.objects.filter(pk__in=[u.pk for u in deleted])}
    path = "/admin/classifier/upload/?source__exact=file"
    select_all = {"action": "delete_selected", "select_across": "1", "index": "0", "_selected_action": [deleted[0].pk]}

    response = _browser_confirms(admin_page, path, admin_page.post(path, select_all))

    assert "Successfully deleted 5 uploads." in admin_page.get(response["Location"]).content.decode()
    assert _history(Upload) == {pk: (name, staff_user.pk) for pk, name in names.items()}
    assert list(Upload.objects.values_list("pk", flat=True)) == [kept.pk]
    assert list(Prediction.objects.values_list("upload_id", flat=True)) == [kept.pk]
    assert StorageUse.objects.get(owner=user).bytes == 9


def test_a_selection_of_predictions_records_one_history_entry_for_each_prediction_it_deleted(
    admin_page, staff_user, user
):
    from classifier.models import Upload

    failed = _rows(user, 3, status="failed")
    _rows(user, 2)  # done: not selected, kept
    selected = [upload.predictions.get() for upload in failed[:2]]
    path = "/admin/classifier/prediction/"
    choose = {"action": "delete_selected", "index": "0", "_selected_action": [p.pk for p in selected]}

    response = _browser_confirms(admin_page, path, admin_page.post(path, choose))

    assert "Successfully deleted 2 predictions." in admin_page.get(response["Location"]).content.decode()
    assert _history(Prediction) == {p.pk: (f"Prediction {p.pk} (failed)", staff_user.pk) for p in selected}
    assert Prediction.objects.count() == 3 and Upload.objects.count() == 5


def test_files_of_uploads_deleted_by_staff_go_only_once_the_deletion_commits(
    staff_user, user, digit_png, django_capture_on_commit_callbacks
):
    from django.core.files.storage import default_storage

    from classifier.models import Upload

    uploads = [services.upload_create(owner=user, file=io.BytesIO(digit_png(i)), source="file") for i in range(2)]
    (kept,) = [services.upload_create(owner=user, file=io.BytesIO(digit_png(2)), source="file")]
    names = [upload.image.name for upload in uploads]

    with django_capture_on_commit_callbacks() as after_commit:
        deleted = services.uploads_delete_by_staff(
            user=staff_user, uploads=Upload.objects.filter(pk__in=[u.pk for u in uploads])
        )
        assert all(default_storage.exists(name) for name in names)  # the deletion may still roll back

    assert deleted == 2 and all(default_storage.exists(name) for name in names)
    for callback in after_commit:
        callback()
    assert not any(default_storage.exists(name) for name in names)
    assert default_storage.exists(kept.image.name)


@pytest.mark.skipif(connection.vendor != "postgresql", reason="row locks: SQLite writes one transaction at a time")
@pytest.mark.django_db(transaction=True)
def test_staff_deleting_predictions_while_others_delete_their_uploads_wait_for_each_other_instead_of_deadlocking(
    staff_user, user, monkeypatch
):
    from classifier.models import Upload
    from classifier.services import staff_deletion
    from tests.classifier.fixtures import deletions_race

    first, second = _rows(user, 2)
    again = Prediction.objects.create(upload=first, status="failed")  # the first upload's re-run: a later id
    # A statement per upload: the first's predictions are deleted, the second's not yet, as with two of 5,000.
    monkeypatch.setattr(staff_deletion, "_STATEMENT_ROWS", 1)
    chosen = [second.predictions.get().pk, again.pk]

    outcome = deletions_race(
        held=lambda: services.uploads_delete_by_staff(user=staff_user, uploads=Upload.objects.order_by("pk")),
        other=lambda: services.predictions_delete_by_staff(
            user=staff_user, predictions=Prediction.objects.filter(pk__in=chosen)),
    )

    assert not [value for value in outcome.values() if isinstance(value, Exception)], outcome
    assert outcome["held"] == 2 and not Upload.objects.exists() and not Prediction.objects.exists()


def test_a_staff_deletion_that_fails_midway_deletes_records_and_removes_nothing(
    admin_page, user, django_capture_on_commit_callbacks
):
    from django.db import DatabaseError, connection

    from classifier.models import Upload

    uploads = _rows(user, 600)  # more than one batch of Django's own deletion by the admin
    refused = uploads[-1].pk
    with connection.cursor() as cursor:  # the database refuses to delete the last one, as a failing disk would
        if connection.vendor == "postgresql":
            cursor.execute(
                "CREATE FUNCTION pg_temp.refuse_delete() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                f"IF OLD.id = {refused} THEN RAISE EXCEPTION 'refused'; END IF; RETURN OLD; END $$"
            )
            cursor.execute("CREATE TRIGGER refuse_delete BEFORE DELETE ON classifier_upload FOR EACH ROW "
                           "EXECUTE FUNCTION pg_temp.refuse_delete()")
        else:
            cursor.execute(f"CREATE TRIGGER refuse_delete BEFORE DELETE ON classifier_upload WHEN OLD.id = {refused} "
                           "BEGIN SELECT RAISE(ABORT, 'refused'); END")
    path = "/admin/classifier/upload/"
    select_all = {"action": "delete_selected", "select_across": "1", "index": "0", "_selected_action": [uploads[0].pk]}
    confirmation = admin_page.post(path, select_all)

    with django_capture_on_commit_callbacks() as after_commit, pytest.raises(DatabaseError, match="refused"):
        _browser_confirms(admin_page, path, confirmation)

    assert Upload.objects.count() == 600 and Prediction.objects.count() == 600
    assert _history(Upload) == {}
    assert after_commit == []  # no file is removed


def test_deleting_more_uploads_or_predictions_than_one_deletion_takes_is_refused_up_front_saying_how(
    admin_page, user, monkeypatch
):
    from django.contrib.admin.models import LogEntry

    from classifier.models import Upload
    from classifier.services import staff_deletion

    monkeypatch.setattr(staff_deletion, "STAFF_DELETE_MAX", 3)
    _rows(user, 4)
    for path, plural in (("/admin/classifier/upload/", "uploads"), ("/admin/classifier/prediction/", "predictions")):
        select_all = {"action": "delete_selected", "select_across": "1", "index": "0", "_selected_action": [1]}

        response = admin_page.post(path, select_all, follow=True)

        page = response.content.decode()
        assert f"4 {plural} are selected, and at most 3 are deleted at once; nothing was deleted. Narrow the list" in page
        # Uploads have a command that deletes any number in batches; predictions go with their uploads or by filters.
        assert ("manage.py delete_uploads" in page) is (plural == "uploads")
        assert "Are you sure?" not in page
        # Confirmed all the same (a page from before the limit was lowered): refused too.
        confirmed = {**select_all, "post": "yes", "newest": 10**15, "confirmed": 4}
        response = admin_page.post(path, confirmed, follow=True)
        assert "at most 3 are deleted at once; nothing was deleted" in response.content.decode()
    assert Upload.objects.count() == 4 and Prediction.objects.count() == 4 and not LogEntry.objects.exists()
