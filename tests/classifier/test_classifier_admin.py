"""The admin lists, the sample-set accuracy summary and the re-run action."""
import io

import pytest

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
    assert 'id="sample-accuracy"' in page and "50%" in page
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
    assert published.prediction_ids() == [queued.pk]


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


def test_the_prediction_list_shows_times_to_a_tenth_of_a_millisecond_and_confidence_as_a_percentage(
    admin_page, user, digit_png
):
    upload = _upload_with_history(user, digit_png, [("done", 3, 0)])
    Prediction.objects.filter(upload=upload).update(confidence=0.98765, queue_ms=108.87299999999999, compute_ms=2.803493000101298)
    html = admin_page.get("/admin/classifier/prediction/").content.decode()
    assert "108.9" in html and "2.8" in html and "98.8%" in html
    assert "108.87" not in html and "2.803" not in html and "0.98765" not in html


def test_the_admin_lists_put_what_matters_first_and_keep_their_columns_few(admin_page, user, digit_png):
    _upload_with_history(user, digit_png, [("done", 3, 0)])
    uploads = admin_page.get("/admin/classifier/upload/").context["cl"].list_display
    predictions = admin_page.get("/admin/classifier/prediction/").context["cl"].list_display
    # The action checkbox, then at most ten narrow columns: more do not fit a 1280 px window.
    assert len(uploads) <= 11 and len(predictions) <= 11
    assert predictions.index("result") < predictions.index("checkpoint_display")
