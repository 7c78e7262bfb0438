"""The pages in a real headless Chromium: log in, upload, watch the result go live, draw, browse history."""
import io
import json
import os
import re

import pytest
from playwright.sync_api import expect

from classifier import services
from classifier.models import Prediction, Upload
from mnistsite.celery import app
from tests.browser.polls import polls_answered_from
from tests.processes import start_worker

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def _purge_queues() -> None:
    with app.connection_for_write() as conn:
        for queue in ("inference", "training"):
            conn.default_channel.queue_purge(queue)


def _expect_done(page, worker) -> None:
    """Wait for the page to show "done"; on failure say what the worker and the database saw."""
    try:
        expect(page.locator("#status-badge")).to_have_text("done", timeout=60_000)
    except AssertionError as exc:
        rows = list(Prediction.objects.values("pk", "status", "publish_attempts", "published_at", "error"))
        raise AssertionError(f"{exc}\npredictions: {rows}\nworker log:\n{worker.log()[-3000:]}") from None


def test_login_page_looks_right_and_logs_in(page, user, artifacts_dir):
    page.goto("/accounts/login/")
    expect(page.locator("h1")).to_have_text("Log in")
    page.screenshot(path=str(artifacts_dir / "login.png"), full_page=True)
    page.fill("#id_username", "alice")
    page.fill("#id_password", "wrong")
    page.click("button[type=submit]")
    expect(page.locator(".errors")).to_be_visible()
    page.fill("#id_username", "alice")
    page.fill("#id_password", "correct horse battery")
    page.click("button[type=submit]")
    expect(page.locator("h1")).to_have_text("Recognise a handwritten digit")


def test_an_uploaded_file_goes_from_queued_to_done_without_a_reload(
    logged_in_page, digit_png, active_checkpoint, artifacts_dir, tmp_path
):
    page = logged_in_page
    page.screenshot(path=str(artifacts_dir / "upload-page.png"), full_page=True)
    _purge_queues()
    path = tmp_path / "seven.png"
    path.write_bytes(digit_png(0))
    page.set_input_files("#id_files", str(path))
    expect(page.locator("#file-list li")).to_have_count(1)
    page.click("#file-submit")
    page.wait_for_url("**/predictions/*/")
    # No worker is running yet, so the message waits in the broker and the page says so.
    expect(page.locator("#status-badge")).to_have_text("queued")
    page.screenshot(path=str(artifacts_dir / "result-queued.png"), full_page=True)
    navigations = []
    page.on("framenavigated", lambda frame: navigations.append(frame.url))

    worker = start_worker(log_dir=tmp_path / "logs")
    try:
        _expect_done(page, worker)
    finally:
        worker.stop()
    assert navigations == []  # updated in place by polling, not by reloading
    expect(page.locator("#digit")).to_have_text("7")
    expect(page.locator("#bars .bar-row.top")).to_have_attribute("data-digit", "7")
    expect(page.locator("#model-input")).to_be_visible()
    assert page.evaluate("getComputedStyle(document.getElementById('model-input')).imageRendering") == "pixelated"
    page.screenshot(path=str(artifacts_dir / "result-done.png"), full_page=True)

    page.click(".digit-button >> text=1")
    expect(page.locator(".message-success")).to_contain_text("Recorded")
    assert Prediction.objects.get().feedback == 1


def test_a_digit_drawn_on_the_canvas_is_predicted(logged_in_page, celery_worker_process, active_checkpoint, artifacts_dir):
    page = logged_in_page
    box = page.locator("#draw-canvas").bounding_box()
    x, y, w, h = box["x"], box["y"], box["width"], box["height"]
    # A "7": a bar across the top, then a stroke down to the bottom left.
    page.mouse.move(x + w * 0.25, y + h * 0.2)
    page.mouse.down()
    page.mouse.move(x + w * 0.75, y + h * 0.2, steps=12)
    page.mouse.move(x + w * 0.4, y + h * 0.85, steps=16)
    page.mouse.up()
    expect(page.locator("#canvas-submit")).to_be_enabled()
    page.screenshot(path=str(artifacts_dir / "canvas-drawn.png"), full_page=True)
    page.click("#canvas-submit")
    page.wait_for_url("**/predictions/*/")
    _expect_done(page, celery_worker_process)
    prediction = Prediction.objects.get()
    assert prediction.upload.source == "canvas"
    assert prediction.status == "done"
    expect(page.locator("#digit")).to_have_text(str(prediction.digit))
    page.screenshot(path=str(artifacts_dir / "canvas-result.png"), full_page=True)


def test_the_clear_button_empties_the_canvas(logged_in_page):
    page = logged_in_page
    box = page.locator("#draw-canvas").bounding_box()
    page.mouse.move(box["x"] + 50, box["y"] + 50)
    page.mouse.down()
    page.mouse.move(box["x"] + 150, box["y"] + 150, steps=5)
    page.mouse.up()
    expect(page.locator("#canvas-submit")).to_be_enabled()
    page.click("#canvas-clear")
    expect(page.locator("#canvas-hint")).to_be_visible()
    blank = page.evaluate(
        "(() => { const c = document.getElementById('draw-canvas');"
        " return c.getContext('2d').getImageData(0, 0, c.width, c.height).data.every(v => v === 0); })()"
    )
    assert blank


def test_undo_takes_back_the_last_stroke_only_and_then_the_one_before(logged_in_page):
    page = logged_in_page
    expect(page.locator("#canvas-undo")).to_be_disabled()
    for y in (60, 200):  # two strokes across the canvas, one high, one low
        _stroke(page, [(40, y), (240, y)], steps=5)
    high, low = (lambda: _ink_in(page, 0, 30, 280, 90)), (lambda: _ink_in(page, 0, 170, 280, 230))
    assert high() > 0 and low() > 0

    page.click("#canvas-undo")
    assert high() > 0 and low() == 0
    expect(page.locator("#canvas-submit")).to_be_enabled()
    # The keyboard's Ctrl+Z takes back the one before, which leaves nothing to send.
    page.keyboard.press("Control+z")
    assert high() == 0
    expect(page.locator("#canvas-undo")).to_be_disabled()
    expect(page.locator("#canvas-hint")).to_be_visible()


def _digit_files(folder, digit_png, count: int) -> list[str]:
    """Files of the digits 0 to count - 1, as a person would pick them for an upload."""
    paths = []
    for index in range(count):
        path = folder / f"digit-{index}.png"
        path.write_bytes(digit_png(index))
        paths.append(str(path))
    return paths


def test_history_shows_uploads_and_deletes_after_confirming(
    logged_in_page, celery_worker_process, active_checkpoint, digit_png, artifacts_dir, tmp_path
):
    page = logged_in_page
    paths = _digit_files(tmp_path, digit_png, 4)
    page.set_input_files("#id_files", paths)
    page.click("#file-submit")
    page.wait_for_url("**/history/?batch=*")
    expect(page.locator(".history-item")).to_have_count(4)
    expect(page.locator(".history-item .js-status").filter(has_text="done")).to_have_count(4, timeout=60_000)
    page.goto("/history/")
    expect(page.locator(".history-item")).to_have_count(4)
    page.screenshot(path=str(artifacts_dir / "history.png"), full_page=True)

    page.once("dialog", lambda dialog: dialog.accept())
    page.locator(".history-item").first.get_by_role("link", name="Delete upload").click()
    expect(page.locator(".message-success")).to_contain_text("Deleted")
    expect(page.locator(".history-item")).to_have_count(3)

    page.set_viewport_size({"width": 390, "height": 844})
    page.screenshot(path=str(artifacts_dir / "history-mobile.png"), full_page=True)


def test_history_rows_that_fail_while_the_page_is_open_say_why_as_a_reload_would(
    logged_in_page, user, digit_png, active_checkpoint
):
    from django.core.files.storage import default_storage

    from tests.classifier.fixtures import empty_ruled_sheet_png

    page = logged_in_page
    blank = services.upload_create(owner=user, file=io.BytesIO(empty_ruled_sheet_png()), name="sheet.png",
                                   source="file")
    lost, long = (services.upload_create(owner=user, file=io.BytesIO(digit_png(i)), name=f"{i}.png", source="file")
                  for i in range(2))
    predictions = services.predictions_create(uploads=[blank, lost, long], publish=False)
    # Taken by a worker that reports an error too long for a row; the others wait for this process to run them.
    Prediction.objects.filter(pk=predictions[2].pk).update(status=Prediction.Status.RUNNING)
    page.goto("/history/")
    expect(page.locator(".history-item .js-status").filter(has_text="queued")).to_have_count(2)
    reasons = {upload.pk: page.locator(f'.history-item[data-upload-id="{upload.pk}"] .js-reason')
               for upload in (blank, lost, long)}
    for reason in reasons.values():
        expect(reason).to_be_hidden()

    default_storage.delete(lost.image.name)  # the worker cannot read it
    for prediction in predictions[:2]:
        services.prediction_execute(prediction_id=prediction.pk)  # nothing when the first one's batch took it
    errors = dict(Prediction.objects.filter(upload__in=[blank, lost], status="failed").values_list("upload", "error"))
    errors[long.pk] = "The image could not be prepared: " + "a detail from the decoder, " * 10
    Prediction.objects.filter(pk=predictions[2].pk).update(status=Prediction.Status.FAILED, error=errors[long.pk])

    expect(reasons[blank.pk]).to_have_text(f"{errors[blank.pk]} Try another picture.", timeout=15_000)
    expect(reasons[lost.pk]).to_have_text("The stored image could not be read.")
    expect(reasons[long.pk]).to_have_text(errors[long.pk][:99] + "…")
    live = {pk: (reason.text_content(), reason.get_attribute("title")) for pk, reason in reasons.items()}
    assert all(title == errors[pk] for pk, (_, title) in live.items())
    page.reload()
    for pk, reason in reasons.items():
        expect(reason).to_be_visible()
        assert (reason.text_content().strip(), reason.get_attribute("title")) == live[pk]


