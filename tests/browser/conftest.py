"""A real headless Chromium driven by Playwright against pytest-django's live server."""
import contextlib
import json
import os
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
# Playwright's sync API runs an event loop in this thread; Django's async-safety check would refuse the ORM.
os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")


@pytest.fixture(scope="session")
def playwright():
    if not CHROMIUM.exists():
        pytest.skip("Chromium is not installed at /usr/bin/chromium (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        yield playwright


def _launch(playwright, **options):
    return playwright.chromium.launch(
        executable_path=str(CHROMIUM),
        args=ARGS,
        **options,
    )


@pytest.fixture(scope="session")
def browser(playwright):
    browser = _launch(playwright)
    yield browser
    browser.close()


@pytest.fixture(scope="session")
def browser_with_back_forward_cache(playwright):
    """A Chromium that keeps the pages left in memory, to show them again at once on Back, as browsers do by default
    (Playwright turns that off)."""
    browser = _launch(playwright, ignore_default_args=["--disable-back-forward-cache"])
    yield browser
    browser.close()


@contextlib.contextmanager
def watched_page(context):
    """A new page of ``context``, closed with it at the end; anything the site's Content-Security-Policy blocked
    would be a broken page, so every test checks for it."""
    page = context.new_page()
    page.set_default_timeout(20_000)
    blocked = []
    page.on("console", lambda message: blocked.append(message.text) if "Content Security Policy" in message.text
            else None)
    yield page
    context.close()
    assert blocked == []


@pytest.fixture
def page(browser, live_server):
    with watched_page(browser.new_context(viewport={"width": 1200, "height": 900}, base_url=live_server.url)) as page:
        yield page


def log_in_as_alice(page, live_server) -> None:
    page.goto("/accounts/login/")
    page.fill("#id_username", "alice")
    page.fill("#id_password", "correct horse battery")
    page.click("button[type=submit]")
    # The exact home page: a pattern like "**/" would match the log-in page itself and return at once.
    page.wait_for_url(f"{live_server.url}/")


@pytest.fixture
def log_in(live_server, user):
    """Logs a page of any browser context in as alice."""
    return lambda page: log_in_as_alice(page, live_server)


@pytest.fixture
def logged_in_page(page, user, live_server):
    """A page on the home page in a session of alice's, made as Django's test client makes one: one page load where
    the log-in form takes three. The tests of logging in take the form (``log_in``)."""
    from django.conf import settings
    from django.test import Client

    client = Client()
    client.force_login(user)
    session = client.cookies[settings.SESSION_COOKIE_NAME].value
    page.context.add_cookies([{"name": settings.SESSION_COOKIE_NAME, "value": session, "url": live_server.url}])
    page.goto("/")
    return page


@pytest.fixture
def page_without_javascript(browser, live_server, user):
    context = browser.new_context(viewport={"width": 1200, "height": 900}, base_url=live_server.url,
                                  java_script_enabled=False)
    with watched_page(context) as page:
        log_in_as_alice(page, live_server)
        yield page


@pytest.fixture
def large_text_page(playwright, live_server, user, tmp_path):
    """A page logged in as alice on a desktop screen, in a Chromium whose default text size is twice the usual (32 px),
    as a reader who needs large text sets it in the browser's settings: what is sized in rem or em grows with it."""
    profile = tmp_path / "profile"
    (profile / "Default").mkdir(parents=True)
    (profile / "Default" / "Preferences").write_text(json.dumps({"webkit": {"webprefs": {"default_font_size": 32}}}))
    context = playwright.chromium.launch_persistent_context(
        str(profile), executable_path=str(CHROMIUM), args=ARGS, viewport={"width": 1280, "height": 900},
        base_url=live_server.url,
    )
    with watched_page(context) as page:
        log_in_as_alice(page, live_server)
        yield page
