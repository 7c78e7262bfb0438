"""The admin lists, the sample-set accuracy summary and the re-run action."""
import io

import pytest

from classifier import services
from classifier.models import Prediction

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


@pytest.mark.parametrize("query", ["latest_digit=x", "checkpoint=abc"])
def test_a_hand_edited_filter_value_gets_the_admins_error_page_not_a_500(admin_page, active_checkpoint, query):
    for path in ("/admin/classifier/upload/", "/admin/classifier/prediction/"):
        if path.endswith("prediction/") and query.startswith("latest_digit"):
            continue  # that filter is the upload list's only
        response = admin_page.get(f"{path}?{query}")
        assert response.status_code == 302 and response["Location"].endswith("?e=1"), (path, response.status_code)