def _listen_to(page, region_id: str) -> list[str]:
    """Everything written into the live region of that id, in order, on every page the browser opens from now on."""
    heard = []
    page.expose_function("heard", lambda text: heard.append(text))
    page.add_init_script("""document.addEventListener("DOMContentLoaded", () => {
        const region = document.getElementById(%s);
        if (region) new MutationObserver(() => window.heard(region.textContent))
            .observe(region, {childList: true, characterData: true, subtree: true});
    });""" % json.dumps(region_id))
    return heard


def test_screen_readers_hear_one_summary_per_poll_in_which_history_rows_finished_and_nothing_otherwise(
    logged_in_page, user, digit_png, active_checkpoint, settings
):
    import datetime as dt

    from django.utils import timezone

    from tests.classifier.fixtures import empty_ruled_sheet_png

    settings.INFERENCE_BATCH_SIZE = 2  # each run below reads the two predictions it is given and no other
    page = logged_in_page
    uploads = [services.upload_create(owner=user, file=io.BytesIO(digit_png(i)), name=f"{i}.png", source="file")
               for i in range(3)]
    uploads.append(services.upload_create(owner=user, file=io.BytesIO(empty_ruled_sheet_png()), name="sheet.png",
                                          source="file"))
    predictions = services.predictions_create(uploads=uploads, publish=False)
    heard = _listen_to(page, "history-announcement")
    answered = []
    page.on("requestfinished",
            lambda request: answered.append(request.url) if "/predictions" in request.url else None)
    # The page's polls come when the test moves its clock, each seen to its end before anything changes again.
    page.clock.install()
    page.goto("/history/")
    region = page.locator("#history-announcement")
    expect(page.locator(".history-item .js-status").filter(has_text="queued")).to_have_count(4)

    def poll() -> None:
        # One request a poll for the rows still waiting, however many.
        asked = len(answered) + 1
        page.clock.fast_forward(5_000)
        for _ in range(200):
            if len(answered) >= asked:
                break
            page.wait_for_timeout(50)
        assert len(answered) >= asked, "the page did not poll"

    poll()
    # Taken by a worker: still not read. It lost that worker long ago, so the run below may take it again.
    Prediction.objects.filter(pk=predictions[2].pk).update(
        status=Prediction.Status.RUNNING, started_at=timezone.now() - dt.timedelta(days=1)
    )
    poll()
    expect(page.locator(".history-item .js-status").filter(has_text="running")).to_have_count(1)
    expect(region).to_have_text("")

    services.predictions_execute(prediction_ids=[predictions[0].pk, predictions[1].pk])
    poll()
    expect(region).to_have_text("2 read: 2 of 4 uploads read, 2 still waiting.")
    services.predictions_execute(prediction_ids=[predictions[2].pk, predictions[3].pk])
    poll()
    expect(region).to_have_text("1 more read, 1 failed: 3 of 4 uploads read.")
    expect(page.locator(".history-item .js-status").filter(has_text="failed")).to_have_count(1)
    page.evaluate("0")  # what the region said last has reached the test
    assert heard == ["2 read: 2 of 4 uploads read, 2 still waiting.", "1 more read, 1 failed: 3 of 4 uploads read."]
    assert all("/predictions.json?" in url for url in answered), answered
    assert page.locator("[aria-live]").count() == 1


def test_screen_readers_hear_a_batch_read_by_a_real_worker_summed_up_not_row_by_row(
    logged_in_page, start_celery_worker, active_checkpoint, digit_png, tmp_path
):
    page = logged_in_page
    heard = _listen_to(page, "history-announcement")
    paths = _digit_files(tmp_path, digit_png, 3)
    page.set_input_files("#id_files", paths)
    page.click("#file-submit")
    page.wait_for_url("**/history/?batch=*")
    # No worker is running yet: the page opens on three queued rows, then one is started.
    expect(page.locator(".history-item .js-status").filter(has_text="queued")).to_have_count(3)
    start_celery_worker()
    expect(page.locator(".history-item .js-status").filter(has_text="done")).to_have_count(3, timeout=60_000)
    expect(page.locator("#history-announcement")).to_have_text(re.compile(r": 3 of 3 uploads read\.$"))
    page.evaluate("0")
    said = [re.fullmatch(r"(\d+)(?: more)? read: (\d+) of 3 uploads read(?:, (\d+) still waiting)?\.", text)
            for text in heard]
    assert all(said), heard
    assert sum(int(match[1]) for match in said) == 3, heard  # each upload counted once, in a summary


def _open_a_queued_result(page, user, image: bytes):
    """The result page of an upload whose prediction no worker takes: it stays queued, and the page polls."""
    upload = services.upload_create(owner=user, file=io.BytesIO(image), source="file")
    (prediction,) = services.predictions_create(uploads=[upload], publish=False)
    page.goto(f"/predictions/{prediction.pk}/")
    expect(page.locator("#status-badge")).to_have_text("queued")
    return upload


def test_a_result_page_whose_session_ended_says_so_instead_of_polling_forever(logged_in_page, user, digit_png):
    _open_a_queued_result(logged_in_page, user, digit_png(0))
    logged_in_page.context.clear_cookies()  # logged out elsewhere, or the session expired
    expect(logged_in_page.locator("#status-note")).to_contain_text("session has ended")
    expect(logged_in_page.locator("#spinner")).to_be_hidden()


def test_a_result_page_whose_prediction_was_deleted_says_so_and_stops(logged_in_page, user, digit_png):
    upload = _open_a_queued_result(logged_in_page, user, digit_png(0))
    services.upload_delete(upload=upload)  # from another tab, or through the API
    expect(logged_in_page.locator("#status-note")).to_contain_text("it was deleted")
    expect(logged_in_page.locator("#spinner")).to_be_hidden()


def test_a_result_page_keeps_polling_through_server_errors_and_shows_the_answer(
    logged_in_page, user, digit_png, celery_worker_process, active_checkpoint
):
    upload = services.upload_create(owner=user, file=io.BytesIO(digit_png(4)), source="file")
    (prediction,) = services.predictions_create(uploads=[upload], publish=False)
    page = logged_in_page
    failures = []

    def fail_three_times(route):
        # A restarting site behind a proxy: an HTML 502 page instead of JSON.
        if len(failures) < 3:
            failures.append(route.request.url)
            route.fulfill(status=502, content_type="text/html", body="<h1>Bad Gateway</h1>")
        else:
            route.continue_()

    page.route(f"**/predictions/{prediction.pk}.json", fail_three_times)
    page.goto(f"/predictions/{prediction.pk}/")
    expect(page.locator("#status-badge")).to_have_text("queued")
    expect(page).to_have_title(f"Prediction {prediction.pk} · mnistsite")
    # The page's first three polls meet the 502s whatever the worker does; the fourth gets the answer.
    services.predictions_publish(prediction_ids=[prediction.pk])
    expect(page.locator("#status-badge")).to_have_text("done", timeout=60_000)
    assert len(failures) == 3
    # The tab says the answer too, as the page sent once it is in does.
    digit = page.locator("#digit").text_content()
    expect(page).to_have_title(f"Read as {digit} · Prediction {prediction.pk} · mnistsite")
    page.reload()
    expect(page).to_have_title(f"Read as {digit} · Prediction {prediction.pk} · mnistsite")
    expect(page.locator("#status-note")).not_to_contain_text("session has ended")



def _ink_in(page, x0: int, y0: int, x1: int, y1: int) -> int:
    """How many canvas pixels in the rectangle (canvas coordinates) carry any ink."""
    return page.evaluate(
        "([x0, y0, x1, y1]) => { const c = document.getElementById('draw-canvas');"
        " const d = c.getContext('2d').getImageData(x0, y0, x1 - x0, y1 - y0).data;"
        " let n = 0; for (let i = 3; i < d.length; i += 4) if (d[i]) n++; return n; }",
        [x0, y0, x1, y1],
    )


def test_a_second_finger_on_the_canvas_leaves_no_ink(browser, live_server, log_in):
    context = browser.new_context(viewport={"width": 1200, "height": 900}, base_url=live_server.url, has_touch=True)
    try:
        page = context.new_page()
        log_in(page)
        box = page.locator("#draw-canvas").bounding_box()
        scale = box["width"] / 280  # canvas pixels to CSS pixels

        def at(x, y, identifier):
            return {"x": box["x"] + x * scale, "y": box["y"] + y * scale, "id": identifier}

        cdp = context.new_cdp_session(page)
        touch = lambda kind, points: cdp.send("Input.dispatchTouchEvent", {"type": kind, "touchPoints": points})
        # The drawing finger strokes along the top; meanwhile a second one lands at the bottom and moves there.
        touch("touchStart", [at(30, 30, 0)])
        touch("touchMove", [at(90, 30, 0)])
        touch("touchMove", [at(90, 30, 0), at(40, 240, 1)])
        touch("touchMove", [at(120, 30, 0), at(200, 240, 1)])
        touch("touchMove", [at(150, 30, 0), at(240, 250, 1)])
        touch("touchEnd", [])
        expect(page.locator("#canvas-submit")).to_be_enabled()
        assert _ink_in(page, 20, 20, 160, 40) > 0  # the first finger's stroke is there
        assert _ink_in(page, 0, 80, 280, 280) == 0  # and nothing of the second, nor a wedge joining the two
    finally:
        context.close()


# A finished answer whose confidence lies just below a threshold of 0.7.
JUST_BELOW_THRESHOLD = {"status": "done", "finished": True, "digit": 7, "confidence": 0.6996, "low_confidence": True,
                        "probabilities": [0.0300] * 7 + [0.6996] + [0.0002, 0.0002]}


