"""Who may do what: log-in required everywhere, CSRF on every write, no access to other people's data, lockout."""
import base64
import io

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.tokens import default_token_generator
from django.core.cache import cache
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver, reverse
from django.utils.encoding import force_bytes
from django.utils.http import urlsafe_base64_encode

from accounts.services import api_token_create
from classifier import services
from classifier.models import Prediction, Upload
from training.models import Checkpoint, TrainingRun

# Routes that are public on purpose: logging in and out (its page says whether one is signed in), signing up, resetting
# a forgotten password, confirming an email address by the link mailed to it, health probes, the API's own description.
PUBLIC = {"login", "logout", "signup", "password_reset", "password_reset_done", "password_reset_confirm",
          "password_reset_complete", "email_confirm", "healthz", "readyz", "api:schema", "api:docs",
          "api:no-such-endpoint"}


def named_routes(patterns=None, namespace=""):
    """Every named route as (name, parameter names), walking included URLconfs."""
    for pattern in patterns if patterns is not None else get_resolver().url_patterns:
        if isinstance(pattern, URLResolver):
            inner = f"{namespace}{pattern.namespace}:" if pattern.namespace else namespace
            params = list(getattr(pattern.pattern, "converters", {}))
            assert not params, f"an include with parameters ({pattern}) needs handling here"
            yield from named_routes(pattern.url_patterns, inner)
        elif isinstance(pattern, URLPattern) and pattern.name:
            converters = getattr(pattern.pattern, "converters", None)
            params = list(converters) if converters is not None else list(pattern.pattern.regex.groupindex)
            yield f"{namespace}{pattern.name}", params


@pytest.fixture
def owned(user, digit_png):
    return objects_owned_by(user, digit_png)


def objects_owned_by(user, digit_png) -> dict:
    """An upload with a finished-looking prediction (including its model-input picture), a training run, a token."""
    upload = services.upload_create(owner=user, file=io.BytesIO(digit_png(0)), source="file")
    (prediction,) = services.predictions_create(uploads=[upload], publish=False)
    prediction.input_pixels = bytes(range(28)) * 28
    prediction.status, prediction.digit = "done", 7
    prediction.save()
    run = TrainingRun.objects.create(architecture="mlp", epochs=1, batch_size=8, learning_rate=0.01)
    checkpoint = Checkpoint.objects.create(path="x.pt", epoch=1, architecture="mlp", sha256="0" * 64, size=1)
    token, _ = api_token_create(user=user)
    return {"upload": upload, "prediction": prediction, "run": run, "checkpoint": checkpoint, "token": token}


def route_kwargs(name: str, params: list[str], owned) -> dict:
    values = {
        "prediction_id": owned["prediction"].pk,
        "run_id": owned["run"].pk,
        "checkpoint_id": owned["checkpoint"].pk,
        "token_id": owned["token"].pk,
        "token": "not-a-signed-token",
        "pk": owned["upload"].pk if "upload" in name else owned["prediction"].pk,
        "side": 128,
    }
    return {param: values[param] for param in params}


def test_every_route_but_log_in_and_sign_up_requires_a_logged_in_user(client, owned):
    checked = []
    for name, params in named_routes():
        if name in PUBLIC:
            continue
        if name.startswith("admin:"):
            if name != "admin:index":
                continue  # the admin guards every page with its own log-in, checked through its index
            assert client.get(reverse(name))["Location"].startswith("/admin/login/")
            continue
        try:
            url = reverse(name, kwargs=route_kwargs(name, params, owned))
        except KeyError as missing:
            raise AssertionError(f"route {name} has an unknown parameter {missing}; give it a real object") from None
        for method in ("get", "post"):
            response = getattr(client, method)(url)
            if name.startswith("api:"):
                assert response.status_code == 401, (name, method, response.status_code)
            else:
                assert response.status_code == 302, (name, method, response.status_code)
                assert response["Location"].startswith(reverse("login") + "?next="), (name, response["Location"])
        checked.append(name)
    # The walk really found the pages and the API, object routes included.
    assert {"classifier:upload", "classifier:prediction_detail", "classifier:upload_image", "api:prediction-detail",
            "api:training-run-cancel", "account_token_revoke"} <= set(checked), checked
    assert client.get(reverse("login")).status_code == 200
    assert client.get(reverse("signup")).status_code == 200


