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
    row = {"epoch": 1, "train_loss": 0.5, "train_accuracy": 0.9, "validation_loss": 0.4, "validation_accuracy": 0.91,
           "images_per_second": 1000, "seconds": 2.0, "lr": 0.001}
    TrainingRun.objects.filter(pk=run.pk).update(metrics=[row], current_epoch=2, current_step=0)
    expect(page.locator(".run-metrics tbody tr")).to_have_count(1)
    assert page.evaluate("window.notReloaded") is None
    expect(page.locator("#run-live-note")).to_have_text("This page updates itself every few seconds.")

    # Signed out elsewhere: the poller says it cannot update rather than go stale quietly.
    page.context.clear_cookies()
    expect(page.locator("#run-live-note")).to_contain_text("Could not update this page just now")


def test_a_finished_runs_page_on_a_phone_keeps_to_the_screens_width_with_its_wide_tables_scrolling_in_place(
    browser, live_server, staff_user
):
    run = services.training_run_create(created_by=None, enqueue=False, **{**TINY, "epochs": 2})
    rows = [{"epoch": epoch, "train_loss": 0.5, "train_accuracy": 0.9, "test_loss": 0.4, "test_accuracy": 0.91,
             "images_per_second": 1000, "seconds": 2.0, "lr": 0.001} for epoch in (1, 2)]
    TrainingRun.objects.filter(pk=run.pk).update(
        status=TrainingRun.Status.SUCCEEDED, attempts=1, started_at=Now() - timedelta(seconds=65),
        finished_at=Now(), current_epoch=2, progress=1.0, metrics=rows, test_accuracy=0.91,
        confusion_matrix=[[1000 if i == j else 3 for j in range(10)] for i in range(10)],
    )
    context = browser.new_context(viewport={"width": 375, "height": 667}, is_mobile=True, has_touch=True,
                                  base_url=live_server.url)
    try:
        page = context.new_page()
        page.set_default_timeout(20_000)
        _log_in_to_the_admin(page, staff_user.username)
        page.goto(f"/admin/training/trainingrun/{run.pk}/change/")
        page.get_by_text("The counts as a table").click()
        expect(page.locator(".confusion-table")).to_be_visible()
        # The page itself does not scroll sideways: the Recipe, the State and the Close button stay in view.
        assert page.evaluate("document.documentElement.scrollWidth <= document.documentElement.clientWidth")
        # A table wider than the screen scrolls in its own box, which the keyboard can reach to scroll it.
        metrics = page.get_by_role("region", name="Per-epoch metrics")
        assert metrics.evaluate("box => box.scrollWidth > box.clientWidth")
        metrics.focus()
        expect(metrics).to_be_focused()
        for _ in range(10):
            page.keyboard.press("ArrowRight")
        expect(metrics.get_by_role("cell", name="0.001000").first).to_be_in_viewport()
    finally:
        context.close()