def _result_page_answering(page, owner, digit_png, **changes) -> dict:
    """Open a new pending prediction's page whose polls get its real payload with ``changes``; returns that payload,
    which the test may change to move the page on."""
    from classifier.views import prediction_payload

    upload = services.upload_create(owner=owner, file=io.BytesIO(digit_png(0)), source="file")
    (prediction,) = services.predictions_create(uploads=[upload], publish=False)
    answer = {**prediction_payload(prediction), **changes}
    polls_answered_from(page, prediction, answer)
    page.goto(f"/predictions/{prediction.pk}/")
    return answer


def test_pages_updated_in_place_show_a_confidence_just_below_the_threshold_rounded_down(logged_in_page, user, digit_png, settings):
    settings.LOW_CONFIDENCE_THRESHOLD = 0.7
    page = logged_in_page
    _result_page_answering(page, user, digit_png, **JUST_BELOW_THRESHOLD)
    expect(page.locator("#confidence")).to_have_text("69% confident")
    expect(page.locator("#not-sure")).to_be_visible()
    expect(page.locator('#bars .bar-row[data-digit="7"] .bar-value')).to_have_text("69.9%")
    page.goto("/history/")
    expect(page.locator(".js-confidence")).to_have_text("69% · not sure")


def test_the_spinner_text_follows_the_status_from_queued_to_running(logged_in_page, user, digit_png):
    page = logged_in_page
    answer = _result_page_answering(page, user, digit_png)
    expect(page.locator("#spinner")).to_contain_text("waiting in the queue")
    answer["status"] = "running"  # a worker took it
    expect(page.locator("#status-badge")).to_have_text("running")
    expect(page.locator("#spinner")).to_contain_text("looking at your image")
    expect(page.locator("#spinner")).not_to_contain_text("queue")


def test_a_result_page_says_while_no_worker_takes_predictions_and_goes_on_waiting_for_the_answer(
    logged_in_page, user, digit_png
):
    page = logged_in_page
    answer = _result_page_answering(page, user, digit_png)
    expect(page.locator("#status-badge")).to_have_text("queued")
    expect(page.locator("#stalled-note")).to_be_hidden()
    answer["queue_stalled"] = True  # pending long, and no worker has started a prediction since
    expect(page.locator("#stalled-note")).to_have_text(
        "No worker is taking predictions right now. Yours is kept and will run when one is back; this page updates "
        "by itself.", timeout=15_000)
    expect(page.locator("#spinner")).to_be_visible()
    answer.update(status="running", queue_stalled=False)  # a worker is back and took it
    expect(page.locator("#status-badge")).to_have_text("running", timeout=15_000)
    expect(page.locator("#stalled-note")).to_be_hidden()


def test_a_prediction_that_fails_while_its_page_is_open_says_why_offers_to_try_again_and_drops_the_bars(
    logged_in_page, user, digit_png
):
    page = logged_in_page
    answer = _result_page_answering(page, user, digit_png)
    expect(page.locator("#bars-section")).to_be_visible()  # waiting to be filled in
    answer.update(status="failed", finished=True, error="The stored image could not be read.")
    expect(page.locator("#error-text")).to_have_text("The stored image could not be read.")
    expect(page.locator("#bars-section")).to_be_hidden()
    expect(page.get_by_role("button", name="Try again")).to_be_visible()
    expect(page.locator("#no-digit-advice")).to_be_hidden()
    expect(page.locator("#model-input-placeholder")).to_have_text("nothing")


def test_a_picture_found_to_hold_no_digit_while_its_page_is_open_asks_for_another_instead_of_a_retry(
    logged_in_page, user, digit_png
):
    page = logged_in_page
    answer = _result_page_answering(page, user, digit_png)
    error = "No digit was found in this image: it looks empty (blank, or too little contrast)."
    answer.update(status="failed", finished=True, error=error, no_digit=True)
    expect(page.locator("#no-digit-advice")).to_be_visible()
    expect(page.locator("#error-text")).to_have_text(error)
    expect(page.get_by_role("button", name="Try again")).to_be_hidden()
    expect(page.locator("#bars-section")).to_be_hidden()
    expect(page.locator("#verdict-announcement")).to_contain_text(error)


def test_without_javascript_a_queued_result_page_says_it_reloads_and_shows_the_answer_when_it_is_in(
    page_without_javascript, user, digit_png
):
    page = page_without_javascript
    upload = services.upload_create(owner=user, file=io.BytesIO(digit_png(0)), source="file")
    (prediction,) = services.predictions_create(uploads=[upload], publish=False)
    page.goto(f"/predictions/{prediction.pk}/")
    expect(page.locator("#status-badge")).to_have_text("queued")
    expect(page.locator("#noscript-note")).to_contain_text("reloads itself")
    Prediction.objects.filter(pk=prediction.pk).update(status=Prediction.Status.FAILED, error="Unreadable.")
    expect(page.locator("#status-badge")).to_have_text("failed", timeout=15_000)
    expect(page.locator("#noscript-note")).to_have_count(0)


def test_without_javascript_delete_in_history_asks_on_a_confirmation_page_first(page_without_javascript, user, digit_png):
    page = page_without_javascript
    for index in range(2):
        services.upload_create(owner=user, file=io.BytesIO(digit_png(index)), source="file")
    page.goto("/history/?status=")
    page.locator(".history-item").first.get_by_role("link", name="Delete upload").click()
    expect(page.locator("h1")).to_have_text("Delete this upload?")
    assert Upload.objects.count() == 2  # nothing deleted by following the link
    page.get_by_role("button", name="Delete").click()
    expect(page.locator(".message-success")).to_contain_text("Deleted")
    assert page.url.endswith("/history/?status=")  # back where the link was followed
    assert Upload.objects.count() == 1


def _stroke(page, points: list[tuple[float, float]], *, steps: int = 1) -> None:
    """One stroke of the mouse on the canvas through ``points``, in canvas pixels, ``steps`` moves to each."""
    box = page.locator("#draw-canvas").bounding_box()
    scale = box["width"] / 280  # canvas pixels to CSS pixels
    at = lambda x, y: (box["x"] + x * scale, box["y"] + y * scale)
    page.mouse.move(*at(*points[0]))
    page.mouse.down()
    for point in points[1:]:
        page.mouse.move(*at(*point), steps=steps)
    page.mouse.up()


def _draw_ring(page, cx: float, cy: float, rx: float, ry: float) -> None:
    """Draw an ellipse ("0") with the mouse, centre and radii in canvas pixels."""
    import math

    turn = [2 * math.pi * step / 48 for step in range(49)]
    _stroke(page, [(cx + rx * math.sin(t), cy - ry * math.cos(t)) for t in turn])


def _submit_drawing_and_read_the_png(page):
    """Submit the canvas form for real and return the PNG it sent (the hidden field's value) as an RGBA image."""
    import base64

    from PIL import Image

    # Runs after upload.js's own submit handler has filled the field; sessionStorage outlives the navigation.
    page.evaluate(
        "document.getElementById('canvas-form').addEventListener('submit', () =>"
        " sessionStorage.setItem('sent', document.getElementById('id_canvas').value))"
    )
    page.click("#canvas-submit")
    page.wait_for_url("**/predictions/*/")
    value = page.evaluate("sessionStorage.getItem('sent')")
    assert value.startswith("data:image/png;base64,")
    assert Upload.objects.get().source == "canvas"
    return Image.open(io.BytesIO(base64.b64decode(value.split(",", 1)[1]))).convert("RGBA")


def _ink_across(image, y: int, x0: int, x1: int) -> int:
    """How many pixels of row y, from x0 to x1 (canvas pixels), carry ink in an exported image."""
    return sum(1 for x in range(x0, x1) if image.getpixel((x, y))[3] > 0)


def test_a_digit_drawn_small_is_sent_with_a_pen_in_proportion_so_its_loop_stays_open(logged_in_page):
    page = logged_in_page
    _purge_queues()
    # A big scribble first, cleared: what is sent must not remember it.
    _draw_ring(page, 140, 140, 90, 100)
    page.click("#canvas-clear")
    # A "0" about 45 pixels tall in the top-left corner: 36 pixels between the pen's centres, 20 across.
    _draw_ring(page, 50, 50, 10, 18)
    # On screen it is drawn with the usual brush (a twelfth of the canvas), which fills the loop's middle...
    assert _ink_in(page, 49, 49, 52, 52) > 0
    image = _submit_drawing_and_read_the_png(page)
    # ...but it is sent with a pen in proportion to its size, so the hole in the middle is still there,
    assert image.getpixel((50, 50))[3] == 0
    assert _ink_across(image, 50, 50, 50 + 10 + 12) <= 8  # a stroke a few pixels wide, not 23
    assert _ink_across(image, 50, 50, 50 + 10 + 12) >= 2  # and the ring itself is there,
    assert image.getpixel((50 - 10, 50))[3] > 0
    assert image.getpixel((50, 50 + 18))[3] > 0
    assert image.getchannel("A").getbbox()[2] < 100  # in the corner where it was drawn


def test_a_digit_drawn_full_size_is_sent_with_the_brush_shown_on_screen(logged_in_page):
    page = logged_in_page
    _purge_queues()
    _draw_ring(page, 140, 140, 60, 100)
    image = _submit_drawing_and_read_the_png(page)
    width = _ink_across(image, 140, 140, 280)
    assert 20 <= width <= 25  # the brush of a twelfth of the canvas (23 pixels), as drawn
    assert image.getpixel((140, 140))[3] == 0


def test_a_tap_on_the_canvas_is_sent_as_a_dot(logged_in_page):
    page = logged_in_page
    _purge_queues()
    # A stroke down the canvas, then a tap beside it (a tap alone is too small to be a digit).
    _stroke(page, [(100, 60), (100, 220)], steps=8)
    _stroke(page, [(200, 140)])
    expect(page.locator("#canvas-submit")).to_be_enabled()
    image = _submit_drawing_and_read_the_png(page)
    left, top, right, bottom = image.crop((150, 0, 280, 280)).getchannel("A").getbbox()
    assert left <= 50 < right and top <= 140 < bottom  # ink where the tap was
    assert right - left <= 25 and bottom - top <= 25  # a dot, nothing more


