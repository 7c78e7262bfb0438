"""The upload page's own checks of chosen files, in a real headless Chromium: they agree with the server's."""
import io

import pytest
from PIL import Image
from playwright.sync_api import expect

from classifier.models import Upload

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

NOT_AN_IMAGE = "is not a PNG, JPEG, GIF, WEBP or BMP image."


def _digit(fmt: str) -> bytes:
    image = Image.new("RGB", (64, 64), "white")
    image.paste("black", (28, 12, 36, 52))
    out = io.BytesIO()
    image.save(out, format=fmt)
    return out.getvalue()


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "GIF", "WEBP", "BMP"])
def test_an_image_the_server_reads_is_taken_by_its_content_whatever_its_name_and_type_say(logged_in_page, fmt):
    page = logged_in_page
    # As a phone or a chat app names and types a picture it converted.
    page.set_input_files("#id_files", [{"name": "photo.heic", "mimeType": "image/heic", "buffer": _digit(fmt)}])
    expect(page.locator("#file-summary")).to_have_text("1 image chosen")
    expect(page.locator("#file-list li.refused")).to_have_count(0)
    expect(page.locator("#file-error")).to_be_hidden()
    expect(page.locator("#file-submit")).to_be_enabled()


def test_a_jpeg_named_heic_is_sent_and_stored_as_the_jpeg_it_is(logged_in_page):
    page = logged_in_page
    page.set_input_files("#id_files", [{"name": "photo.heic", "mimeType": "image/heic", "buffer": _digit("JPEG")}])
    expect(page.locator("#file-submit")).to_be_enabled()
    page.click("#file-submit")
    page.wait_for_url("**/predictions/*/")
    upload = Upload.objects.get()
    assert (upload.original_name, upload.format) == ("photo.heic", "JPEG")


def test_a_file_named_and_typed_as_a_png_that_holds_no_image_is_refused_before_anything_is_sent(logged_in_page):
    page = logged_in_page
    page.set_input_files("#id_files", [
        {"name": "zero.png", "mimeType": "image/png", "buffer": _digit("PNG")},
        {"name": "notes.png", "mimeType": "image/png", "buffer": b"not a picture, though named like one"},
    ])
    expect(page.locator("#file-error")).to_have_text(f"“notes.png” {NOT_AN_IMAGE}")
    expect(page.locator("#file-summary")).to_have_text("2 images chosen, 1 refused")
    expect(page.locator("#file-list li.refused")).to_have_text("notes.png · 1 KB (refused)")
    expect(page.locator("#file-submit")).to_be_disabled()


def test_a_picture_in_a_format_the_server_does_not_read_is_refused_whatever_its_name(logged_in_page):
    page = logged_in_page
    page.set_input_files("#id_files", [{"name": "scan.png", "mimeType": "image/png", "buffer": _digit("TIFF")}])
    expect(page.locator("#file-error")).to_have_text(f"“scan.png” {NOT_AN_IMAGE}")
    expect(page.locator("#file-submit")).to_be_disabled()


def test_an_empty_file_is_listed_as_empty_and_refused_in_the_servers_words(logged_in_page):
    page = logged_in_page
    page.set_input_files("#id_files", [
        {"name": "zero.png", "mimeType": "image/png", "buffer": _digit("PNG")},
        {"name": "empty.png", "mimeType": "image/png", "buffer": b""},
    ])
    expect(page.locator("#file-list li.refused")).to_have_text("empty.png · 0 bytes (refused)")
    expect(page.locator("#file-error")).to_have_text("“empty.png” is empty.")
    expect(page.locator("#file-summary")).to_have_text("2 images chosen, 1 refused")
    expect(page.locator("#file-submit")).to_be_disabled()
    expect(page.locator("#file-leave-out")).to_have_text("Leave out the refused file")

    page.click("#file-leave-out")
    expect(page.locator("#file-list li")).to_have_count(1)
    expect(page.locator("#file-error")).to_be_hidden()
    expect(page.locator("#file-submit")).to_be_enabled()


def test_the_server_says_the_same_of_an_empty_file_as_the_page(client, user):
    client.force_login(user)
    empty = io.BytesIO(b"")
    empty.name = "empty.png"
    response = client.post("/", {"files": [empty]})
    assert "“empty.png” is empty." in response.content.decode()
    assert not Upload.objects.exists()


def test_upload_pressed_with_no_file_chosen_sends_nothing_and_says_to_choose_one(logged_in_page):
    page = logged_in_page
    posts = []
    page.on("request", lambda request: posts.append(request.url) if request.method == "POST" else None)
    # As a keyboard user presses it: the button is there to find before anything is chosen.
    page.focus("#file-submit")
    page.keyboard.press("Enter")
    error = page.locator("#file-error")
    expect(error).to_have_text("Choose at least one image first.")
    expect(error).to_have_attribute("role", "alert")
    # Back on the control that mends it, which names the message as its description.
    expect(page.locator("#id_files")).to_be_focused()
    expect(page.locator("#id_files")).to_have_accessible_description("Choose at least one image first.")
    page.wait_for_timeout(300)
    assert posts == []
    assert Upload.objects.count() == 0
    # A file chosen, the message goes and the button sends it.
    page.set_input_files("#id_files", [{"name": "zero.png", "mimeType": "image/png", "buffer": _digit("PNG")}])
    expect(error).to_be_hidden()
    page.click("#file-submit")
    page.wait_for_url("**/predictions/*/")
    assert Upload.objects.get().original_name == "zero.png"
