"""Every page a reader or a staff member reaches, checked by axe-core in a real headless Chromium: none may break one of
its default rules (WCAG A and AA, and its best practices) with a moderate, serious or critical impact."""
import io
from datetime import timedelta

import pytest
from django.template import loader
from playwright.sync_api import expect

from accounts.services.api_tokens import api_token_create
from classifier import services
from classifier.models import Prediction
from mnistsite.database_now import Now
from tests.training.conftest import TINY
from training import services as training_services
from training.models import TrainingRun

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

IMPACTS = {"moderate", "serious", "critical"}


def _violations(page, *, rules_off: tuple[str, ...] = ()) -> list[str]:
    """The page's violations of ``IMPACTS``, each as its rule and impact, then the elements that break it and why."""
    from axe_playwright_python.sync_playwright import Axe

    options = {"resultTypes": ["violations"], "rules": {rule: {"enabled": False} for rule in rules_off}}
    results = Axe().run(page, options=options).response
    return [
        f"{violation['id']} ({violation['impact']}): {violation['help']}"
        + "".join(f"\n    {' '.join(node['target'])}: " + " ".join(node["failureSummary"].split("\n")[1:])
                  for node in violation["nodes"])
        for violation in results["violations"] if violation["impact"] in IMPACTS
    ]


class Scan:
    """The violations found on each page named, for one failure that lists them all."""

    def __init__(self, page):
        self.page = page
        self.found: dict[str, list[str]] = {}

    def check(self, name: str, path: str | None = None, **options) -> None:
        if path is not None:
            self.page.goto(path)
        if violations := _violations(self.page, **options):
            self.found[name] = violations

    def assert_clean(self) -> None:
        assert self.found == {}, "\n".join(f"{name}:\n  " + "\n  ".join(lines) for name, lines in self.found.items())


def _fulfilled_with(page, path: str, template: str, status: int) -> None:
    """``path`` answered with ``template`` as the server renders it when no view could (the 500 and 503 pages stand
    alone, needing no request), its style sheet served by the live server."""
    html = loader.get_template(template).render({})
    page.route(f"**{path}", lambda route: route.fulfill(status=status, body=html, content_type="text/html"))


def test_the_pages_before_logging_in_have_no_accessibility_violations(page, user, settings):
    from django.contrib.auth.tokens import default_token_generator
    from django.utils.encoding import force_bytes
    from django.utils.http import urlsafe_base64_encode

    settings.SIGNUP_ENABLED = True
    scan = Scan(page)
    scan.check("log-in", "/accounts/login/")
    page.fill("#id_username", "alice")
    page.fill("#id_password", "wrong")
    page.click("button[type=submit]")
    expect(page.locator(".errors")).to_be_visible()
    scan.check("log-in refused")
    scan.check("sign-up", "/accounts/signup/")
    page.click("button[type=submit]")
    expect(page.locator(".field-error").first).to_be_visible()
    scan.check("sign-up refused")
    scan.check("password reset", "/accounts/password/reset/")
    scan.check("password reset sent", "/accounts/password/reset/sent/")
    uid = urlsafe_base64_encode(force_bytes(user.pk))
    scan.check("password reset link", f"/accounts/password/reset/{uid}/{default_token_generator.make_token(user)}/")
    scan.check("password reset link expired", f"/accounts/password/reset/{uid}/not-a-token/")
    scan.check("password reset complete", "/accounts/password/reset/done/")
    _fulfilled_with(page, "/server-error", "500.html", 500)
    scan.check("500", "/server-error")
    _fulfilled_with(page, "/unavailable", "503.html", 503)
    scan.check("503", "/unavailable")
    scan.assert_clean()


def test_a_readers_pages_have_no_accessibility_violations(logged_in_page, user, digit_png):
    page = logged_in_page
    scan = Scan(page)
    scan.check("upload")
    page.set_input_files("#id_files", [{"name": "7.png", "mimeType": "image/png", "buffer": digit_png(7)},
                                       {"name": "notes.png", "mimeType": "image/png", "buffer": b"not a picture"}])
    expect(page.locator("#file-error")).to_be_visible()
    scan.check("upload with files chosen, one refused")
    page.click("#canvas-submit")
    expect(page.locator("#canvas-error")).to_have_text("Draw a digit first.")
    scan.check("upload, drawing sent empty")
    scan.check("history, empty", "/history/")

    uploads = [services.upload_create(owner=user, file=io.BytesIO(digit_png(digit)), name=f"{digit}.png",
                                      source="file") for digit in (3, 5, 7)]
    done, pending, failed = services.predictions_create(uploads=uploads, publish=False)
    Prediction.objects.filter(pk=done.pk).update(
        status=Prediction.Status.DONE, digit=3, confidence=0.93, probabilities=[0.007] * 3 + [0.937] + [0.007] * 6,
        finished_at=Now(),
    )
    Prediction.objects.filter(pk=failed.pk).update(status=Prediction.Status.FAILED, error="Unreadable.",
                                                   finished_at=Now())
    scan.check("result, done", f"/predictions/{done.pk}/")
    scan.check("result, pending", f"/predictions/{pending.pk}/")
    scan.check("result, failed", f"/predictions/{failed.pk}/")
    scan.check("upload's page", f"/uploads/{uploads[0].pk}/")
    scan.check("history", "/history/")
    scan.check("history, filtered", "/history/?digit=3&status=done")
    scan.check("history, filters not understood", "/history/?digit=11&status=done&date_to=2026-13-45")

    api_token_create(user=user, name="laptop")
    scan.check("account", "/accounts/")
    page.fill("#id_name", "phone")
    page.fill("#id_token_password", "correct horse battery")
    page.get_by_role("button", name="Create a token").click()
    expect(page.locator("#new-token")).to_be_visible()
    scan.check("account, new API token")
    scan.check("404", "/no-such-page/")
    page.goto("/api/docs/")
    expect(page.locator(".opblock").first).to_be_visible()
    # Swagger UI's own markup, drawn by its script: its operation tags are h3 under its h1 title, each operation's
    # summary a button holding another (copy the path), and its title block sits outside its main landmark.
    swagger_ui_markup = ("heading-order", "nested-interactive", "region")
    scan.check("API docs", rules_off=swagger_ui_markup)

    # The form sent without the cookie the site set for it, then with a code out of date.
    page.goto("/")
    page.context.clear_cookies(name="csrftoken")
    page.get_by_role("button", name="Log out").click()
    expect(page.get_by_role("heading", name="This site needs cookies")).to_be_visible()
    scan.check("403 CSRF, no cookie")
    page.goto("/")
    page.context.add_cookies([{"name": "csrftoken", "value": "x" * 32, "url": page.url}])
    page.get_by_role("button", name="Log out").click()
    expect(page.get_by_role("heading", name="That form had expired")).to_be_visible()
    scan.check("403 CSRF, form expired")
    scan.assert_clean()