def _context_with_csp_check(browser, live_server, **options):
    """A browser context of its own (a time zone, a screen size) whose pages fail the test on a blocked script."""
    context = browser.new_context(base_url=live_server.url, **options)
    blocked = []
    context.on("console", lambda message: blocked.append(message.text) if "Content Security Policy" in message.text
               else None)
    return context, blocked


def test_times_are_shown_in_the_readers_own_zone_named_as_the_browser_names_it(
    browser, live_server, log_in, user, digit_png
):
    import datetime as dt

    from accounts import services as account_services
    from accounts.models import ApiToken

    winter = dt.datetime(2026, 1, 15, 12, 10, 33, tzinfo=dt.UTC)
    upload = services.upload_create(owner=user, file=io.BytesIO(digit_png(0)), name="0.png", source="file")
    (prediction,) = services.predictions_create(uploads=[upload], publish=False)
    Prediction.objects.filter(pk=prediction.pk).update(status=Prediction.Status.FAILED, error="Unreadable.")
    Upload.objects.filter(pk=upload.pk).update(created_at=winter)
    token, _ = account_services.api_token_create(user=user, name="scanner")
    summer = dt.datetime(2026, 7, 1, 12, 10, tzinfo=dt.UTC)
    ApiToken.objects.filter(pk=token.pk).update(created_at=winter, last_used_at=summer)

    context, blocked = _context_with_csp_check(
        browser, live_server, viewport={"width": 1200, "height": 900}, timezone_id="America/New_York", locale="en-US"
    )
    try:
        page = context.new_page()
        log_in(page)
        page.goto(f"/predictions/{prediction.pk}/")
        uploaded = page.locator(".facts time")
        expect(uploaded).to_have_text("2026-01-15 07:10 EST")
        expect(uploaded).to_have_attribute("title", "2026-01-15 12:10 UTC")  # the server's text, on hover
        page.goto("/history/")
        expect(page.locator(".history-item time")).to_have_text("2026-01-15 07:10 EST")
        page.goto("/accounts/")
        # Made in winter, last used in summer, expiring a year after it was made: each named for its own date.
        expect(page.locator(".token-list time")).to_have_text(
            ["2026-01-15 07:10 EST", "2026-07-01 08:10 EDT", "2027-01-15 07:10 EST"]
        )
    finally:
        context.close()
    assert blocked == []


def test_screen_readers_are_told_the_answer_once_it_is_in_and_nothing_more(logged_in_page, user, digit_png, settings):
    settings.LOW_CONFIDENCE_THRESHOLD = 0.7
    page = logged_in_page
    answer = _result_page_answering(page, user, digit_png)
    announcement = page.locator("#verdict-announcement")
    expect(page.locator("#status-badge")).to_have_text("queued")
    expect(announcement).to_have_text("")  # nothing said while it waits
    answer.update(JUST_BELOW_THRESHOLD)
    expect(announcement).to_have_text(
        "It is a 7, 69% confident. Not sure — the model's confidence is below 70%."
    )
    assert page.locator("[aria-live]").count() == 1


def test_the_first_tab_reaches_the_skip_link_which_shows_itself_and_leads_into_the_page(logged_in_page):
    page = logged_in_page
    page.goto("/history/")
    skip = page.get_by_role("link", name="Skip to content")
    expect(skip).not_to_be_in_viewport()
    page.keyboard.press("Tab")
    expect(skip).to_be_focused()
    expect(skip).to_be_in_viewport()
    page.keyboard.press("Enter")
    expect(page.locator("main#content")).to_be_focused()
    page.keyboard.press("Tab")  # on into the page, past the header's links
    assert page.evaluate("document.getElementById('content').contains(document.activeElement)")


def test_no_page_scrolls_sideways_on_a_360_px_wide_phone(browser, live_server, log_in, user, digit_png, artifacts_dir):
    from accounts import services as account_services

    long_name = "a-photo-of-a-digit-with-a-very-long-file-name-straight-from-the-camera-0001.png"
    upload = services.upload_create(owner=user, file=io.BytesIO(digit_png(0)), name=long_name, source="file")
    (prediction,) = services.predictions_create(uploads=[upload], publish=False)
    Prediction.objects.filter(pk=prediction.pk).update(
        status=Prediction.Status.DONE, digit=7, confidence=0.65, probabilities=[0.035] * 7 + [0.65] + [0.0] * 2,
        device="cpu", queue_ms=12.0, compute_ms=3.5,
    )
    failed = services.upload_create(owner=user, file=io.BytesIO(digit_png(1)), name=long_name, source="file")
    (failure,) = services.predictions_create(uploads=[failed], publish=False)
    Prediction.objects.filter(pk=failure.pk).update(
        status=Prediction.Status.FAILED, error="The stored image could not be read: " + "x" * 80
    )
    account_services.api_token_create(user=user, name="a token with a rather long name for a phone")

    context, blocked = _context_with_csp_check(browser, live_server, viewport={"width": 360, "height": 740})
    try:
        page = context.new_page()
        pages = {"login": "/accounts/login/", "signup": "/accounts/signup/", "logout-anonymous": "/accounts/logout/"}
        for name, path in pages.items():
            page.goto(path)
            _assert_no_sideways_scroll(page, artifacts_dir, f"narrow-{name}")
        log_in(page)
        pages = {
            "upload": "/", "result": f"/predictions/{prediction.pk}/", "result-failed": f"/predictions/{failure.pk}/",
            "history": "/history/?digit=7", "account": "/accounts/", "password": "/accounts/password/",
            "logout": "/accounts/logout/", "delete": f"/uploads/{upload.pk}/delete", "missing": "/no-such-page/",
        }
        for name, path in pages.items():
            page.goto(path)
            _assert_no_sideways_scroll(page, artifacts_dir, f"narrow-{name}")
        # A new token's key, shown once, is one long word.
        _token_asked_for(page, name="phone", password="correct horse battery")
        expect(page.locator("#new-token")).to_be_visible()
        _assert_no_sideways_scroll(page, artifacts_dir, "narrow-account-new-token")
    finally:
        context.close()
    assert blocked == []


def _assert_no_sideways_scroll(page, artifacts_dir, name: str) -> None:
    page.screenshot(path=str(artifacts_dir / f"{name}.png"), full_page=True)
    wide = page.evaluate(
        "() => Array.from(document.querySelectorAll('body *'))"
        ".filter(e => e.getBoundingClientRect().right > document.documentElement.clientWidth + 0.5)"
        ".map(e => e.tagName + '#' + e.id + '.' + e.className)"
    )
    assert page.evaluate("document.documentElement.scrollWidth") <= 360, (name, wide[:10])


@pytest.fixture
def phone_page(browser, live_server, log_in):
    """A page logged in as alice on a 360-pixel phone screen, failing the test on a blocked script."""
    context, blocked = _context_with_csp_check(browser, live_server, viewport={"width": 360, "height": 740})
    page = context.new_page()
    log_in(page)
    yield page
    context.close()
    assert blocked == []


def _token_asked_for(page, *, name: str, password: str) -> None:
    page.goto("/accounts/")
    page.fill("#id_name", name)
    page.fill("#id_token_password", password)
    page.get_by_role("button", name="Create a token").click()


def test_a_form_sent_back_for_a_correction_brings_the_field_to_correct_into_view_on_a_phone(phone_page):
    page = phone_page
    _token_asked_for(page, name="scanner", password="not my password")
    page.wait_for_load_state()
    expect(page.get_by_text("That is not your password.")).to_be_in_viewport()
    expect(page.locator("#id_token_password")).to_be_focused()
    expect(page.locator("#id_name")).to_have_value("scanner")  # what was typed stays
    # The filters of a history page read from its address take nothing: the page opens at its top.
    page.goto("/history/?date_from=not-a-date")
    assert page.evaluate("document.activeElement === document.body")


def test_a_refused_account_deletion_opens_at_its_section_with_the_keyboard_on_the_field_to_correct(phone_page):
    page = phone_page
    page.goto("/accounts/")
    page.get_by_role("button", name="Delete my account").click()
    page.wait_for_load_state("load")
    expect(page).to_have_url(re.compile(r"/accounts/delete/#delete-heading$"))
    expect(page.locator("#id_password")).to_be_focused()
    expect(page.locator("#id_password")).to_be_in_viewport()


def test_a_history_filter_that_is_not_understood_is_marked_invalid_and_described_by_its_own_error(logged_in_page):
    page = logged_in_page
    page.goto("/history/?digit=11&status=done&date_to=2026-13-45")
    for field, error in [("#id_digit", "“11” is not a digit from 0 to 9, so this filter is not applied."),
                         ("#id_date_to", "“2026-13-45” is not a date, so this filter is not applied.")]:
        expect(page.locator(field)).to_have_attribute("aria-invalid", "true")
        expect(page.locator(field)).to_have_accessible_description(error)
    expect(page.locator("#id_status")).not_to_have_attribute("aria-invalid", "true")
    expect(page.locator("#id_status")).to_have_accessible_description("")
    # Filters read from an address take no keyboard: the page opens at its top (static/js/site.js).
    assert page.evaluate("document.activeElement === document.body")