def test_a_read_only_token_of_an_administrator_is_refused_every_api_write_on_every_route(owned, staff_user):
    from rest_framework.test import APIClient

    _, key = api_token_create(user=staff_user, read_only=True)
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Token {key}")
    checked = []
    for name, params in named_routes():
        if not name.startswith("api:") or name in PUBLIC:
            continue
        url = reverse(name, kwargs=route_kwargs(name, params, owned))
        for method in ("post", "put", "patch", "delete"):
            response = getattr(api, method)(url, {}, format="json")
            assert response.status_code == 403, (name, method, response.status_code)
            assert "read-only" in response.json()["error"]["message"], (name, method)
        # Reading is what it is for (other people's predictions stay out of reach all the same).
        assert api.get(url).status_code in (200, 404, 405), name
        checked.append(name)
    assert {"api:prediction-list", "api:prediction-detail", "api:training-run-list", "api:training-run-cancel",
            "api:checkpoint-activate"} <= set(checked), checked
    owned["run"].refresh_from_db()
    owned["checkpoint"].refresh_from_db()
    assert owned["run"].status == "queued" and not owned["checkpoint"].is_active


@pytest.fixture
def csrf_client(user):
    client = Client(enforce_csrf_checks=True)
    client.force_login(user)
    return client


def test_every_state_changing_page_refuses_a_post_without_a_csrf_token(csrf_client, owned, digit_png, staff_user):
    from accounts.models import ApiToken

    prediction, upload, kept = owned["prediction"], owned["upload"], owned["token"]
    png = digit_png(1)
    posts = {
        "upload": ("/", {"files": [SimpleUploadedFile("d.png", png, content_type="image/png")]}),
        "canvas": ("/", {"canvas": "data:image/png;base64," + base64.b64encode(png).decode()}),
        "feedback": (reverse("classifier:prediction_feedback", args=[prediction.pk]), {"digit": "3"}),
        "retry": (reverse("classifier:prediction_retry", args=[prediction.pk]), {}),
        "read": (reverse("classifier:upload_detail", args=[upload.pk]), {}),
        "delete": (reverse("classifier:upload_delete", args=[upload.pk]), {}),
        "delete several": (reverse("classifier:uploads_delete"), {"upload": [upload.pk], "confirmed": "on"}),
        "delete all": (reverse("classifier:uploads_delete"), {"matching": "on", "newest": upload.pk, "confirmed": "on"}),
        "logout": (reverse("logout"), {}),
        "password": (reverse("password_change"), {"old_password": "correct horse battery",
                                                  "new_password1": "a-New-pass-482", "new_password2": "a-New-pass-482"}),
        "token": (reverse("account_token_create"), {"name": "script"}),
        "revoke": (reverse("account_token_revoke", args=[kept.pk]), {}),
        "email": (reverse("account_email_change"), {"email-email": "mallory@example.com",
                                                     "email-password": "correct horse battery"}),
        "account": (reverse("account_delete"), {"password": "correct horse battery"}),
    }
    for what, (url, data) in posts.items():
        assert csrf_client.post(url, data).status_code == 403, what
    # Every other page too, whatever it does with a post: none is exempt from the check (a probe that takes only a
    # GET refuses the post itself).
    walked = []
    for name, params in named_routes():
        if name.startswith(("admin:", "api:")):
            continue  # the admin (below) and the API (test_session_authenticated_api_writes_...) on their own
        kwargs = ({"uidb64": "MQ", "token": "set-password"} if name == "password_reset_confirm"
                  else route_kwargs(name, params, owned))
        url = reverse(name, kwargs=kwargs)
        for visitor in (csrf_client, Client(enforce_csrf_checks=True)) if name in PUBLIC else (csrf_client,):
            assert visitor.post(url, {}).status_code in (403, 405), name
        walked.append(name)
    assert {"account_email_change", "account_token_create", "password_change", "password_reset",
            "password_reset_confirm", "classifier:upload"} <= set(walked), walked

    anonymous = Client(enforce_csrf_checks=True)
    assert anonymous.post(reverse("login"), {"username": "alice", "password": "correct horse battery"}).status_code == 403
    assert anonymous.post(reverse("signup"), {"username": "mallory", "password1": "a-Long-pass-123",
                                              "password2": "a-Long-pass-123"}).status_code == 403
    assert anonymous.post(reverse("password_reset"), {"email": "alice@example.com"}).status_code == 403
    # The new password a reset link leads to, past the link's own check (which keeps its token in the session).
    alice = get_user_model().objects.get(username="alice")
    link = reverse("password_reset_confirm", kwargs={"uidb64": urlsafe_base64_encode(force_bytes(alice.pk)),
                                                     "token": default_token_generator.make_token(alice)})
    set_password = anonymous.get(link)["Location"]
    assert set_password.endswith("/set-password/")
    assert anonymous.post(set_password, {"new_password1": "a-New-pass-482", "new_password2": "a-New-pass-482",
                                         "revoke_api_tokens": "on"}).status_code == 403

    admin = Client(enforce_csrf_checks=True)
    admin.force_login(staff_user)
    changelist = reverse("admin:classifier_upload_changelist")
    response = admin.post(changelist, {"action": "delete_selected", "_selected_action": [upload.pk], "post": "yes"})
    assert response.status_code == 403

    # Nothing changed: same upload, no new ones, no feedback, still logged in.
    assert Upload.objects.count() == 1 and Prediction.objects.get(pk=prediction.pk).feedback is None
    assert get_user_model().objects.filter(username="mallory").count() == 0
    assert csrf_client.get("/").status_code == 200
    assert get_user_model().objects.get(username="alice").check_password("correct horse battery")
    assert list(ApiToken.objects.filter(user__username="alice")) == [kept]

    # Control: with the token, the same upload goes through, so the 403s above were CSRF and nothing else.
    csrf_client.get("/")
    token = csrf_client.cookies["csrftoken"].value
    ok = csrf_client.post("/", {"files": [SimpleUploadedFile("d.png", png, content_type="image/png")],
                                "csrfmiddlewaretoken": token})
    assert ok.status_code == 302


