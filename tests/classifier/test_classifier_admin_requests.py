"""The admin lists and change pages answering what staff send them: feedback, hand-edited addresses and forms."""
import pytest

from classifier.models import Prediction
from tests.classifier.test_classifier_admin import _listed, _rows

pytestmark = pytest.mark.django_db


@pytest.fixture
def admin_page(client, staff_user):
    client.force_login(staff_user)
    return client


def test_feedback_given_in_the_admin_on_an_older_prediction_reaches_the_uploads_newer_ones(admin_page, user):
    (upload,) = _rows(user, 1, digit=3)
    older = upload.predictions.get()
    newer = Prediction.objects.create(upload=upload, status="done", digit=3)  # a re-run since

    response = admin_page.post(f"/admin/classifier/prediction/{older.pk}/change/", {"feedback": "5"})

    assert response.status_code == 302
    assert dict(upload.predictions.values_list("pk", "feedback")) == {older.pk: 5, newer.pk: 5}
    # The list's true digit and its verdict read the newest prediction.
    (row,) = admin_page.get("/admin/classifier/upload/").context["cl"].result_list
    assert row.latest_feedback == 5
    assert _listed(admin_page, "/admin/classifier/upload/", verdict="wrong") == {upload.pk}


def test_feedback_cleared_in_the_admin_is_cleared_on_the_newer_predictions_too(admin_page, user):
    (upload,) = _rows(user, 1, digit=3, feedback=3)
    older = upload.predictions.get()
    newer = Prediction.objects.create(upload=upload, status="done", digit=3, feedback=3)

    admin_page.post(f"/admin/classifier/prediction/{older.pk}/change/", {"feedback": ""})

    assert dict(upload.predictions.values_list("pk", "feedback")) == {older.pk: None, newer.pk: None}


@pytest.mark.parametrize(
    ("path", "query"),
    [
        ("/admin/classifier/upload/", "sample_set=%00"),
        ("/admin/classifier/upload/", "latest_status=%00"),
        ("/admin/classifier/upload/", "source__exact=%00"),
        ("/admin/classifier/upload/", "original_name=a%00b"),
        ("/admin/classifier/prediction/", "upload__sample_set=%00"),
        ("/admin/classifier/prediction/", "status__exact=%00"),
        ("/admin/classifier/prediction/", "upload__source__exact=%00"),
    ],
)
def test_a_nul_character_in_a_lists_address_gets_the_admins_error_page_not_a_500(admin_page, user, path, query):
    # PostgreSQL refuses a NUL in any text it is sent; SQLite took it, and found nothing.
    _rows(user, 1)

    response = admin_page.get(f"{path}?{query}")

    assert response.status_code == 302 and response["Location"].endswith("?e=1")


@pytest.mark.parametrize("action", ["delete_selected", "rerun_uploads", "export_results_csv"])
@pytest.mark.parametrize("path", ["/admin/classifier/upload/", "/admin/classifier/prediction/"])
def test_an_action_on_a_selection_that_names_no_row_by_a_number_is_a_bad_request_not_a_500(
    admin_page, user, active_checkpoint, path, action
):
    (upload,) = _rows(user, 1)
    selected = [str(Prediction.objects.get().pk if "prediction" in path else upload.pk), "abc"]

    response = admin_page.post(path, {"action": action, "index": "0", "_selected_action": selected})

    assert response.status_code == 400
    assert Prediction.objects.count() == 1 and upload.predictions.exists()


def _links_without_a_name(html: str) -> list[str]:
    """Links whose text is empty and whose pictures have no alt text: a screen reader reads out only their address."""
    import re

    nameless = []
    for link in re.findall(r"<a\b[^>]*>.*?</a>", html, re.S):
        text = re.sub(r"<[^>]+>", "", link).strip()
        alts = [alt for alt in re.findall(r'<img\b[^>]*\balt="([^"]*)"', link) if alt.strip()]
        if not text and not alts and 'title="' not in link.split(">", 1)[0] and "aria-label" not in link:
            nameless.append(link)
    return nameless


def test_every_link_of_the_upload_and_prediction_lists_and_pages_has_a_name(admin_page, user):
    (upload,) = _rows(user, 1)
    prediction = upload.predictions.get()

    for path in ("/admin/classifier/upload/", "/admin/classifier/prediction/",
                 f"/admin/classifier/upload/{upload.pk}/change/", f"/admin/classifier/prediction/{prediction.pk}/change/"):
        html = admin_page.get(path).content.decode()
        main = html.split('id="content-main"', 1)[1]
        assert _links_without_a_name(main) == [], path
        # The picture itself, on each page, is named too: it is the page's content, not decoration.
        assert 'alt=""' not in main, path