def test_screen_readers_hear_a_new_selection_of_files_summed_up_while_the_list_shows_each_file(
    logged_in_page, digit_png, tmp_path
):
    page = logged_in_page
    summary = page.locator("#file-summary")
    images = _digit_files(tmp_path, digit_png, 3)
    notes = tmp_path / "notes.txt"
    notes.write_text("not a picture")
    expect(summary).to_have_text("")  # nothing chosen yet, nothing said
    assert page.locator("#file-list").evaluate("list => list.closest('[aria-live]')") is None

    page.set_input_files("#id_files", images)
    expect(summary).to_have_text("3 images chosen")
    expect(page.locator("#file-list li")).to_have_text([re.compile(r"digit-\d\.png · \d+ KB")] * 3)
    page.set_input_files("#id_files", [images[0], images[1], str(notes)])
    expect(summary).to_have_text("3 images chosen, 1 refused")
    expect(page.locator("#file-list li.refused")).to_have_text("notes.txt · 1 KB (refused)")
    page.set_input_files("#id_files", images[0])
    expect(summary).to_have_text("1 image chosen")
    expect(page.locator("#file-list li")).to_have_count(1)


def test_a_drawing_the_server_sends_back_is_still_on_the_canvas_to_send_again(logged_in_page, user, settings):
    from classifier.models import StorageUse

    settings.UPLOAD_QUOTA_MB = 1
    StorageUse.objects.update_or_create(owner=user, defaults={"bytes": 2**20})  # the allowance is used up
    page = logged_in_page
    _draw_ring(page, 140, 140, 60, 100)
    drawn = _ink_in(page, 0, 0, 280, 280)
    # A form posted as a page: the answer is read once it has loaded, its script (which draws the strokes back) run.
    with page.expect_navigation():
        page.click("#canvas-submit")
    expect(page.locator("#upload-errors")).to_contain_text("Nothing was uploaded")
    # Drawn again from its strokes: the same ink, give or take the odd pixel where segments join.
    assert abs(_ink_in(page, 0, 0, 280, 280) - drawn) < drawn / 100
    expect(page.locator("#canvas-submit")).to_be_enabled()
    expect(page.locator("#canvas-undo")).to_be_enabled()
    # Sent once more, refused once more; then a plain visit to the page starts with a blank canvas.
    with page.expect_navigation():
        page.click("#canvas-submit")
    expect(page.locator("#upload-errors")).to_be_visible()
    assert abs(_ink_in(page, 0, 0, 280, 280) - drawn) < drawn / 100
    page.goto("/")
    assert _ink_in(page, 0, 0, 280, 280) == 0
    assert Upload.objects.count() == 0


def test_a_drawing_sent_after_the_session_ended_is_back_on_the_canvas_once_logged_in_again(
    browser, live_server, log_in, user
):
    context = browser.new_context(viewport={"width": 1200, "height": 900}, base_url=live_server.url)
    try:
        page = context.new_page()
        log_in(page)
        _draw_ring(page, 140, 140, 60, 100)
        drawn = _ink_in(page, 0, 0, 280, 280)
        context.clear_cookies()  # the session ends (it expired, or the person logged out in another tab)
        page.click("#canvas-submit")
        page.wait_for_url("**/accounts/login/**")
        log_in(page)
        # Nothing was stored, and nothing drawn is lost: the drawing is back, with word of why.
        assert Upload.objects.count() == 0
        assert abs(_ink_in(page, 0, 0, 280, 280) - drawn) < drawn / 100
        expect(page.locator("#canvas-submit")).to_be_enabled()
        expect(page.locator("#canvas-note")).to_have_text("Your drawing was not sent: it is back on the canvas to send again.")
        # Sent and taken this time; the next visit to the page starts with a blank canvas.
        page.click("#canvas-submit")
        page.wait_for_url("**/predictions/*/")
        assert Upload.objects.get().source == "canvas"
        page.goto("/")
        assert _ink_in(page, 0, 0, 280, 280) == 0
        expect(page.locator("#canvas-note")).to_be_hidden()
    finally:
        context.close()


def test_files_sent_after_the_session_ended_are_said_to_be_not_uploaded_once_logged_in_again(
    browser, live_server, log_in, user, digit_png, tmp_path
):
    context = browser.new_context(viewport={"width": 1200, "height": 900}, base_url=live_server.url)
    try:
        page = context.new_page()
        log_in(page)
        page.set_input_files("#id_files", _digit_files(tmp_path, digit_png, 2))
        expect(page.locator("#file-submit")).to_have_text("Upload 2 images and predict")
        context.clear_cookies()  # the session ends (it expired, or the person logged out in another tab)
        page.click("#file-submit")
        page.wait_for_url("**/accounts/login/**")
        log_in(page)
        # Nothing was stored, and the page the log-in leads back to says so: no browser brings chosen files back.
        assert Upload.objects.count() == 0
        expect(page.locator("#file-note")).to_have_text(
            "Your 2 images were not uploaded, as your session had ended: choose them again.")
        expect(page.locator("#file-note")).to_have_attribute("role", "status")
        page.set_input_files("#id_files", _digit_files(tmp_path, digit_png, 2))
        expect(page.locator("#file-note")).to_be_hidden()
        # Said once: the next visit to the page says nothing of it.
        page.goto("/")
        expect(page.locator("#file-note")).to_be_hidden()
    finally:
        context.close()


def test_a_drawing_too_small_to_be_a_digit_is_not_sent_and_says_to_draw_larger(logged_in_page):
    page = logged_in_page
    # A scribble a few pixels long: cropped to its ink and scaled up, the model would read it as some digit.
    _stroke(page, [(100, 100), (106, 103)], steps=4)
    page.click("#canvas-submit")
    error = page.locator("#canvas-error")
    expect(error).to_have_text("This drawing is too small to be read as a digit: draw it larger.")
    expect(error).to_have_attribute("role", "alert")
    assert "/predictions/" not in page.url  # still the upload page
    assert Upload.objects.count() == 0
    assert _ink_in(page, 90, 90, 120, 120) > 0  # still there, to draw on
    # Drawn over, the digit is large enough and the error goes.
    _draw_ring(page, 140, 140, 40, 70)
    expect(error).to_be_hidden()
    with page.expect_navigation():
        page.click("#canvas-submit")
    assert Upload.objects.get().source == "canvas"


def test_predict_drawing_pressed_with_nothing_drawn_sends_nothing_and_says_to_draw_first(logged_in_page):
    page = logged_in_page
    posts = []
    page.on("request", lambda request: posts.append(request.url) if request.method == "POST" else None)
    page.click("#canvas-submit")
    error = page.locator("#canvas-error")
    expect(error).to_have_text("Draw a digit first.")
    expect(error).to_have_attribute("role", "alert")
    expect(error).to_be_focused()
    page.wait_for_timeout(300)
    assert posts == []
    assert "/predictions/" not in page.url  # still the upload page
    # Drawn, the message goes and the button sends the drawing.
    _draw_ring(page, 140, 140, 40, 70)
    expect(error).to_be_hidden()
    with page.expect_navigation():
        page.click("#canvas-submit")
    assert Upload.objects.get().source == "canvas"


def test_tab_reaches_both_submit_buttons_on_a_fresh_upload_page(logged_in_page):
    page = logged_in_page
    page.goto("/")
    reached = []
    for _ in range(30):
        page.keyboard.press("Tab")
        reached.append(page.evaluate("document.activeElement.id"))
        if "canvas-submit" in reached:
            break
    assert "file-submit" in reached
    assert "canvas-submit" in reached


def test_a_dropped_file_the_server_cannot_read_is_named_before_anything_is_sent(logged_in_page, digit_png, tmp_path):
    page = logged_in_page
    image, notes = tmp_path / "seven.png", tmp_path / "notes.txt"
    image.write_bytes(digit_png(0))
    notes.write_text("not a picture")
    page.set_input_files("#id_files", [str(image), str(notes)])
    expect(page.locator("#file-error")).to_have_text("“notes.txt” is not a PNG, JPEG, GIF, WEBP or BMP image.")
    expect(page.locator("#file-submit")).to_be_disabled()
    expect(page.locator("#file-list li.refused")).to_have_text("notes.txt · 1 KB (refused)")
    page.set_input_files("#id_files", [str(image)])
    expect(page.locator("#file-error")).to_be_hidden()
    expect(page.locator("#file-submit")).to_be_enabled()


def test_a_file_the_server_refuses_stays_chosen_and_marked_and_can_be_left_out_to_send_the_rest(
    logged_in_page, digit_png, tmp_path, artifacts_dir
):
    page = logged_in_page
    paths = [tmp_path / "zero.png", tmp_path / "broken.png", tmp_path / "one.png"]
    paths[0].write_bytes(digit_png(0))
    paths[1].write_bytes(digit_png(2)[:40])  # refused by the server only: cut short after the PNG's header
    paths[2].write_bytes(digit_png(1))
    page.set_input_files("#id_files", [str(path) for path in paths])
    page.click("#file-submit")
    expect(page.locator("#upload-errors")).to_contain_text("broken.png")
    expect(page.locator("#upload-errors")).to_be_focused()
    assert page.url.endswith("/")
    expect(page.locator("#file-list li")).to_have_count(3)
    expect(page.locator("#file-list li.refused")).to_have_text("broken.png · 1 KB (refused)")
    page.screenshot(path=str(artifacts_dir / "upload-refused.png"), full_page=True)
    assert not Upload.objects.exists()

    page.click("#file-leave-out")
    expect(page.locator("#file-list li")).to_have_count(2)
    expect(page.locator("#file-list li.refused")).to_have_count(0)
    expect(page.locator("#upload-errors")).to_have_count(0)
    expect(page.locator("#file-leave-out")).to_be_hidden()
    expect(page.locator("#file-submit")).to_have_text("Upload 2 images and predict")
    page.click("#file-submit")
    page.wait_for_url("**/history/?batch=*")
    expect(page.locator(".messages")).to_contain_text("2 images uploaded")
    assert sorted(Upload.objects.values_list("original_name", flat=True)) == ["one.png", "zero.png"]