def test_session_authenticated_api_writes_require_a_csrf_token(csrf_client, owned, digit_png, staff_user):
    prediction = owned["prediction"]
    image = SimpleUploadedFile("d.png", digit_png(1), content_type="image/png")
    assert csrf_client.post("/api/v1/predictions/", {"image": image}).status_code == 403
    url = f"/api/v1/predictions/{prediction.pk}/"
    assert csrf_client.patch(url, {"feedback": 3}, content_type="application/json").status_code == 403
    assert csrf_client.delete(url).status_code == 403
    assert csrf_client.post(f"{url}retry/").status_code == 403
    staff = Client(enforce_csrf_checks=True)
    staff.force_login(staff_user)
    assert staff.post("/api/v1/training-runs/", {"architecture": "mlp", "epochs": 1, "batch_size": 8,
                                                 "learning_rate": 0.01}, content_type="application/json").status_code == 403
    assert staff.post(f"/api/v1/checkpoints/{owned['checkpoint'].pk}/activate/").status_code == 403
    assert staff.post(f"/api/v1/training-runs/{owned['run'].pk}/cancel/").status_code == 403
    assert Upload.objects.count() == 1 and Prediction.objects.get(pk=prediction.pk).feedback is None
    assert TrainingRun.objects.count() == 1 and not Checkpoint.objects.filter(is_active=True).exists()
    # Reads stay open to the session, and a token client is not subject to CSRF at all (no cookie to ride on).
    assert csrf_client.get(url).status_code == 200


