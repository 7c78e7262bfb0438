"""The API's Swagger UI in a real headless Chromium: the upload's file fields read and work as files."""
import pytest
from playwright.sync_api import expect

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_the_docs_page_offers_the_uploads_images_as_a_list_of_files_without_a_warning(logged_in_page):
    page = logged_in_page
    console = []
    page.on("console", lambda message: console.append(f"{message.type}: {message.text}"))
    page.goto("/api/docs/")
    upload = page.locator("#operations-predictions-predictions_create")
    upload.locator(".opblock-summary").click()
    upload.get_by_role("button", name="Try it out").click()

    images = upload.locator("tr[data-property-name=images]")
    expect(images.locator(".parameter__type")).to_have_text("array<string($binary)>")
    images.get_by_role("button", name="Add file item").click()
    images.get_by_role("button", name="Add file item").click()
    expect(images.locator("input[type=file]")).to_have_count(2)
    # The single file's field is drawn as before.
    image = upload.locator("tr[data-property-name=image]")
    expect(image.locator(".parameter__type")).to_have_text("string($binary)")
    expect(image.locator("input[type=file]")).to_have_count(1)
    assert [line for line in console if "Could not find component" in line] == []