def test_an_upload_from_a_page_whose_form_expired_says_so_and_sends_the_file_kept_chosen_again(
    logged_in_page, digit_png, tmp_path
):
    page = logged_in_page
    path = tmp_path / "seven.png"
    path.write_bytes(digit_png(0))
    page.set_input_files("#id_files", str(path))
    # As after logging out and in again in another tab: log-in gives the browser a new security code.
    cookie = next(cookie for cookie in page.context.cookies() if cookie["name"] == "csrftoken")
    page.context.add_cookies([{**cookie, "value": "A" * 32}])
    page.click("#file-submit")
    expect(page.locator("#upload-errors")).to_contain_text("That form had expired")
    expect(page.locator("#upload-errors")).to_contain_text("The form has been renewed: send the files again.")
    expect(page.locator("#upload-errors")).not_to_contain_text("reload the page")
    expect(page.locator("#file-list li")).to_have_count(1)
    assert not Upload.objects.exists()

    page.click("#file-submit")
    page.wait_for_url("**/predictions/*/")
    assert Upload.objects.get().original_name == "seven.png"


def test_the_files_cannot_be_chosen_again_while_they_are_sent_so_the_answer_marks_the_ones_sent(
    logged_in_page, digit_png, tmp_path
):
    page = logged_in_page
    held = []
    page.route("**/", lambda route: held.append(route) if route.request.method == "POST" else route.continue_())
    paths = [tmp_path / "zero.png", tmp_path / "broken.png"]
    paths[0].write_bytes(digit_png(0))
    paths[1].write_bytes(digit_png(1)[:40])  # refused by the server only: cut short after the PNG's header
    page.set_input_files("#id_files", [str(path) for path in paths])
    page.click("#file-submit")
    page.wait_for_function("document.getElementById('file-progress') && document.getElementById('id_files').disabled")
    expect(page.locator("#file-submit")).to_be_disabled()
    # A drop is ignored too, while the files are on their way.
    page.dispatch_event("#dropzone", "drop", {"dataTransfer": page.evaluate_handle(
        "() => { const d = new DataTransfer(); d.items.add(new File(['x'], 'other.png', {type: 'image/png'})); return d; }"
    )})
    expect(page.locator("#file-list li")).to_have_count(2)
    held[0].continue_()
    expect(page.locator("#file-list li.refused")).to_contain_text("broken.png")
    expect(page.locator("#id_files")).to_be_enabled()


def test_a_proxys_timeout_during_an_upload_says_the_images_may_have_been_stored(logged_in_page, digit_png):
    page = logged_in_page
    gateway_page = "<html><body><center><h1>504 Gateway Time-out</h1></center></body></html>"
    page.route("**/", lambda route: route.fulfill(status=504, content_type="text/html", body=gateway_page)
               if route.request.method == "POST" else route.continue_())
    page.set_input_files("#id_files", [{"name": "zero.png", "mimeType": "image/png", "buffer": digit_png(0)}])
    page.click("#file-submit")
    expect(page.locator("#upload-errors")).to_contain_text("The images may have been stored: look in your history")
    expect(page.locator("#upload-errors")).not_to_contain_text("Nothing was uploaded")


def test_files_the_server_did_not_all_receive_are_not_marked_by_a_position_that_moved(logged_in_page, digit_png):
    page = logged_in_page
    # The server's parser drops a part whose name comes out empty (an escaped slash): the refused file's position
    # among those received is not its position in the selection.
    page.set_input_files("#id_files", [
        {"name": "zero.png", "mimeType": "image/png", "buffer": digit_png(0)},
        {"name": "x&#47;", "mimeType": "image/png", "buffer": digit_png(1)},
        {"name": "broken.png", "mimeType": "image/png", "buffer": digit_png(2)[:40]},  # refused by the server only
    ])
    page.click("#file-submit")
    expect(page.locator("#upload-errors")).to_contain_text("broken.png")
    expect(page.locator("#file-list li.refused")).to_have_count(0)
    expect(page.locator("#file-leave-out")).to_be_hidden()


def test_a_new_api_token_is_shown_in_view_on_a_phone_where_it_sits_far_down_the_page(phone_page):
    _token_asked_for(phone_page, name="phone", password="correct horse battery")
    expect(phone_page.locator("#new-token")).to_be_in_viewport()
    expect(phone_page.get_by_text("shown this once; copy it now")).to_be_in_viewport()


def _noise_png(side: int) -> bytes:
    """A picture PNG cannot compress: about side x side bytes, for an upload that takes a while to send."""
    from PIL import Image

    from tests.classifier.fixtures import png_bytes

    return png_bytes(Image.frombytes("L", (side, side), os.urandom(side * side)))


def test_screen_readers_hear_an_upload_go_by_in_a_few_steps_not_at_every_move_of_its_bar(logged_in_page, tmp_path):
    page = logged_in_page
    paths = []
    for index in range(3):
        path = tmp_path / f"noise-{index}.png"
        path.write_bytes(_noise_png(400))
        paths.append(str(path))
    heard, moves = _listen_to(page, "upload-announcement"), []
    page.expose_function("moved", lambda value: moves.append(value))
    page.add_init_script("""document.addEventListener("DOMContentLoaded", () => {
        const bar = document.getElementById("file-progress");
        new MutationObserver(() => window.moved(bar.value)).observe(bar, {attributes: true, attributeFilter: ["value"]});
    });""")
    page.reload()  # the listeners above start with a page opened after them
    # About half a megabyte sent at 250 KB a second: two seconds of progress events.
    cdp = page.context.new_cdp_session(page)
    cdp.send("Network.enable")
    cdp.send("Network.emulateNetworkConditions",
             {"offline": False, "latency": 0, "downloadThroughput": -1, "uploadThroughput": 250_000})
    page.set_input_files("#id_files", paths)
    page.click("#file-submit")
    expect(page.get_by_role("progressbar", name="Upload progress")).to_be_visible()
    page.wait_for_url("**/history/?batch=*")
    assert heard == ["Uploading 3 images…", "25% uploaded", "50% uploaded", "75% uploaded",
                     "Uploaded; checking the images…"]
    assert len(set(moves)) > len(heard)  # the bar itself moved more often than anything was said


def test_the_upload_button_keeps_the_keyboard_while_the_files_are_sent_and_sends_them_once(
    logged_in_page, digit_png, tmp_path
):
    page = logged_in_page
    held = []
    page.route("**/", lambda route: held.append(route) if route.request.method == "POST" else route.continue_())
    path = tmp_path / "zero.png"
    path.write_bytes(digit_png(0))
    page.set_input_files("#id_files", str(path))
    page.focus("#file-submit")
    page.keyboard.press("Enter")
    expect(page.locator("#upload-announcement")).to_have_text("Uploading the image…")
    expect(page.locator("#file-submit")).to_be_disabled()
    expect(page.locator("#file-submit")).to_be_focused()
    page.keyboard.press("Enter")  # pressed again while the first is on its way
    page.wait_for_timeout(300)
    assert len(held) == 1
    held[0].continue_()
    page.wait_for_url("**/predictions/*/")
    assert Upload.objects.count() == 1


def test_a_drawing_the_server_sends_back_opens_the_page_on_why_it_was_refused(logged_in_page, user, settings):
    from classifier.models import StorageUse

    settings.UPLOAD_QUOTA_MB = 1
    StorageUse.objects.update_or_create(owner=user, defaults={"bytes": 2**20})
    page = logged_in_page
    _draw_ring(page, 140, 140, 60, 100)
    page.click("#canvas-submit")
    expect(page.locator("#upload-errors")).to_contain_text("Nothing was uploaded")
    expect(page.locator("#upload-errors")).to_be_focused()


def test_back_after_logging_out_does_not_show_the_page_left_from_the_browsers_memory(
    browser_with_back_forward_cache, live_server, log_in, user, digit_png
):
    services.predictions_submit(owner=user, files=[(io.BytesIO(digit_png(0)), "tax-return.png")], source="file")
    context = browser_with_back_forward_cache.new_context(base_url=live_server.url)
    try:
        page = context.new_page()
        page.set_default_timeout(20_000)
        log_in(page)
        page.evaluate("window.kept = true")
        page.goto("/history/")
        expect(page.locator(".history-name")).to_have_text("tax-return.png")
        # Signed in, Back shows the page left as it was, from memory, not reloaded.
        page.go_back(wait_until="commit")
        expect(page.locator("h1")).to_have_text("Recognise a handwritten digit")
        expect(page.locator("h1")).to_be_visible()
        assert page.evaluate("window.kept") is True
        page.go_forward(wait_until="commit")
        expect(page.locator(".history-name")).to_have_text("tax-return.png")
        page.click("text=Log out")
        page.wait_for_url("**/accounts/login/")
        # A page shown again from the browser's memory fires no "load": wait for the address only.
        page.go_back(wait_until="commit")
        # Whoever uses the computer next sees the log-in page, not the history of the person who left.
        expect(page).to_have_url(re.compile(r"/accounts/login/\?next=/history/$"))
        expect(page.locator("h1")).to_have_text("Log in")
        expect(page.get_by_text("tax-return.png")).to_have_count(0)
    finally:
        context.close()


@pytest.mark.parametrize("browser_kind", ["browser", "browser_with_back_forward_cache"])
def test_back_to_a_history_page_shows_the_filters_of_its_list_and_counts_the_rows_still_ticked(
    request, browser_kind, live_server, log_in, user, digit_png
):
    # Reloaded, the browser fills in the form as it was left; from its memory, the page is as it was left.
    context = request.getfixturevalue(browser_kind).new_context(base_url=live_server.url)
    try:
        page = context.new_page()
        page.set_default_timeout(20_000)
        log_in(page)
        uploads = _three_uploads(user, digit_png)
        page.goto("/history/")
        page.get_by_label(f"Select upload {uploads[1].pk},").check()
        page.select_option("#id_status", "failed")
        page.get_by_role("button", name="Filter").click()
        page.wait_for_url("**status=failed**")
        expect(page.get_by_text("No uploads match these filters.")).to_be_visible()

        page.go_back(wait_until="commit")
        expect(page).to_have_url(f"{live_server.url}/history/")
        expect(page.locator(".history-item")).to_have_count(3)
        # All three listed: the status chosen for the page that lists none is not shown as this list's filter.
        expect(page.locator("#id_status")).to_have_value("")
        expect(page.get_by_label(f"Select upload {uploads[1].pk},")).to_be_checked()
        expect(page.locator("#delete-selected")).to_have_text("Delete 1 selected")
    finally:
        context.close()