def test_one_user_cannot_read_change_delete_or_download_anything_of_another(client, owned, other_user, user):
    prediction, upload = owned["prediction"], owned["upload"]
    owner = Client()
    owner.force_login(user)
    reads = [
        reverse("classifier:prediction_detail", args=[prediction.pk]),
        reverse("classifier:prediction_json", args=[prediction.pk]),
        reverse("classifier:prediction_input", args=[prediction.pk]),
        reverse("classifier:upload_image", args=[upload.pk]),
        reverse("classifier:upload_image_scaled", args=[upload.pk, 128]),
        reverse("classifier:upload_detail", args=[upload.pk]),
        reverse("classifier:upload_delete", args=[upload.pk]),
        f"/api/v1/predictions/{prediction.pk}/",
        f"/api/v1/predictions/{prediction.pk}/image/",
        f"/api/v1/predictions/{prediction.pk}/input/",
    ]
    for url in reads:
        assert owner.get(url).status_code in (200, 302), url  # the object really exists and is reachable

    client.force_login(other_user)
    for url in reads:
        assert client.get(url).status_code == 404, url
    assert client.post(reverse("classifier:prediction_feedback", args=[prediction.pk]), {"digit": "1"}).status_code == 404
    assert client.post(reverse("classifier:upload_delete", args=[upload.pk])).status_code == 404
    client.post(reverse("classifier:uploads_delete"), {"upload": [upload.pk], "confirmed": "on"})
    client.post(reverse("classifier:uploads_delete"), {"matching": "on", "newest": upload.pk, "confirmed": "on"})
    api = f"/api/v1/predictions/{prediction.pk}/"
    assert client.patch(api, {"feedback": 1}, content_type="application/json").status_code == 404
    assert client.delete(api).status_code == 404
    assert client.post(reverse("account_token_revoke", args=[owned["token"].pk])).status_code == 302
    assert owned["token"].prefix.encode() not in client.get(reverse("account")).content
    assert owned["token"].prefix.encode() in owner.get(reverse("account")).content
    assert client.get("/api/v1/predictions/").json()["results"] == []
    assert len(owner.get("/api/v1/predictions/").json()["results"]) == 1
    thumbnail = reverse("classifier:upload_image_scaled", args=[upload.pk, 128]).encode()
    assert thumbnail not in client.get(reverse("classifier:history")).content
    assert thumbnail in owner.get(reverse("classifier:history")).content

    fresh = Prediction.objects.get(pk=prediction.pk)
    assert fresh.feedback is None and Upload.objects.filter(pk=upload.pk).exists()
    assert type(owned["token"]).objects.filter(pk=owned["token"].pk).exists()


def test_staff_see_other_peoples_images_only_with_the_admins_view_permission(owned, django_user_model):
    from django.contrib.auth.models import Permission

    member = django_user_model.objects.create_user(username="trainer-only", password="x9!kQ2#vLp", is_staff=True)
    staff = Client()
    staff.force_login(member)
    image = reverse("classifier:upload_image", args=[owned["upload"].pk])
    thumbnail = reverse("classifier:upload_image_scaled", args=[owned["upload"].pk, 128])
    model_input = reverse("classifier:prediction_input", args=[owned["prediction"].pk])
    assert staff.get(image).status_code == 404 and staff.get(model_input).status_code == 404
    assert staff.get(thumbnail).status_code == 404

    member.user_permissions.set(Permission.objects.filter(codename__in=["view_upload", "view_prediction"]))
    staff = Client()
    staff.force_login(member)
    assert staff.get(image).status_code == 200 and staff.get(model_input).status_code == 200
    assert staff.get(thumbnail).status_code == 200


