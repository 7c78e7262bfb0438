"""The upload page's drawing canvas and its drop box as a mouse, a pen, a finger and a high-density screen use them."""
import pytest
from playwright.sync_api import expect

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

# Where the ink on the canvas lies, in the canvas's own pixels, and the size of the picture it shows it with.
_INK_BOX = (
    "() => { const c = document.getElementById('draw-canvas'); const w = c.width, h = c.height;"
    " const d = c.getContext('2d').getImageData(0, 0, w, h).data; let x0 = w, y0 = h, x1 = -1, y1 = -1;"
    " for (let y = 0; y < h; y++) for (let x = 0; x < w; x++) if (d[(y * w + x) * 4 + 3] > 128) {"
    " x0 = Math.min(x0, x); y0 = Math.min(y0, y); x1 = Math.max(x1, x); y1 = Math.max(y1, y); }"
    " return {ink: x1 >= 0 ? [x0, y0, x1 + 1, y1 + 1] : null, width: c.width,"
    " shown: c.getBoundingClientRect().width - 2 * c.clientLeft}; }"
)


def _picture_corner(page) -> tuple[float, float]:
    """The top left corner of the canvas's picture on the page, inside its border (CSS pixels)."""
    return tuple(page.evaluate(
        "() => { const c = document.getElementById('draw-canvas'); const r = c.getBoundingClientRect();"
        " return [r.left + c.clientLeft, r.top + c.clientTop]; }"
    ))


@pytest.mark.parametrize("density", [1, 2])
def test_a_tap_leaves_its_dot_right_under_the_pointer_and_sharp_on_a_high_density_screen(
    browser, live_server, log_in, density
):
    context = browser.new_context(base_url=live_server.url, viewport={"width": 1200, "height": 900},
                                  device_scale_factor=density)
    try:
        page = context.new_page()
        log_in(page)
        left, top = _picture_corner(page)
        seen = page.evaluate(_INK_BOX)
        # A pixel of the canvas's own for each pixel of the screen it is shown on: none is stretched into a blur.
        assert seen["width"] >= seen["shown"] * density
        per_css_pixel = seen["width"] / seen["shown"]
        # Taps near two corners of the picture: each dot is centred on where the pointer was.
        for x, y in [(30, 30), (240, 250)]:
            page.click("#canvas-clear")
            page.mouse.click(left + x, top + y)
            x0, y0, x1, y1 = page.evaluate(_INK_BOX)["ink"]
            assert abs((x0 + x1) / 2 - x * per_css_pixel) <= density, (x, y, (x0, y0, x1, y1))
            assert abs((y0 + y1) / 2 - y * per_css_pixel) <= density, (x, y, (x0, y0, x1, y1))
    finally:
        context.close()


def test_a_drawing_made_on_a_high_density_screen_is_sent_at_the_drawings_own_size(
    browser, live_server, log_in
):
    context = browser.new_context(base_url=live_server.url, viewport={"width": 1200, "height": 900},
                                  device_scale_factor=2)
    try:
        page = context.new_page()
        log_in(page)
        left, top = _picture_corner(page)
        page.mouse.move(left + 140, top + 40)
        page.mouse.down()
        page.mouse.move(left + 140, top + 240, steps=8)
        page.mouse.up()
        sent = page.evaluate(
            "() => new Promise(resolve => { document.getElementById('canvas-form').addEventListener('submit',"
            " event => { event.preventDefault(); const image = new Image();"
            " image.onload = () => resolve([image.width, image.height]);"
            " image.src = document.getElementById('id_canvas').value; }); document.getElementById('canvas-submit').click(); })"
        )
        assert sent == [280, 280]
    finally:
        context.close()


def test_a_right_click_on_the_canvas_leaves_no_ink_and_drawing_goes_on_after_it(logged_in_page):
    page = logged_in_page
    left, top = _picture_corner(page)
    page.mouse.click(left + 140, top + 140, button="right")
    assert page.evaluate(_INK_BOX)["ink"] is None
    expect(page.locator("#canvas-undo")).to_be_disabled()
    page.mouse.move(left + 60, top + 60)
    page.mouse.down()
    page.mouse.move(left + 200, top + 200, steps=6)
    page.mouse.up()
    assert page.evaluate(_INK_BOX)["ink"] is not None
    expect(page.locator("#canvas-undo")).to_be_enabled()


def test_a_stroke_whose_pointer_capture_is_lost_ends_so_the_next_stroke_and_undo_work(logged_in_page):
    page = logged_in_page
    left, top = _picture_corner(page)
    page.mouse.move(left + 60, top + 60)
    page.mouse.down()
    page.mouse.move(left + 200, top + 60, steps=4)
    # The canvas loses the pointer mid-stroke (another window took the focus), which is then released off it.
    page.evaluate(
        "() => { const c = document.getElementById('draw-canvas');"
        " for (const id of [0, 1, 2]) { try { c.releasePointerCapture(id); } catch (e) {} } }"
    )
    page.mouse.move(left + 600, top + 60, steps=2)
    page.mouse.up()
    page.mouse.move(left + 60, top + 220)
    page.mouse.down()
    page.mouse.move(left + 200, top + 220, steps=4)
    page.mouse.up()
    x0, y0, x1, y1 = page.evaluate(_INK_BOX)["ink"]
    assert y1 > 200  # the second stroke is there
    page.click("#canvas-undo")
    x0, y0, x1, y1 = page.evaluate(_INK_BOX)["ink"]
    assert y1 < 100  # and Undo takes it back, leaving the first


