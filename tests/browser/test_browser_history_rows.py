"""History rows as screen readers get them while their predictions finish with the page open, and as they are laid out
on a small, zoomed or large-text screen."""
import io

import pytest
from playwright.sync_api import expect

from classifier import services
from classifier.models import Prediction
from tests.browser.polls import polls_answered_from

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def _queued_upload_answered_from(page, user, digit_png):
    """A queued upload whose status the page asks for is answered from the dict returned (the prediction's own
    answer, for the test to change), with the prediction."""
    from classifier.views import prediction_payload

    upload = services.upload_create(owner=user, file=io.BytesIO(digit_png(7)), name="7.png", source="file")
    (prediction,) = services.predictions_create(uploads=[upload], publish=False)
    answer = prediction_payload(prediction)
    polls_answered_from(page, prediction, answer)
    return answer, prediction


def test_a_history_row_read_while_the_page_is_open_names_its_digit_as_a_reload_would(logged_in_page, user, digit_png):
    page = logged_in_page
    answer, prediction = _queued_upload_answered_from(page, user, digit_png)
    upload = prediction.upload
    page.goto("/history/")
    row = page.locator(f'.history-item[data-upload-id="{upload.pk}"]')
    expect(row.locator(".js-status")).to_have_text("queued")
    assert "Read as" not in row.aria_snapshot() and "–" not in row.aria_snapshot()

    answer.update(status="done", finished=True, digit=7, confidence=0.93, probabilities=[0.007] * 7 + [0.93] + [0.007] * 2)
    expect(row.locator(".js-status")).to_have_text("done", timeout=15_000)
    assert "Read as 7" in row.aria_snapshot()
    Prediction.objects.filter(pk=prediction.pk).update(status="done", digit=7, confidence=0.93,
                                                       probabilities=answer["probabilities"])
    page.reload()
    expect(row.locator(".js-status")).to_have_text("done")
    assert "Read as 7" in row.aria_snapshot()


def test_a_history_page_whose_session_ended_says_so_instead_of_leaving_its_rows_waiting_without_a_word(
    logged_in_page, user, digit_png
):
    page = logged_in_page
    upload = services.upload_create(owner=user, file=io.BytesIO(digit_png(7)), name="7.png", source="file")
    services.predictions_create(uploads=[upload], publish=False)  # queued, and no worker takes it
    page.goto("/history/")
    note = page.locator("#history-ended")
    expect(note).to_be_hidden()

    page.context.clear_cookies()  # logged out in another tab, or the session expired

    expect(note).to_be_visible(timeout=15_000)
    expect(note).to_have_text("Your session has ended: reload the page and log in again to see the results still "
                              "waiting.")
    expect(page.locator("#history-announcement")).to_have_text(note.text_content())
    expect(page.locator(".history-item .js-status")).to_have_text("queued")


def test_a_history_page_says_while_no_worker_takes_its_queued_uploads_and_drops_it_once_they_are_read(
    logged_in_page, user, digit_png
):
    page = logged_in_page
    answer, _ = _queued_upload_answered_from(page, user, digit_png)
    page.goto("/history/")
    note = page.locator("#history-stalled")
    expect(note).to_be_hidden()

    answer["queue_stalled"] = True  # the worker stopped: the upload waits on a queue nobody takes
    expect(note).to_be_visible(timeout=15_000)
    expect(note).to_have_text("No worker is taking predictions right now. The uploads still queued are kept, and "
                              "are read when one is back.")
    expect(page.locator("#history-announcement")).to_have_text(note.text_content())

    answer.update(status="done", finished=True, queue_stalled=False, digit=7, confidence=0.93,
                  probabilities=[0.007] * 7 + [0.93] + [0.007] * 2)
    expect(page.locator(".js-status")).to_have_text("done", timeout=15_000)
    expect(note).to_be_hidden()


# The boxes of a history row's parts that overlap another's: text drawn over text, or a button over a name.
_ROW_OVERLAPS = (
    "row => { const parts = ['.history-select input', '.thumb img', '.history-name', 'time', '.js-digit',"
    " '.js-status', '.js-confidence', '.delete-form a'].map(s => [s, row.querySelector(s).getBoundingClientRect()]);"
    " const overlaps = [];"
    " parts.forEach(([a, r], i) => parts.slice(i + 1).forEach(([b, q]) => {"
    " if (r.left < q.right - 0.5 && q.left < r.right - 0.5 && r.top < q.bottom - 0.5 && q.top < r.bottom - 0.5)"
    " overlaps.push(a + ' over ' + b); }));"
    " return overlaps; }"
)


def _done_upload(user, digit_png, *, name: str):
    upload = services.upload_create(owner=user, file=io.BytesIO(digit_png(0)), name=name, source="file")
    (prediction,) = services.predictions_create(uploads=[upload], publish=False)
    Prediction.objects.filter(pk=prediction.pk).update(
        status=Prediction.Status.DONE, digit=7, confidence=0.65, probabilities=[0.035] * 7 + [0.65] + [0.0] * 2,
        device="cpu", queue_ms=12.0, compute_ms=3.5,
    )
    return upload


def test_a_history_row_on_a_320_px_screen_keeps_its_time_clear_of_the_digit_beside_it(
    browser, live_server, log_in, user, digit_png, artifacts_dir
):
    # 320 CSS pixels: a phone's narrowest, or a desktop window zoomed to 400%.
    _done_upload(user, digit_png, name="seven.png")
    context = browser.new_context(base_url=live_server.url, viewport={"width": 320, "height": 640})
    try:
        page = context.new_page()
        log_in(page)
        page.goto("/history/")
        page.screenshot(path=str(artifacts_dir / "history-320.png"), full_page=True)
        assert page.locator(".history-item").evaluate(_ROW_OVERLAPS) == []
        assert page.evaluate("document.documentElement.scrollWidth") <= 320
    finally:
        context.close()


def test_a_history_row_in_large_text_keeps_its_file_name_whole_and_its_parts_apart(
    large_text_page, user, digit_png, artifacts_dir
):
    page = large_text_page
    _done_upload(user, digit_png, name="seven.png")
    page.goto("/history/")
    page.screenshot(path=str(artifacts_dir / "history-large-text.png"), full_page=True)
    row = page.locator(".history-item")
    assert row.evaluate(_ROW_OVERLAPS) == []
    # On one line, not a letter a line down a column squeezed to nothing.
    name = row.locator(".history-name")
    assert name.evaluate("a => a.getClientRects().length") == 1
    assert page.evaluate("document.documentElement.scrollWidth") <= 1280


def test_a_history_download_comes_as_a_file_and_one_refused_shows_the_page_that_says_why(
    logged_in_page, user, digit_png, settings
):
    from classifier import slots

    page = logged_in_page
    services.upload_create(owner=user, file=io.BytesIO(digit_png(7)), name="7.png", source="file")
    page.goto("/history/")
    with page.expect_download() as download:
        page.click("#export-csv")
    assert download.value.suggested_filename.endswith(".csv") and "7.png" in open(download.value.path()).read()

    settings.HISTORY_EXPORTS_PER_USER = 1
    assert slots.user_slot_take(kind="export", user_id=user.pk, limit=1, hold_s=60)  # a download still streaming
    page.click("#export-zip")

    expect(page.locator("h1")).to_have_text("Too many downloads at once")