def test_staff_who_may_view_predictions_but_not_uploads_get_no_pictures_they_may_not_see(owned, django_user_model):
    from django.contrib.auth.models import Permission

    member = django_user_model.objects.create_user(username="reader", password="x9!kQ2#vLp", is_staff=True)
    member.user_permissions.set(Permission.objects.filter(codename="view_prediction"))
    staff = Client()
    staff.force_login(member)
    image = reverse("classifier:upload_image", args=[owned["upload"].pk])
    listed = staff.get("/admin/classifier/prediction/")
    page = staff.get(reverse("admin:classifier_prediction_change", args=[owned["prediction"].pk]))
    assert listed.status_code == page.status_code == 200
    assert image not in listed.content.decode() and image not in page.content.decode()
    assert reverse("admin:classifier_prediction_change", args=[owned["prediction"].pk]) in listed.content.decode()


def test_staff_who_may_only_view_uploads_are_not_offered_the_bulk_re_run(owned, django_user_model):
    from django.contrib.auth.models import Permission

    member = django_user_model.objects.create_user(username="viewer", password="x9!kQ2#vLp", is_staff=True)
    member.user_permissions.set(Permission.objects.filter(codename="view_upload"))
    staff = Client()
    staff.force_login(member)
    page = staff.get("/admin/classifier/upload/")
    assert page.status_code == 200 and b"rerun_uploads" not in page.content
    posted = staff.post("/admin/classifier/upload/", {"action": "rerun_uploads", "_selected_action": [owned["upload"].pk]})
    assert posted.status_code in (200, 302)
    assert Prediction.objects.filter(upload=owned["upload"]).count() == 1


def test_staff_who_may_change_predictions_but_not_uploads_are_not_offered_the_bulk_re_run(owned, django_user_model):
    from django.contrib.auth.models import Permission

    member = django_user_model.objects.create_user(username="corrector", password="x9!kQ2#vLp", is_staff=True)
    member.user_permissions.set(
        Permission.objects.filter(codename__in=["view_upload", "view_prediction", "change_prediction"])
    )
    staff = Client()
    staff.force_login(member)
    page = staff.get("/admin/classifier/prediction/")
    assert page.status_code == 200 and b"rerun_uploads" not in page.content
    prediction = Prediction.objects.get(upload=owned["upload"])
    posted = staff.post("/admin/classifier/prediction/", {"action": "rerun_uploads", "_selected_action": [prediction.pk]})
    assert posted.status_code in (200, 302)
    assert Prediction.objects.filter(upload=owned["upload"]).count() == 1


def test_after_repeated_failures_even_the_right_password_is_refused_for_that_account_only(db, django_user_model, settings):
    cache.clear()
    django_user_model.objects.create_user(username="victim", password="the-right-password-1")
    django_user_model.objects.create_user(username="bystander", password="the-right-password-2")
    attacker = Client()
    login = reverse("login")
    for _ in range(settings.LOGIN_FAILURE_LIMIT):
        assert attacker.post(login, {"username": "victim", "password": "guess"}).status_code == 200
    locked = attacker.post(login, {"username": "victim", "password": "the-right-password-1"})
    assert locked.status_code == 429
    assert b"Too many failed log-in attempts" in locked.content
    assert "_auth_user_id" not in attacker.session
    # Another account, from the same address, still logs in.
    other = Client()
    assert other.post(login, {"username": "bystander", "password": "the-right-password-2"}).status_code == 302
    cache.clear()


def test_an_attacker_guessing_at_an_account_does_not_lock_its_owner_out_elsewhere(db, django_user_model, settings):
    cache.clear()
    django_user_model.objects.create_user(username="victim", password="the-right-password-1")
    attacker, owner = Client(REMOTE_ADDR="203.0.113.9"), Client(REMOTE_ADDR="198.51.100.7")
    for _ in range(settings.LOGIN_FAILURE_LIMIT * 2):
        attacker.post(reverse("login"), {"username": "victim", "password": "guess"})
    assert attacker.post(reverse("login"), {"username": "victim", "password": "the-right-password-1"}).status_code == 429
    assert owner.post(reverse("login"), {"username": "victim", "password": "the-right-password-1"}).status_code == 302
    cache.clear()


