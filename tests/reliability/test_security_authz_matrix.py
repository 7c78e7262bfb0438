"""Who may do what, route by route: another's objects by every method, deactivated accounts, view-only staff, ``next``."""
import io
import re
from html import unescape

import pytest
from django.contrib.auth.models import Permission
from django.test import Client
from django.urls import reverse
from rest_framework.test import APIClient

from accounts.services import api_token_create
from classifier import services
from classifier.models import Prediction, Upload
from tests.reliability.test_security_access import named_routes, objects_owned_by, route_kwargs
from training.models import Checkpoint, TrainingRun

pytestmark = pytest.mark.django_db


@pytest.fixture
def owned(user, digit_png) -> dict:
    return objects_owned_by(user, digit_png)


def _uploaded(owner, digit_png, digit: int, *, name: str) -> Prediction:
    upload = services.upload_create(owner=owner, file=io.BytesIO(digit_png(digit)), source="file", name=name)
    (prediction,) = services.predictions_create(uploads=[upload], publish=False)
    prediction.status, prediction.digit, prediction.confidence = "failed", None, None
    prediction.error = "worker lost"
    prediction.save()
    return prediction


@pytest.fixture
def bobs(other_user, digit_png) -> Prediction:
    """Bob's failed prediction (one a "Try again" would run again) of an upload with a name to look for."""
    return _uploaded(other_user, digit_png, 3, name="bobs-secret-scan.png")


