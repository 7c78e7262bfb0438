"""The training admin's run page in a real headless Chromium: it follows a live run without a manual reload."""
from datetime import timedelta

import pytest
from playwright.sync_api import expect

from mnistsite.database_now import Now
from tests.training.conftest import TINY
from training import services
from training.models import TrainingRun

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def _log_in_to_the_admin(page, username: str) -> None:
    page.goto("/admin/login/")
    page.fill("#id_username", username)
    page.fill("#id_password", "correct horse battery")
    page.click("input[type=submit]")
    page.wait_for_url("**/admin/")


def test_a_running_runs_page_updates_its_progress_in_place_and_reloads_for_each_finished_epoch(page, staff_user):
    run = services.training_run_create(created_by=None, enqueue=False, **{**TINY, "epochs": 3})
    TrainingRun.objects.filter(pk=run.pk).update(
        status=TrainingRun.Status.RUNNING, attempts=1, started_at=Now() - timedelta(seconds=65), heartbeat_at=Now(),
        current_epoch=1, current_step=10, total_steps=600, progress=0.01, eta_seconds=4000,
    )
    _log_in_to_the_admin(page, staff_user.username)
    page.goto(f"/admin/training/trainingrun/{run.pk}/change/")
    expect(page.locator("#run-eta")).to_have_text("1:06:40")
    page.evaluate("window.notReloaded = true")

    TrainingRun.objects.filter(pk=run.pk).update(current_step=300, progress=0.17, eta_seconds=900)
    expect(page.locator("#run-step")).to_have_text("300")
    expect(page.locator("#run-eta")).to_have_text("15:00")
    expect(page.locator("#run-progress-text")).to_have_text("17%")
    assert page.evaluate("window.notReloaded") is True
    assert page.locator(".run-metrics").count() == 0

    # An epoch ends: its metrics row and curves are drawn by the server, so the page reloads to show them.
    row = {"epoch": 1, "train_loss": 0.5, "train_accuracy": 0.9, "test_loss": 0.4, "test_accuracy": 0.91,
           "images_per_second": 1000, "seconds": 2.0, "lr": 0.001}
    TrainingRun.objects.filter(pk=run.pk).update(metrics=[row], current_epoch=2, current_step=0)
    expect(page.locator(".run-metrics tbody tr")).to_have_count(1)
    assert page.evaluate("window.notReloaded") is None
    expect(page.locator("#run-live-note")).to_have_text("This page updates itself every few seconds.")

    # Signed out elsewhere: the poller says it cannot update rather than go stale quietly.
    page.context.clear_cookies()
    expect(page.locator("#run-live-note")).to_contain_text("Could not update this page just now")