def test_guessing_at_one_account_from_many_addresses_locks_it_at_the_account_limit(db, django_user_model, settings):
    from accounts.services import ACCOUNT_FACTOR

    cache.clear()
    django_user_model.objects.create_user(username="victim", password="the-right-password-1")
    guesses = settings.LOGIN_FAILURE_LIMIT * ACCOUNT_FACTOR
    for i in range(guesses):
        # Each address stays under its own limits.
        Client(REMOTE_ADDR=f"192.0.2.{i % 250}").post(reverse("login"), {"username": "victim", "password": f"g{i}"})
    right = {"username": "victim", "password": "the-right-password-1"}
    assert Client(REMOTE_ADDR="198.51.100.7").post(reverse("login"), right).status_code == 429
    cache.clear()


def test_the_admin_log_in_form_is_locked_out_like_the_sites_own(db, django_user_model, settings):
    django_user_model.objects.create_superuser(username="boss", password="the-right-password-3")
    attacker = Client()
    for _ in range(settings.LOGIN_FAILURE_LIMIT):
        guessed = attacker.post("/admin/login/", {"username": "boss", "password": "guess", "next": "/admin/"})
        assert guessed.status_code == 200
    refused = attacker.post("/admin/login/", {"username": "boss", "password": "the-right-password-3", "next": "/admin/"})
    assert refused.status_code == 200 and "_auth_user_id" not in attacker.session
    # The failures on the admin's form count on the site's form too, which says why.
    assert attacker.post(reverse("login"), {"username": "boss", "password": "the-right-password-3"}).status_code == 429


def _spray(client: Client, *, forwarded_for, count: int) -> None:
    """Failed log-ins on ``count`` different accounts, each claiming the address ``forwarded_for(i)``."""
    for i in range(count):
        client.post(reverse("login"), {"username": f"sprayed{i}", "password": "guess"},
                    HTTP_X_FORWARDED_FOR=forwarded_for(i))


def test_a_client_cannot_dodge_the_address_lockout_with_a_forwarded_for_header(db, django_user_model, settings):
    django_user_model.objects.create_user(username="bystander", password="the-right-password-2")
    attacker = Client(REMOTE_ADDR="203.0.113.9")
    _spray(attacker, forwarded_for=lambda i: f"198.51.100.{i}", count=settings.LOGIN_FAILURE_LIMIT * 4)
    right = {"username": "bystander", "password": "the-right-password-2"}
    assert attacker.post(reverse("login"), right, HTTP_X_FORWARDED_FOR="198.51.100.200").status_code == 429


def test_behind_a_trusted_proxy_each_client_is_locked_out_by_its_own_address(db, django_user_model, settings):
    settings.REST_FRAMEWORK = {**settings.REST_FRAMEWORK, "NUM_PROXIES": 1}
    django_user_model.objects.create_user(username="bystander", password="the-right-password-2")
    proxy = "10.0.0.2"
    attacker, other = Client(REMOTE_ADDR=proxy), Client(REMOTE_ADDR=proxy)
    # The proxy appends the address it saw to whatever the client sent.
    _spray(attacker, forwarded_for=lambda i: f"192.0.2.{i}, 203.0.113.9", count=settings.LOGIN_FAILURE_LIMIT * 4)
    right = {"username": "bystander", "password": "the-right-password-2"}
    assert attacker.post(reverse("login"), right, HTTP_X_FORWARDED_FOR="203.0.113.9").status_code == 429
    assert other.post(reverse("login"), right, HTTP_X_FORWARDED_FOR="198.51.100.7").status_code == 302