def test_the_log_in_page_leaves_the_keyboard_at_its_start_and_a_refused_log_in_opens_on_why(page, user):
    page.goto("/accounts/login/")
    assert page.evaluate("document.activeElement === document.body")
    page.keyboard.press("Tab")
    expect(page.get_by_role("link", name="Skip to content")).to_be_focused()

    page.fill("#id_username", "alice")
    page.fill("#id_password", "wrong")
    page.click("button[type=submit]")
    expect(page.locator(".errors")).to_be_focused()
    page.keyboard.press("Tab")
    expect(page.locator("#id_username")).to_be_focused()

    # A field left empty: the page opens on it, its error read with it.
    page.fill("#id_username", "")
    page.fill("#id_password", "wrong")
    page.click("button[type=submit]")
    expect(page.locator("#id_username")).to_be_focused()
    expect(page.locator("#id_username")).to_have_accessible_description("This field is required.")


def test_a_refused_sign_up_opens_on_why_it_was_refused(page, settings):
    settings.SIGNUP_THROTTLE_RATE = "1/hour"
    page.goto("/accounts/signup/")
    page.fill("#id_username", "bob")
    page.fill("#id_password1", "a long enough password 123")
    page.fill("#id_password2", "a long enough password 124")  # mistyped: refused, which costs a tenth of one
    page.click("button[type=submit]")
    expect(page.locator("#id_password2")).to_be_focused()
    page.fill("#id_password1", "a long enough password 123")
    page.fill("#id_password2", "a long enough password 123")
    page.click("button[type=submit]")
    # No field is to blame: the page opens on the refusal, which is then read out.
    expect(page.locator(".errors")).to_contain_text("Too many sign-ups from your address")
    expect(page.locator(".errors")).to_be_focused()


def test_what_a_deletion_in_the_history_did_opens_the_page_it_leads_back_to(logged_in_page, user, digit_png):
    page = logged_in_page
    services.upload_create(owner=user, file=io.BytesIO(digit_png(0)), name="zero.png", source="file")
    page.goto("/history/")
    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_role("link", name="Delete upload").click()
    expect(page.locator(".messages")).to_contain_text("Deleted “zero.png”")
    expect(page.locator(".messages")).to_be_focused()


def test_a_message_is_the_first_thing_on_the_page_it_opens_with_nothing_of_the_template_shown_before_it(
        logged_in_page, user, digit_png):
    page = logged_in_page
    services.upload_create(owner=user, file=io.BytesIO(digit_png(0)), name="zero.png", source="file")
    page.goto("/history/")
    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_role("link", name="Delete upload").click()
    expect(page.locator(".messages")).to_be_focused()
    assert page.locator("main").inner_text().startswith("Deleted “zero.png”")


def _three_uploads(user, digit_png) -> list[Upload]:
    return [services.upload_create(owner=user, file=io.BytesIO(digit_png(i)), name=f"{i}.png", source="file")
            for i in range(3)]


def test_ticked_history_rows_are_deleted_together_after_confirming_how_many(logged_in_page, user, digit_png):
    page = logged_in_page
    uploads = _three_uploads(user, digit_png)
    page.goto("/history/")
    expect(page.locator(".history-item")).to_have_count(3)

    page.get_by_label(f"Select upload {uploads[0].pk},").check()
    page.get_by_label(f"Select upload {uploads[2].pk},").check()
    asked = []
    page.once("dialog", lambda dialog: (asked.append(dialog.message), dialog.accept()))
    page.get_by_role("button", name="Delete 2 selected").click()

    expect(page.locator(".messages")).to_have_text("Deleted 2 uploads.")
    expect(page.locator(".messages")).to_be_focused()
    assert asked == ["Delete 2 uploads and their images? This cannot be undone."]
    expect(page.locator(".history-item")).to_have_count(1)
    expect(page.locator(f'.history-item[data-upload-id="{uploads[1].pk}"]')).to_have_count(1)
    assert list(Upload.objects.all()) == [uploads[1]]


def test_select_all_ticks_the_page_and_delete_all_deletes_every_upload_once_confirmed(logged_in_page, user, digit_png):
    page = logged_in_page
    _three_uploads(user, digit_png)
    page.goto("/history/")
    expect(page.locator("#select-all-link")).to_be_hidden()  # the link is for browsers without JavaScript
    page.get_by_role("button", name="Delete selected").click()
    expect(page.locator("#bulk-delete-note")).to_have_text("Select the uploads to delete first.")
    expect(page.locator("#history-announcement")).to_have_text("Select the uploads to delete first.")

    page.get_by_label("Select all on this page").check()
    expect(page.locator("#bulk-delete-note")).to_have_text("")
    expect(page.locator(".history-item input[type=checkbox]:checked")).to_have_count(3)
    page.locator(".history-item input[type=checkbox]").first.uncheck()
    assert page.evaluate("document.getElementById('select-all').indeterminate")
    page.once("dialog", lambda dialog: dialog.dismiss())
    page.get_by_role("button", name="Delete 2 selected").click()
    assert Upload.objects.count() == 3  # dismissed: nothing sent

    asked = []
    page.once("dialog", lambda dialog: (asked.append(dialog.message), dialog.accept()))
    page.get_by_role("link", name="Delete all 3 uploads").click()
    expect(page.locator(".messages")).to_have_text("Deleted 3 uploads.")
    assert asked == ["Delete 3 uploads and their images? This cannot be undone."]
    expect(page.locator(".empty-state")).to_contain_text("You have not uploaded anything yet.")
    assert not Upload.objects.exists()


def test_without_javascript_ticked_rows_are_deleted_on_a_confirmation_page_that_says_how_many(
    page_without_javascript, user, digit_png
):
    page = page_without_javascript
    uploads = _three_uploads(user, digit_png)
    page.goto("/history/?status=")

    page.get_by_label(f"Select upload {uploads[0].pk},").check()
    page.get_by_label(f"Select upload {uploads[1].pk},").check()
    page.get_by_role("button", name="Delete selected").click()
    expect(page.locator("h1")).to_have_text("Delete 2 uploads?")
    expect(page.locator(".confirm-list li")).to_have_count(2)
    assert Upload.objects.count() == 3  # nothing deleted by asking
    page.get_by_role("button", name="Delete 2 uploads").click()

    expect(page.locator(".messages")).to_have_text("Deleted 2 uploads.")
    assert page.url.endswith("/history/?status=")  # back where the rows were ticked
    expect(page.locator(".history-item")).to_have_count(1)
    assert list(Upload.objects.all()) == [uploads[2]]


def test_files_the_page_itself_refuses_are_shown_counted_out_and_can_be_left_out_to_send_the_rest(
    logged_in_page, digit_png, tmp_path
):
    page = logged_in_page
    images = _digit_files(tmp_path, digit_png, 6)
    too_large, notes = tmp_path / "too_large.png", tmp_path / "notes.txt"
    too_large.write_bytes(b"\0" * (7 * 1024 * 1024))
    notes.write_text("not a picture")
    page.set_input_files("#id_files", images + [str(too_large), str(notes)])
    expect(page.locator("#file-error")).to_contain_text("“too_large.png” is larger than 5.0 MB.")
    expect(page.locator("#file-summary")).to_have_text("8 images chosen, 2 refused")
    # The list scrolls only a few rows high: the refused ones, chosen last, are brought into it.
    expect(page.locator("#file-list li.refused").first).to_be_in_viewport()
    expect(page.locator("#file-submit")).to_be_disabled()
    expect(page.locator("#file-submit")).to_have_text("Upload 6 images and predict")
    expect(page.locator("#file-leave-out")).to_have_text("Leave out the 2 refused files")

    page.click("#file-leave-out")
    expect(page.locator("#file-list li")).to_have_count(6)
    expect(page.locator("#file-list li.refused")).to_have_count(0)
    expect(page.locator("#file-error")).to_be_hidden()
    expect(page.locator("#file-leave-out")).to_be_hidden()
    expect(page.locator("#file-summary")).to_have_text("6 images chosen")
    expect(page.locator("#file-submit")).to_be_focused()
    expect(page.locator("#file-submit")).to_have_text("Upload 6 images and predict")
    page.click("#file-submit")
    page.wait_for_url("**/history/?batch=*")
    assert sorted(Upload.objects.values_list("original_name", flat=True)) == [f"digit-{i}.png" for i in range(6)]


def test_without_javascript_the_drawing_card_says_drawing_needs_it_and_offers_no_dead_buttons(
    page_without_javascript, digit_png, tmp_path
):
    page = page_without_javascript
    page.goto("/")
    # In the drawing card, where the canvas would be.
    note = page.locator("section:has(#draw-heading) #canvas-needs-script")
    expect(note).to_be_visible()
    expect(note).to_contain_text("Drawing needs JavaScript")
    for control in ("#draw-canvas", "#canvas-clear", "#canvas-undo", "#canvas-submit"):
        expect(page.locator(control)).to_be_hidden()
    # The file form works as ever: sent by the browser, the page comes back with the refusal.
    paths = [tmp_path / "zero.png", tmp_path / "broken.png"]
    paths[0].write_bytes(digit_png(0))
    paths[1].write_bytes(b"not a picture")
    page.set_input_files("#id_files", [str(path) for path in paths])
    page.click("#file-submit")
    expect(page.locator("#upload-errors")).to_contain_text("broken.png")
    expect(page.locator("#upload-errors")).to_contain_text("choose the other files again")
    page.set_input_files("#id_files", str(paths[0]))
    page.click("#file-submit")
    page.wait_for_url("**/predictions/*/")
    assert Upload.objects.get().original_name == "zero.png"