def _as(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def test_one_user_can_neither_run_again_nor_filter_export_or_batch_delete_anothers_uploads(user, bobs, digit_png):
    alice = _as(user)
    _uploaded(user, digit_png, 1, name="alices.png")
    ids = str(bobs.upload_id)

    for url in (reverse("classifier:prediction_retry", args=[bobs.pk]),
                reverse("classifier:upload_detail", args=[bobs.upload_id])):
        assert alice.post(url).status_code == 404, url
    api = APIClient()
    api.force_authenticate(user)
    assert api.post(f"/api/v1/predictions/{bobs.pk}/retry/").status_code == 404
    for method in ("head", "options", "put"):
        assert getattr(alice, method)(reverse("classifier:prediction_detail", args=[bobs.pk])).status_code in (404, 405)
    assert Prediction.objects.filter(upload_id=bobs.upload_id).count() == 1

    # A batch of Bob's ids shows, exports and deletes none of his uploads.
    for url in (reverse("classifier:history"), reverse("classifier:history_export_csv")):
        body = b"".join(alice.get(url, {"batch": ids}).streaming_content if "export" in url
                        else [alice.get(url, {"batch": ids}).content])
        assert b"bobs-secret-scan" not in body and ids.encode() not in re.findall(rb"/uploads/(\d+)/", body), url
    zipped = b"".join(alice.get(reverse("classifier:history_export_zip"), {"batch": ids}).streaming_content)
    assert b"bobs-secret-scan" not in zipped
    asked = alice.get(reverse("classifier:uploads_delete"), {"batch": ids})
    assert asked.status_code == 302 and b"bobs-secret-scan" not in alice.get(asked["Location"]).content
    alice.post(reverse("classifier:uploads_delete") + f"?batch={ids}", {"matching": "on", "newest": bobs.upload_id,
                                                                        "count": 1, "confirmed": "on"})
    selected = alice.post(reverse("classifier:uploads_delete"), {"upload": [bobs.upload_id]})
    assert b"bobs-secret-scan" not in selected.content
    assert Upload.objects.filter(pk=bobs.upload_id).exists()


def test_a_deactivated_user_holding_a_session_is_signed_out_of_every_page_and_the_api(owned, user, digit_png):
    from django.core.files.uploadedfile import SimpleUploadedFile

    session = _as(user)
    assert session.get(reverse("classifier:history")).status_code == 200
    type(user).objects.filter(pk=user.pk).update(is_active=False)

    for name, params in named_routes():
        if name.startswith("admin:") or name in ("login", "logout", "signup", "password_reset", "password_reset_done",
                                                 "password_reset_confirm", "password_reset_complete", "email_confirm",
                                                 "healthz", "readyz", "api:schema", "api:docs",
                                                 "api:no-such-endpoint"):
            continue
        url = reverse(name, kwargs=route_kwargs(name, params, owned))
        for method in ("get", "post"):
            response = getattr(session, method)(url)
            expected = (401, 403) if name.startswith("api:") else (302,)
            assert response.status_code in expected, (name, method, response.status_code)
    upload = SimpleUploadedFile("d.png", digit_png(1), content_type="image/png")
    assert session.post("/", {"files": [upload]}).status_code == 302
    assert Upload.objects.count() == 1 and Prediction.objects.get().feedback is None


def test_a_deactivated_staff_members_session_is_refused_by_the_admin(staff_user):
    session = _as(staff_user)
    assert session.get("/admin/").status_code == 200
    type(staff_user).objects.filter(pk=staff_user.pk).update(is_active=False)
    assert session.get("/admin/").status_code == 302
    assert session.get("/admin/training/trainingrun/").status_code == 302


def test_an_api_token_never_signs_anyone_in_to_the_sites_pages(user):
    _, key = api_token_create(user=user)
    visitor = Client(HTTP_AUTHORIZATION=f"Token {key}")
    for url in ("/", reverse("classifier:history"), reverse("account"), "/admin/"):
        response = visitor.get(url)
        assert response.status_code == 302 and "login" in response["Location"], url


@pytest.fixture
def viewer(django_user_model):
    """Staff allowed only to look at uploads, predictions, runs and checkpoints in the admin."""
    member = django_user_model.objects.create_user(username="viewer", password="x9!kQ2#vLp", is_staff=True)
    member.user_permissions.set(Permission.objects.filter(codename__in=[
        "view_upload", "view_prediction", "view_trainingrun", "view_checkpoint"]))
    return _as(member)


def test_staff_who_may_only_view_change_delete_cancel_and_activate_nothing_in_the_admin(viewer, owned, bobs):
    upload, prediction, run, checkpoint = owned["upload"], owned["prediction"], owned["run"], owned["checkpoint"]
    lists = {
        "classifier/upload": (upload.pk, ["delete_selected", "rerun_uploads"]),
        "classifier/prediction": (prediction.pk, ["delete_selected", "rerun_uploads"]),
        "training/trainingrun": (run.pk, ["cancel_runs", "delete_selected"]),
        "training/checkpoint": (checkpoint.pk, ["activate_checkpoint", "delete_selected"]),
    }
    for model, (pk, actions) in lists.items():
        page = viewer.get(f"/admin/{model}/")
        assert page.status_code == 200, model
        for action in actions:
            assert f'value="{action}"'.encode() not in page.content, (model, action)
            viewer.post(f"/admin/{model}/", {"action": action, "_selected_action": [pk], "post": "yes"})
        assert viewer.get(f"/admin/{model}/{pk}/delete/").status_code == 403, model
        assert viewer.post(f"/admin/{model}/{pk}/delete/", {"post": "yes"}).status_code == 403, model
        assert viewer.get(f"/admin/{model}/{pk}/change/").status_code == 200, model
    assert viewer.post(f"/admin/classifier/upload/{upload.pk}/change/", {"original_name": "renamed", "label": "5"}
                       ).status_code == 403
    assert viewer.post(f"/admin/classifier/prediction/{prediction.pk}/change/", {"feedback": "2"}).status_code == 403
    assert viewer.post(reverse("admin:training_trainingrun_cancel", args=[run.pk])).status_code == 403
    assert viewer.post(reverse("admin:training_checkpoint_activate", args=[checkpoint.pk])).status_code == 403
    assert viewer.post("/admin/training/trainingrun/add/", {"architecture": "mlp"}).status_code == 403
    # Looking is what the permission is for: the progress and the export answer.
    assert viewer.get(reverse("admin:training_trainingrun_progress", args=[run.pk])).status_code == 200

    upload.refresh_from_db()
    assert upload.original_name != "renamed" and upload.label is None
    assert Upload.objects.count() == 2 and Prediction.objects.count() == 2
    assert Prediction.objects.get(pk=prediction.pk).feedback is None
    assert TrainingRun.objects.get().status == "queued" and not TrainingRun.objects.get().cancel_requested
    assert Checkpoint.objects.count() == 1 and not Checkpoint.objects.filter(is_active=True).exists()


def _leads_off_site(url: str) -> bool:
    """Where a browser would go: it drops tabs and line breaks anywhere and reads a backslash as a slash."""
    cleaned = re.sub(r"[\t\n\r]", "", url).replace("\\", "/").lstrip("\x00\x01\x02 ")
    return not cleaned.startswith("/") or cleaned.startswith("//")


OFF_SITE = ["//evil.example", "https://evil.example", "/\\evil.example", "javascript:alert(1)", "/\t//evil.example",
            "/\t/\\evil.example", "\\\\evil.example", "http:evil.example", "/\n//evil.example"]


@pytest.mark.parametrize("target", OFF_SITE)
def test_the_deletion_pages_never_lead_off_the_site_whatever_next_says(user, digit_png, target):
    alice = _as(user)
    kept = _uploaded(user, digit_png, 1, name="kept.png").upload_id
    gone = _uploaded(user, digit_png, 2, name="gone.png").upload_id

    asked = [
        alice.get(reverse("classifier:upload_delete", args=[kept]), {"next": target}),
        alice.get(reverse("classifier:uploads_delete"), {"next": target}),
        alice.post(reverse("classifier:uploads_delete"), {"upload": [kept], "next": target}),
    ]
    for page in asked:
        assert page.status_code == 200
        links = re.findall(r'(?:href|value)="([^"]*)"', page.content.decode())
        assert not any(_leads_off_site(unescape(link)) for link in links if "evil" in unescape(link)), links
    done = [
        alice.post(reverse("classifier:upload_delete", args=[gone]), {"next": target}),
        alice.post(reverse("classifier:uploads_delete"), {"upload": [kept], "confirmed": "on", "next": target}),
        alice.post(reverse("classifier:uploads_delete") + f"?next={target}", {}),
    ]
    for response in done:
        assert response.status_code == 302 and not _leads_off_site(response["Location"]), response["Location"]
    assert not Upload.objects.exists()


@pytest.mark.parametrize("sent", ["req-1\r\nSet-Cookie: sessionid=stolen", "req-1\rX-Evil: 1", "a" * 8000,
                                  "<script>alert(1)</script>"])
def test_an_unsafe_request_id_is_never_sent_back_in_a_header_or_a_page(client, user, sent):
    client.force_login(user)
    for url in ("/", "/no-such-page/", "/api/v1/no-such-endpoint/"):
        response = client.get(url, HTTP_X_REQUEST_ID=sent)
        assert response["X-Request-ID"] != sent and re.fullmatch(r"[0-9a-f]{32}", response["X-Request-ID"]), url
        assert "X-Evil" not in response and "stolen" not in str(response.cookies), url
        assert sent.encode() not in response.content, url