def test_clear_pressed_mid_stroke_empties_the_canvas_and_the_stroke_goes_on_as_the_drawing(logged_in_page):
    page = logged_in_page
    errors = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    left, top = _picture_corner(page)
    page.mouse.move(left + 60, top + 60)
    page.mouse.down()
    page.mouse.move(left + 200, top + 60, steps=4)
    # Clear pressed while the stroke goes on: a second finger on the button, or Enter with the mouse held.
    page.evaluate("() => document.getElementById('canvas-clear').click()")
    page.mouse.move(left + 200, top + 220, steps=4)
    page.mouse.up()

    x0, y0, x1, y1 = page.evaluate(_INK_BOX)["ink"]
    assert errors == []
    # What was drawn before Clear is gone; what was drawn after it is the drawing, hint hidden and Undo at hand.
    assert x0 > 150 and y1 > 200
    expect(page.locator("#canvas-hint")).to_be_hidden()
    page.click("#canvas-undo")
    assert page.evaluate(_INK_BOX)["ink"] is None
    expect(page.locator("#canvas-hint")).to_be_visible()


def _drop(page, files: list[str], *, at: str) -> None:
    """Drop ``files`` from the desktop on the middle of the element ``at``, as the browser itself gets a drop."""
    box = page.locator(at).bounding_box()
    x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    cdp = page.context.new_cdp_session(page)
    data = {"items": [], "files": files, "dragOperationsMask": 1}
    for kind in ("dragEnter", "dragOver", "drop"):
        cdp.send("Input.dispatchDragEvent", {"type": kind, "x": x, "y": y, "data": data})


def test_a_file_dropped_beside_the_upload_box_is_not_opened_by_the_browser_and_one_dropped_on_it_is_chosen(
    logged_in_page, digit_png, tmp_path
):
    page = logged_in_page
    path = tmp_path / "seven.png"
    path.write_bytes(digit_png(7))
    _drop(page, [str(path)], at="#draw-heading")
    _drop(page, [str(path)], at="h1")
    page.wait_for_timeout(500)
    assert [tab.url for tab in page.context.pages] == [page.url]  # no tab of its own showing the file
    expect(page.locator("#file-list li")).to_have_count(0)
    _drop(page, [str(path)], at="#dropzone")
    expect(page.locator("#file-list li")).to_have_count(1)
    assert [tab.url for tab in page.context.pages] == [page.url]


def test_a_drawing_stays_whole_and_sharp_when_the_screens_density_changes_under_it(logged_in_page):
    page = logged_in_page
    left, top = _picture_corner(page)
    page.mouse.move(left + 60, top + 140)
    page.mouse.down()
    page.mouse.move(left + 220, top + 140, steps=6)
    page.mouse.up()
    before = page.evaluate(_INK_BOX)
    # The page zoomed to 200%: half as many CSS pixels across the window, each two of the screen's.
    cdp = page.context.new_cdp_session(page)
    cdp.send("Emulation.setDeviceMetricsOverride",
             {"width": 600, "height": 450, "deviceScaleFactor": 2, "mobile": False})
    for _ in range(50):
        after = page.evaluate(_INK_BOX)
        if after["width"] == 560:
            break
        page.wait_for_timeout(100)
    assert after["width"] == 560
    assert [round(edge / 2) for edge in after["ink"]] == pytest.approx(before["ink"], abs=1)
    expect(page.locator("#canvas-undo")).to_be_enabled()


def test_a_finger_draws_on_a_phone_without_scrolling_the_page_and_the_ink_lies_under_it(
    browser, live_server, log_in
):
    context = browser.new_context(base_url=live_server.url, viewport={"width": 360, "height": 640},
                                  device_scale_factor=3, is_mobile=True, has_touch=True)
    try:
        page = context.new_page()
        log_in(page)
        page.locator("#draw-canvas").scroll_into_view_if_needed()
        scrolled = page.evaluate("window.scrollY")
        left, top = _picture_corner(page)
        shown = page.evaluate(_INK_BOX)["shown"]
        cdp = context.new_cdp_session(page)
        touch = lambda kind, points: cdp.send("Input.dispatchTouchEvent", {"type": kind, "touchPoints": points})
        # A finger drawing a "1" from the top of the canvas to its bottom: a swipe that would otherwise scroll.
        touch("touchStart", [{"x": left + shown / 2, "y": top + 20}])
        for step in range(1, 11):
            touch("touchMove", [{"x": left + shown / 2, "y": top + 20 + step * (shown - 40) / 10}])
        touch("touchEnd", [])
        assert page.evaluate("window.scrollY") == scrolled
        seen = page.evaluate(_INK_BOX)
        assert seen["width"] >= seen["shown"] * 3
        x0, y0, x1, y1 = seen["ink"]
        per_css_pixel = seen["width"] / seen["shown"]
        assert abs((x0 + x1) / 2 / per_css_pixel - shown / 2) <= 1
        assert y0 / per_css_pixel < 20 and y1 / per_css_pixel > shown - 20
        expect(page.locator("#canvas-submit")).to_be_enabled()
    finally:
        context.close()