def test_with_javascript_the_drawing_card_says_nothing_of_javascript(logged_in_page):
    page = logged_in_page
    expect(page.locator("#canvas-needs-script")).to_be_hidden()
    for control in ("#draw-canvas", "#canvas-clear", "#canvas-undo", "#canvas-submit"):
        expect(page.locator(control)).to_be_visible()


def test_deleting_an_upload_from_its_result_page_asks_first_and_leads_to_the_history(logged_in_page, user, digit_png):
    page = logged_in_page
    upload = _open_a_queued_result(page, user, digit_png(0))
    asked = []
    page.once("dialog", lambda dialog: (asked.append(dialog.message), dialog.dismiss()))
    page.get_by_role("link", name="Delete", exact=True).click()
    expect(page.locator("#status-badge")).to_have_text("queued")  # declined: still here, nothing deleted
    assert asked == ["Delete this upload and its images? This cannot be undone."]
    assert Upload.objects.filter(pk=upload.pk).exists()

    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_role("link", name="Delete", exact=True).click()
    expect(page.locator(".message-success")).to_contain_text("Deleted")
    assert page.url.endswith("/history/")
    assert not Upload.objects.filter(pk=upload.pk).exists()
    page.get_by_role("link", name="Upload more").wait_for()


def test_a_new_api_token_is_copied_by_its_button_which_says_so(browser, live_server, log_in):
    context, blocked = _context_with_csp_check(browser, live_server, viewport={"width": 1200, "height": 900})
    context.grant_permissions(["clipboard-read", "clipboard-write"])
    page = context.new_page()
    log_in(page)
    _token_asked_for(page, name="copied", password="correct horse battery")
    key = page.locator("#new-token").inner_text()
    page.get_by_role("button", name="Copy the token").click()
    expect(page.locator("#copy-token-status")).to_have_text("Copied.")
    assert page.evaluate("navigator.clipboard.readText()") == key
    context.close()
    assert blocked == []


def test_without_a_clipboard_the_copy_button_selects_the_new_token_to_copy_by_hand(browser, live_server, log_in):
    context, blocked = _context_with_csp_check(browser, live_server, viewport={"width": 1200, "height": 900})
    context.add_init_script("Object.defineProperty(navigator, 'clipboard', { value: undefined });")
    page = context.new_page()
    log_in(page)
    _token_asked_for(page, name="by hand", password="correct horse battery")
    page.get_by_role("button", name="Copy the token").click()
    expect(page.locator("#copy-token-status")).to_contain_text("Selected")
    assert page.evaluate("String(window.getSelection())") == page.locator("#new-token").inner_text()
    context.close()
    assert blocked == []


def test_without_javascript_a_new_api_token_has_no_copy_button_that_would_do_nothing(page_without_javascript):
    _token_asked_for(page_without_javascript, name="no script", password="correct horse battery")
    expect(page_without_javascript.locator("#new-token")).to_be_visible()
    expect(page_without_javascript.get_by_role("button", name="Copy the token")).to_have_count(0)


def test_on_a_phone_delete_all_stands_apart_from_delete_selected(phone_page, user, digit_png):
    page = phone_page
    for index in range(3):
        services.upload_create(owner=user, file=io.BytesIO(digit_png(index)), source="file")
    page.goto("/history/")
    page.locator("#select-all").check()
    expect(page.locator("#delete-selected")).to_have_text("Delete 3 selected")
    selected = page.locator("#delete-selected").bounding_box()
    everything = page.locator("#delete-all").bounding_box()
    beside = everything["y"] < selected["y"] + selected["height"]
    gap = everything["x"] - selected["x"] - selected["width"] if beside else everything["y"] - selected["y"] - selected["height"]
    assert gap >= (48 if beside else 8), (selected, everything)


def _upload_tried_out_on_the_docs_page(page, field: str, paths: list):
    """Sends files through Swagger UI's Try it out on the upload, under `field`, and gives back the API's answer."""
    page.goto("/api/docs/")
    upload = page.locator("#operations-predictions-predictions_create")
    upload.locator(".opblock-summary").click()
    upload.get_by_role("button", name="Try it out").click()
    row = upload.locator(f"tr[data-property-name={field}]")
    for index, path in enumerate(paths):
        if field == "images":
            row.get_by_role("button", name=re.compile("^Add")).click()
        row.locator("input[type=file]").nth(index).set_input_files(str(path))
    with page.expect_response(lambda r: r.request.method == "POST" and r.url.endswith("/api/v1/predictions/")) as sent:
        upload.get_by_role("button", name="Execute").click()
    answer = sent.value
    expect(upload.locator(".live-responses-table tbody .response-col_status")).to_have_text(str(answer.status))
    return answer


def test_the_docs_pages_try_it_out_uploads_one_image_and_answers_with_its_prediction(logged_in_page, user, digit_png,
                                                                                      tmp_path):
    path = tmp_path / "digit.png"
    path.write_bytes(digit_png(0))

    answer = _upload_tried_out_on_the_docs_page(logged_in_page, "image", [path])

    assert answer.status in (200, 202), answer.text()
    assert len(answer.json()["predictions"]) == 1
    assert Upload.objects.filter(owner=user, source=Upload.Source.API).count() == 1


def test_the_docs_pages_try_it_out_uploads_several_images_as_images(logged_in_page, user, digit_png, tmp_path):
    paths = [tmp_path / f"digit{index}.png" for index in range(2)]
    for index, path in enumerate(paths):
        path.write_bytes(digit_png(index))

    answer = _upload_tried_out_on_the_docs_page(logged_in_page, "images", paths)

    assert answer.status in (200, 202), answer.text()
    assert len(answer.json()["predictions"]) == 2
    assert Upload.objects.filter(owner=user, source=Upload.Source.API).count() == 2


def test_the_account_pages_password_errors_are_read_with_their_own_fields(logged_in_page):
    page = logged_in_page
    _token_asked_for(page, name="scanner", password="not my password")
    expect(page.locator("#id_token_password")).to_have_accessible_description("That is not your password.")

    page.fill("#id_password", "not my password")
    page.get_by_role("button", name="Delete my account").click()
    expect(page.locator("#id_password")).to_have_accessible_description("That is not your password.")
    expect(page.locator("#id_token_password")).to_have_accessible_description("")


def test_without_javascript_the_files_chosen_are_shown_in_the_upload_box(page_without_javascript, digit_png):
    page = page_without_javascript
    # Nothing lists the files without the page's script: the browser's own control has to show them.
    picker = page.locator("#id_files")
    expect(picker).to_have_css("opacity", "1")
    page.set_input_files("#id_files", [{"name": "zero.png", "mimeType": "image/png", "buffer": digit_png(0)}])
    picker_box, zone_box = picker.bounding_box(), page.locator("#dropzone").bounding_box()
    assert picker_box["width"] >= 150 and picker_box["height"] >= 20
    assert zone_box["x"] <= picker_box["x"] and picker_box["x"] + picker_box["width"] <= zone_box["x"] + zone_box["width"]
    # A file dropped beside the control would be opened by the browser in place of the page.
    expect(page.get_by_text("drag and drop")).to_be_hidden()


def test_with_javascript_the_upload_box_offers_drag_and_drop_and_lists_the_files_itself(logged_in_page, digit_png):
    page = logged_in_page
    expect(page.get_by_text("drag and drop")).to_be_visible()
    expect(page.locator("#id_files")).to_have_css("opacity", "0")
    page.set_input_files("#id_files", [{"name": "zero.png", "mimeType": "image/png", "buffer": digit_png(0)}])
    expect(page.locator("#file-list li")).to_have_count(1)


_CONTRAST = """(selector) => {
  const element = document.querySelector(selector);
  const parts = (css) => css.match(/[\\d.]+/g).map(Number);
  let behind = element;
  while (parts(getComputedStyle(behind).backgroundColor)[3] === 0) behind = behind.parentElement;
  const luminance = (css) => {
    const [r, g, b] = parts(css).slice(0, 3).map((v) => v / 255)
      .map((c) => (c <= 0.03928 ? c / 12.92 : ((c + 0.055) / 1.055) ** 2.4));
    return 0.2126 * r + 0.7152 * g + 0.0722 * b;
  };
  const [light, dark] = [luminance(getComputedStyle(element).color), luminance(getComputedStyle(behind).backgroundColor)]
    .sort((a, b) => b - a);
  return (light + 0.05) / (dark + 0.05);
}"""


def test_the_upload_boxs_small_print_keeps_a_readable_contrast_while_the_pointer_is_over_it(logged_in_page):
    page = logged_in_page
    small_print = "#dropzone .muted"
    assert page.evaluate(_CONTRAST, small_print) >= 4.5
    page.hover("#dropzone")
    expect(page.locator("#dropzone")).to_have_css("background-color", "rgb(231, 236, 255)")
    assert page.evaluate(_CONTRAST, small_print) >= 4.5  # WCAG AA for text of its size


def test_on_a_phone_the_headers_links_are_tall_enough_to_tap(phone_page):
    page = phone_page
    targets = page.locator(".site-nav a, .site-nav button")
    expect(targets).to_have_count(4)
    for index in range(4):
        assert targets.nth(index).bounding_box()["height"] >= 44, targets.nth(index).text_content()


def test_the_ten_probabilities_are_a_list_named_by_its_heading(logged_in_page, user, digit_png):
    page = logged_in_page
    _open_a_queued_result(page, user, digit_png(0))
    probabilities = page.get_by_role("list", name="Probability of each digit")
    expect(probabilities.get_by_role("listitem")).to_have_count(10)
    expect(probabilities.get_by_role("listitem").first).to_have_text("0 –")