def _checkpoint_registered():
    """An untrained MLP's checkpoint, registered and not active."""
    from django.conf import settings

    from training.ml.architectures import build_model
    from training.ml.checkpoints import save_checkpoint

    path = settings.CHECKPOINT_DIR / "manual" / "model.pt"
    save_checkpoint(path, model=build_model("mlp", {"hidden": 16}).eval(), config=None, epoch=1,
                    metrics={"test_accuracy": 0.5})
    return training_services.checkpoint_register(path=path, run=None, epoch=1, test_accuracy=0.5,
                                                 architecture="mlp", activate=False)


def test_the_staff_pages_have_no_accessibility_violations(page, staff_user, django_user_model, live_server, digit_png):
    run = training_services.training_run_create(created_by=None, enqueue=False, **{**TINY, "epochs": 2})
    rows = [{"epoch": epoch, "train_loss": 0.5, "train_accuracy": 0.9, "validation_loss": 0.4,
             "validation_accuracy": 0.91, "images_per_second": 1000, "seconds": 2.0, "lr": 0.001} for epoch in (1, 2)]
    TrainingRun.objects.filter(pk=run.pk).update(
        status=TrainingRun.Status.SUCCEEDED, attempts=1, started_at=Now() - timedelta(seconds=65),
        finished_at=Now(), current_epoch=2, progress=1.0, metrics=rows, validation_accuracy=0.91, test_accuracy=0.91,
        confusion_matrix=[[1000 if i == j else 3 for j in range(10)] for i in range(10)],
    )
    running = training_services.training_run_create(created_by=None, enqueue=False, **TINY)
    TrainingRun.objects.filter(pk=running.pk).update(
        status=TrainingRun.Status.RUNNING, attempts=1, started_at=Now() - timedelta(seconds=65), heartbeat_at=Now(),
        current_epoch=1, current_step=10, total_steps=600, progress=0.01, eta_seconds=4000,
    )
    upload = services.upload_create(owner=staff_user, file=io.BytesIO(digit_png(7)), name="7.png", source="file")
    (prediction,) = services.predictions_create(uploads=[upload], publish=False)
    checkpoint = _checkpoint_registered()

    scan = Scan(page)
    page.goto("/admin/login/")
    page.fill("#id_username", staff_user.username)
    page.fill("#id_password", "correct horse battery")
    page.click("input[type=submit]")
    page.wait_for_url("**/admin/")
    scan.check("training runs", "/admin/training/trainingrun/")
    scan.check("training run, finished, with its charts", f"/admin/training/trainingrun/{run.pk}/change/")
    page.get_by_text("The counts as a table").click()
    scan.check("training run, its confusion matrix as a table")
    scan.check("training run, running", f"/admin/training/trainingrun/{running.pk}/change/")
    scan.check("cancel a training run", f"/admin/training/trainingrun/{running.pk}/cancel/")
    scan.check("start a training run", "/admin/training/trainingrun/add/")
    page.fill("#id_epochs", "0")
    page.get_by_role("button", name="Start training run").click()
    expect(page.locator(".errorlist").first).to_be_visible()
    scan.check("start a training run, sent back")
    scan.check("uploads", "/admin/classifier/upload/")
    scan.check("an upload", f"/admin/classifier/upload/{upload.pk}/change/")
    scan.check("predictions", "/admin/classifier/prediction/")
    scan.check("a prediction", f"/admin/classifier/prediction/{prediction.pk}/change/")
    scan.check("checkpoints", "/admin/training/checkpoint/")
    scan.check("a checkpoint", f"/admin/training/checkpoint/{checkpoint.pk}/change/")
    scan.check("activate a checkpoint", f"/admin/training/checkpoint/{checkpoint.pk}/activate/")

    # A staff member the training admin is not open to.
    django_user_model.objects.create_user(username="viewer", password="correct horse battery", is_staff=True)
    page.context.clear_cookies()
    page.goto("/accounts/login/")
    page.fill("#id_username", "viewer")
    page.fill("#id_password", "correct horse battery")
    page.click("button[type=submit]")
    page.wait_for_url(f"{live_server.url}/")
    scan.check("403", "/admin/training/trainingrun/add/")
    scan.assert_clean()
