"""Log-in, log-out, sign-up and password reset pages, the skip link every page opens with, the times on the account
page, and that everything else needs a logged-in user."""
import io
import re

import pytest
from django.urls import reverse

from tests.accounts.conftest import confirmation_path
from tests.caches import UNREACHABLE_REDIS_CACHE

pytestmark = pytest.mark.django_db


def test_the_login_page_is_public_and_renders_a_form(client):
    response = client.get("/accounts/login/")
    assert response.status_code == 200
    assert 'name="username"' in response.content.decode() and 'name="password"' in response.content.decode()


def test_logging_in_leads_to_the_upload_page(client, user):
    response = client.post("/accounts/login/", {"username": "alice", "password": "correct horse battery"})
    assert response.status_code == 302 and response["Location"] == "/"
    assert client.get("/").status_code == 200


def test_a_wrong_password_shows_an_error(client, user):
    response = client.post("/accounts/login/", {"username": "alice", "password": "nope"})
    assert response.status_code == 200
    assert "correct username and password" in response.content.decode()


def test_while_locked_out_the_right_password_shows_only_the_lockout_message(client, user, settings):
    for _ in range(settings.LOGIN_FAILURE_LIMIT):
        client.post("/accounts/login/", {"username": "alice", "password": "nope"})
    response = client.post("/accounts/login/", {"username": "alice", "password": "correct horse battery"})
    page = response.content.decode()
    assert response.status_code == 429
    assert "Too many failed log-in attempts" in page
    assert "correct username and password" not in page
    assert 'value="alice"' in page  # the name stays filled in for the next try


def test_while_locked_out_the_name_typed_with_a_space_after_it_or_full_width_still_gets_the_lockout_message(
        client, user, settings):
    for _ in range(settings.LOGIN_FAILURE_LIMIT):
        client.post("/accounts/login/", {"username": "alice", "password": "nope"})
    # A space a phone keyboard adds after the word, a full-width letter from an input method: the form reads both as
    # "alice", and so must the lockout's
    # answer, or its owner, typing the right password, is told that it is wrong.
    for typed in ("alice ", "\uff41lice"):
        response = client.post("/accounts/login/", {"username": typed, "password": "correct horse battery"})
        page = response.content.decode()
        assert response.status_code == 429, typed
        assert "Too many failed log-in attempts" in page and "correct username and password" not in page


def test_a_form_refused_for_its_csrf_token_says_nothing_was_stored_and_to_send_it_again(user, digit_png):
    from django.test import Client

    from classifier.models import Upload

    browser = Client(enforce_csrf_checks=True)
    browser.force_login(user)
    browser.get("/")  # the page sets the cookie its form's token goes with
    upload = io.BytesIO(digit_png(0))
    upload.name = "seven.png"
    # The token the page was sent with no longer matches: the visitor logged out and in from another tab.
    response = browser.post("/", {"files": [upload], "csrfmiddlewaretoken": "x" * 64})
    page = response.content.decode()
    assert response.status_code == 403
    assert "That form had expired" in page and "Nothing was stored" in page and "send it again" in page
    assert 'class="site-header"' in page  # the site's page, not Django's bare one
    assert not Upload.objects.exists()


def test_a_form_sent_without_the_sites_cookie_says_cookies_are_needed_not_that_it_expired(user):
    from django.test import Client

    browser = Client(enforce_csrf_checks=True)
    page = browser.get("/accounts/login/").content.decode()
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page).group(1)
    browser.cookies.clear()  # blocked for the site, or cleared since the page opened
    response = browser.post("/accounts/login/", {"username": "alice", "password": "correct horse battery",
                                                 "csrfmiddlewaretoken": token})
    page = response.content.decode()
    assert response.status_code == 403
    assert "This site needs cookies" in page and "Allow cookies for this site" in page and "Nothing was stored" in page
    assert "expired" not in page and "files you had chosen" not in page
    assert "_auth_user_id" not in browser.session


def test_logging_in_records_when_on_the_site_and_in_the_admin(client, user, staff_user):
    from django.utils import timezone

    before = timezone.now()
    assert client.post("/accounts/login/", {"username": "alice", "password": "correct horse battery"}
                       ).status_code == 302
    assert client.post("/admin/login/", {"username": "staff", "password": "correct horse battery",
                                         "next": "/admin/"}).status_code == 302
    for account in (user, staff_user):
        account.refresh_from_db()
        assert account.last_login is not None and account.last_login >= before, account


def test_signing_up_creates_an_account_and_logs_in(client, django_user_model):
    response = client.post(
        "/accounts/signup/",
        {"username": "carol", "password1": "a much longer passphrase", "password2": "a much longer passphrase"},
    )
    assert response.status_code == 302
    assert django_user_model.objects.filter(username="carol").exists()
    assert client.get("/").status_code == 200


def test_a_visitor_sent_to_log_in_who_signs_up_instead_goes_on_to_the_page_they_asked_for(client):
    sent = client.get("/accounts/")["Location"]
    assert sent == "/accounts/login/?next=/accounts/"
    signup = re.search(r'href="(/accounts/signup/[^"]*)">Sign up</a></p>', client.get(sent).content.decode()).group(1)
    assert signup == "/accounts/signup/?next=/accounts/"
    page = client.get(signup).content.decode()
    assert '<input type="hidden" name="next" value="/accounts/">' in page
    # Sent back for a correction, it still knows; and its "Log in" link passes it on too.
    refused = client.post("/accounts/signup/", {"username": "carol", "password1": "a", "password2": "b",
                                                "next": "/accounts/"}).content.decode()
    assert '<input type="hidden" name="next" value="/accounts/">' in refused
    assert 'href="/accounts/login/?next=/accounts/"' in refused

    made = client.post("/accounts/signup/", {"username": "carol", "password1": "a much longer passphrase",
                                             "password2": "a much longer passphrase", "next": "/accounts/"})
    assert made.status_code == 302 and made["Location"] == "/accounts/"


def test_a_sign_up_never_leads_to_another_site_or_back_to_its_own_form(client):
    for index, elsewhere in enumerate(("https://evil.example/", "//evil.example/", "/accounts/signup/")):
        made = client.post("/accounts/signup/", {"username": f"carol{index}", "password1": "a much longer passphrase",
                                                 "password2": "a much longer passphrase", "next": elsewhere})
        assert made.status_code == 302 and made["Location"] == "/", elsewhere
        client.logout()


def test_the_signup_page_shows_field_errors(client):
    response = client.post("/accounts/signup/", {"username": "dave", "password1": "x", "password2": "y"})
    assert response.status_code == 400
    assert "didn" in response.content.decode()  # "The two password fields didn’t match."


def test_every_id_a_signup_field_is_described_by_exists_so_screen_readers_read_its_rules_and_errors(client):
    for response in (client.get("/accounts/signup/"),
                     client.post("/accounts/signup/", {"username": "", "password1": "x", "password2": "y"})):
        page = response.content.decode()
        described = {name for value in re.findall(r'aria-describedby="([^"]+)"', page) for name in value.split()}
        assert described, "no field is described"
        assert all(f'id="{name}"' in page for name in described), described


def test_logging_out_takes_a_post(client, user):
    client.force_login(user)
    assert "Log out" in client.get("/").content.decode()
    response = client.post("/accounts/logout/")
    assert response.status_code == 302
    assert client.get("/").status_code == 302


def test_the_log_in_page_a_log_out_leads_to_says_it_worked(client, user):
    client.force_login(user)
    page = client.post("/accounts/logout/", follow=True).content.decode()
    assert "You are logged out." in page and "<h1>Log in</h1>" in page
    # Once only, and never to a visitor who was not signed in.
    assert "You are logged out." not in client.get("/accounts/login/").content.decode()
    assert "You are logged out." not in client.post("/accounts/logout/", follow=True).content.decode()


def test_opening_the_log_out_address_offers_a_log_out_button_and_logs_no_one_out(client, user):
    client.force_login(user)
    response = client.get("/accounts/logout/")
    page = response.content.decode()
    assert response.status_code == 200
    assert "signed in as <strong>alice</strong>" in page
    form = re.search(r'<form method="post" action="/accounts/logout/">(.*?)</form>', page, re.S).group(1)
    assert 'name="csrfmiddlewaretoken"' in form and ">Log out</button>" in form
    assert client.get("/").status_code == 200  # still signed in: a link from anywhere must not log anyone out


def test_the_log_out_page_tells_a_visitor_who_is_not_signed_in_so_and_offers_to_log_in(client):
    response = client.get("/accounts/logout/")
    page = response.content.decode()
    assert response.status_code == 200
    assert "You are not signed in" in page and 'href="/accounts/login/"' in page
    assert 'action="/accounts/logout/"' not in page
    assert client.post("/accounts/logout/")["Location"] == "/accounts/login/"  # nothing to undo: on to log in


def test_the_button_on_the_log_out_page_logs_out(user):
    from django.test import Client

    browser = Client(enforce_csrf_checks=True)
    browser.force_login(user)
    page = browser.get("/accounts/logout/").content.decode()
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page).group(1)
    response = browser.post("/accounts/logout/", {"csrfmiddlewaretoken": token})
    assert response.status_code == 302 and response["Location"] == "/accounts/login/"
    assert browser.get("/").status_code == 302


def test_every_page_opens_with_a_skip_link_to_its_main_content(client, user):
    def pages():
        yield from (client.get(path) for path in ("/accounts/login/", "/accounts/logout/"))
        client.force_login(user)
        yield from (client.get(path) for path in ("/", "/history/", "/accounts/", "/accounts/logout/"))

    for response in pages():
        assert response.status_code == 200
        page = response.content.decode()
        first = re.search(r"<(a|button|input|select|textarea)\b[^>]*>", page.split("<body", 1)[1]).group(0)
        assert first == '<a class="skip-link" href="#content">', response.request["PATH_INFO"]
        assert '<main class="container" id="content" tabindex="-1">' in page


def test_token_times_on_the_account_page_name_their_zone_and_carry_the_instant_for_the_browser(
    client, user, settings
):
    import datetime as dt

    from accounts import services
    from accounts.models import ApiToken

    settings.API_TOKEN_MAX_AGE_DAYS = 365
    token, _ = services.api_token_create(user=user, name="scanner")
    made = dt.datetime(2026, 1, 15, 12, 10, 33, tzinfo=dt.UTC)
    ApiToken.objects.filter(pk=token.pk).update(created_at=made, last_used_at=made + dt.timedelta(hours=2))
    client.force_login(user)
    page = client.get("/accounts/").content.decode()
    assert 'made <time datetime="2026-01-15T12:10:33+00:00" data-local>2026-01-15 12:10 UTC</time>' in page
    assert 'last used <time datetime="2026-01-15T14:10:33+00:00" data-local>2026-01-15 14:10 UTC</time>' in page
    assert '<time datetime="2027-01-15T12:10:33+00:00" data-local>2027-01-15 12:10 UTC</time>' in page


def test_anonymous_visitors_are_sent_to_the_login_page(client):
    response = client.get("/history/")
    assert response.status_code == 302 and response["Location"] == "/accounts/login/?next=/history/"


def test_with_sign_up_closed_the_page_is_404_and_no_page_links_to_it(client, settings, django_user_model):
    settings.SIGNUP_ENABLED = False
    assert client.get("/accounts/signup/").status_code == 404
    response = client.post("/accounts/signup/", {"username": "mallory", "password1": "x9!kQ2#vLp", "password2": "x9!kQ2#vLp"})
    assert response.status_code == 404 and not django_user_model.objects.filter(username="mallory").exists()
    assert b"/accounts/signup/" not in client.get("/accounts/login/").content


def test_the_samples_owners_name_cannot_be_taken_at_sign_up(client, django_user_model):
    response = client.post("/accounts/signup/", {"username": "Samples", "password1": "x9!kQ2#vLp", "password2": "x9!kQ2#vLp"})
    assert response.status_code == 400 and "reserved" in response.content.decode()
    assert not django_user_model.objects.filter(username__iexact="samples").exists()


def test_one_address_may_create_only_so_many_accounts_an_hour(client, settings, django_user_model):
    settings.SIGNUP_THROTTLE_RATE = "2/hour"

    def sign_up(name: str, address: str):
        visitor = type(client)(REMOTE_ADDR=address)
        return visitor.post("/accounts/signup/", {"username": name, "password1": "x9!kQ2#vLp", "password2": "x9!kQ2#vLp"})

    assert sign_up("first", "203.0.113.9").status_code == 302
    assert sign_up("second", "203.0.113.9").status_code == 302
    refused = sign_up("third", "203.0.113.9")
    assert refused.status_code == 429 and "Too many sign-ups" in refused.content.decode()
    assert 0 < int(refused["Retry-After"]) <= 3600
    assert not django_user_model.objects.filter(username="third").exists()
    # Another address has its own allowance.
    assert sign_up("fourth", "198.51.100.7").status_code == 302
    assert sign_up("fifth", "198.51.100.7").status_code == 302


def test_a_sign_up_refused_for_its_address_keeps_what_was_typed_but_the_passwords_and_says_how_long_to_wait(
    client, settings
):
    settings.SIGNUP_THROTTLE_RATE = "1/minute"
    fields = {"username": "first", "email": "first@example.com", "password1": "x9!kQ2#vLp", "password2": "x9!kQ2#vLp"}
    assert client.post("/accounts/signup/", fields).status_code == 302
    client.logout()
    refused = client.post("/accounts/signup/", {**fields, "username": "second", "email": "second@example.com"})
    page = refused.content.decode()
    assert refused.status_code == 429 and "try again in 1 minute." in page
    assert 'value="second"' in page and 'value="second@example.com"' in page and "x9!kQ2#vLp" not in page


def test_an_ipv6_client_signs_up_by_its_whole_64_block(client, settings, django_user_model):
    settings.SIGNUP_THROTTLE_RATE = "2/hour"
    answers = [
        type(client)(REMOTE_ADDR=f"2001:db8:0:1::{n}").post(
            "/accounts/signup/", {"username": f"user{n}", "password1": "x9!kQ2#vLp", "password2": "x9!kQ2#vLp"}
        ).status_code
        for n in range(1, 5)
    ]
    assert answers == [302, 302, 429, 429]
    assert django_user_model.objects.filter(username__startswith="user").count() == 2


def test_a_name_already_taken_in_any_case_is_refused_with_a_message_not_an_error(client, django_user_model):
    django_user_model.objects.create_user(username="alice", password="x9!kQ2#vLp")
    for name in ("alice", "ALICE"):
        response = client.post("/accounts/signup/", {"username": name, "password1": "x9!kQ2#vLp", "password2": "nope"})
        assert response.status_code == 400 and "already exists" in response.content.decode()
    django_user_model.objects.create_user(username="samples")
    taken = client.post("/accounts/signup/", {"username": "samples", "password1": "x9!kQ2#vLp", "password2": "x9!kQ2#vLp"})
    assert taken.status_code == 400 and "reserved" in taken.content.decode()


def test_refused_sign_ups_spend_a_tenth_of_one_so_names_cannot_be_probed_without_limit(client, settings, django_user_model):
    settings.SIGNUP_THROTTLE_RATE = "2/hour"
    django_user_model.objects.create_user(username="alice", password="x9!kQ2#vLp")
    prober = type(client)(REMOTE_ADDR="203.0.113.50")

    def probe(name: str):
        return prober.post("/accounts/signup/", {"username": name, "password1": "x9!kQ2#vLp", "password2": "x9!kQ2#vLp"})

    answers = [probe("alice").status_code for _ in range(15)]
    refused_from = answers.index(429)
    assert 10 <= refused_from <= 11 and set(answers[:refused_from]) == {400} and set(answers[refused_from:]) == {429}
    # From then on a free name is refused alike, unread: refusals say nothing of which names are taken.
    free = probe("bob")
    assert free.status_code == 429 and "already exists" not in free.content.decode()
    assert not django_user_model.objects.filter(username="bob").exists()


def test_sign_up_still_works_while_the_cache_is_unreachable(client, django_user_model):
    from django.test import override_settings

    unreachable = UNREACHABLE_REDIS_CACHE
    with override_settings(CACHES={"default": unreachable}):
        response = client.post("/accounts/signup/", {"username": "carol", "password1": "x9!kQ2#vLp",
                                                     "password2": "x9!kQ2#vLp"})
    assert response.status_code == 302 and django_user_model.objects.filter(username="carol").exists()




def test_while_the_cache_counting_failed_log_ins_is_unreachable_log_in_says_so_and_checks_no_password(user, staff_user):
    from django.test import Client, override_settings

    client = Client()
    with override_settings(CACHES={"default": UNREACHABLE_REDIS_CACHE}):
        response = client.post("/accounts/login/", {"username": "alice", "password": "correct horse battery"})
        page = response.content.decode()
        assert response.status_code == 503 and response["Retry-After"] == "60"
        assert "Log-in is unavailable for a moment" in page and "correct username and password" not in page
        assert 'value="alice"' in page
        # Nor does the admin's form check one uncounted: guesses would go unlimited while the cache is down.
        admin = client.post("/admin/login/?next=/admin/", {"username": "staff", "password": "correct horse battery"})
        assert admin.status_code == 200
    assert client.get("/accounts/").status_code == 302  # signed in nowhere
    assert client.post("/accounts/login/", {"username": "alice", "password": "correct horse battery"}
                       ).status_code == 302


def test_a_signed_in_visitor_sent_to_log_in_with_the_log_in_page_as_next_goes_to_the_default_page(client, user):
    client.force_login(user)
    for next_url in ("/accounts/login/", "/accounts/login/?next=/history/"):
        response = client.get("/accounts/login/", {"next": next_url})
        assert response.status_code == 302 and response["Location"] == reverse("classifier:upload")


# Password reset by email.

RESET = "/accounts/password/reset/"
NEW_PASSWORD = "a fresh passphrase 42"


@pytest.fixture
def alice(confirmed_user):
    return confirmed_user(username="alice", password="correct horse battery",
                          email="alice@example.com")


def _reset_link(message) -> str:
    from django.conf import settings

    return re.search(re.escape(settings.SITE_URL) + r"(/accounts/password/reset/\S+/\S+/)", message.body).group(1)


def _set_password_by_link(visitor, link: str, password: str = NEW_PASSWORD):
    form_page = visitor.get(link)
    assert form_page.status_code == 302  # to a page without the token, which the Referer header could leak
    return visitor.post(form_page["Location"], {"new_password1": password, "new_password2": password})


def _set_password_url(visitor) -> str:
    from django.core import mail

    return visitor.get(_reset_link(mail.outbox[-1]))["Location"]


def _logs_in(username: str, password: str) -> bool:
    from django.test import Client

    return Client().post("/accounts/login/", {"username": username, "password": password}).status_code == 302


def test_the_log_in_page_links_to_the_password_reset_page(client):
    page = client.get("/accounts/login/").content.decode()
    assert f'<a href="{RESET}">Forgot your password?</a>' in page
    reset = client.get(RESET)
    assert reset.status_code == 200 and 'name="email"' in reset.content.decode()


def test_a_reset_link_sent_by_email_sets_a_new_password_and_the_old_one_stops_working(
    client, alice, settings, ask_reset
):
    from django.core import mail

    settings.PASSWORD_RESET_TIMEOUT = 3600
    settings.DEFAULT_FROM_EMAIL = "digits@example.com"
    settings.SITE_URL = "https://digits.example.com"
    # Any case: addresses are matched as people type them.
    asked = ask_reset(client, "Alice@Example.com")
    assert asked.status_code == 302 and asked["Location"] == "/accounts/password/reset/sent/"
    assert "Check your email" in client.get(asked["Location"]).content.decode()
    (message,) = mail.outbox
    assert message.to == ["alice@example.com"] and message.from_email == "digits@example.com"
    assert message.subject == "Reset your password on digits.example.com"
    assert '"alice"' in message.body and "within 1 hour" in message.body

    done = _set_password_by_link(client, _reset_link(message))
    assert done.status_code == 302 and done["Location"] == "/accounts/password/reset/done/"
    assert "Your password was changed" in client.get(done["Location"]).content.decode()
    assert _logs_in("alice", NEW_PASSWORD)
    assert not _logs_in("alice", "correct horse battery")


def test_a_reset_link_sets_the_new_password_while_the_cache_counting_failed_log_ins_is_unreachable(client, user):
    from django.test import override_settings
    from django.utils.encoding import force_bytes
    from django.utils.http import urlsafe_base64_encode

    from accounts.tokens import password_reset_token_generator

    link = "/accounts/password/reset/{}/{}/".format(urlsafe_base64_encode(force_bytes(user.pk)),
                                                     password_reset_token_generator.make_token(user))
    with override_settings(CACHES={"default": UNREACHABLE_REDIS_CACHE}):
        done = _set_password_by_link(client, link)
    assert done.status_code == 302 and done["Location"] == "/accounts/password/reset/done/"
    assert _logs_in("alice", NEW_PASSWORD)


def test_a_reset_link_works_once(client, alice, ask_reset):
    from django.core import mail

    ask_reset(client, "alice@example.com")
    link = _reset_link(mail.outbox[0])
    assert _set_password_by_link(client, link).status_code == 302
    again = client.get(link)
    assert again.status_code == 200 and "This link does not work" in again.content.decode()
    # Nor can the form be sent again on the strength of the first visit.
    replay = client.post(link.rsplit("/", 2)[0] + "/set-password/",
                         {"new_password1": "another passphrase 7", "new_password2": "another passphrase 7"})
    assert "This link does not work" in replay.content.decode()
    assert _logs_in("alice", NEW_PASSWORD) and not _logs_in("alice", "another passphrase 7")


def test_a_reset_link_stops_working_once_the_address_changes_even_back_to_the_same_one(client, alice, ask_reset):
    from django.core import mail

    from accounts.services import user_email_set

    ask_reset(client, "alice@example.com")
    link = _reset_link(mail.outbox[0])
    user_email_set(user=alice, email="alice@elsewhere.example")
    # Back to the address the link went to, now waiting for confirmation again: no reset link works there meanwhile.
    user_email_set(user=alice, email="alice@example.com")

    refused = client.get(link)
    assert refused.status_code == 200 and "This link does not work" in refused.content.decode()
    assert _logs_in("alice", "correct horse battery")


def test_a_reset_link_stops_working_once_its_time_is_up(client, alice, settings, ask_reset):
    import time

    from django.core import mail

    settings.PASSWORD_RESET_TIMEOUT = 1
    ask_reset(client, "alice@example.com")
    time.sleep(2.1)  # the token counts whole seconds
    expired = client.get(_reset_link(mail.outbox[0]))
    assert expired.status_code == 200 and "This link does not work" in expired.content.decode()
    assert "1 second old" in expired.content.decode()
    assert _logs_in("alice", "correct horse battery")


def test_an_address_no_account_has_gets_the_same_answer_and_no_email(client, alice, django_user_model, ask_reset):
    from django.core import mail

    django_user_model.objects.create_user(username="nomail", password="correct horse battery")
    known = ask_reset(client, "alice@example.com")
    unknown = ask_reset(type(client)(), "nobody@example.com")
    assert (unknown.status_code, unknown["Location"]) == (known.status_code, known["Location"])
    assert client.get(known["Location"]).content == type(client)().get(unknown["Location"]).content
    assert [message.to for message in mail.outbox] == [["alice@example.com"]]


def test_an_address_of_several_accounts_gets_one_message_with_a_working_link_for_each_naming_it(
    client, alice, confirmed_user, ask_reset
):
    from django.core import mail

    confirmed_user(username="alice-work", password="x9!kQ2#vLp", email="alice@example.com")
    ask_reset(client, "alice@example.com")
    (message,) = mail.outbox
    links = dict(re.findall(r'account "([^"]+)":\s*\S+?(/accounts/password/reset/\S+/\S+/)\s', message.body))
    assert sorted(links) == ["alice", "alice-work"]
    for username, link in links.items():
        assert "For the account <strong>%s</strong>" % username in client.get(client.get(link)["Location"]).content.decode()


def test_one_inbox_gets_one_message_a_request_however_many_accounts_name_its_address(
    client, alice, confirmed_user, settings, ask_reset
):
    from django.core import mail

    from accounts.services import PASSWORD_RESET_ACCOUNTS_PER_MESSAGE

    # Addresses are not unique: one inbox may be confirmed for any number of accounts.
    for n in range(PASSWORD_RESET_ACCOUNTS_PER_MESSAGE + 5):
        confirmed_user(username=f"m{n}", password="x9!kQ2#vLp",
                       email="alice@example.com")
    settings.PASSWORD_RESET_EMAIL_THROTTLE_RATE = "3/hour"
    answers = [ask_reset(type(client)(REMOTE_ADDR=f"203.0.113.{n}"), "alice@example.com").status_code
               for n in range(1, 5)]
    assert answers == [302, 302, 302, 429]
    assert len(mail.outbox) == 3 and {tuple(message.to) for message in mail.outbox} == {("alice@example.com",)}
    body = mail.outbox[0].body
    named = re.findall(r'account "([^"]+)":', body)
    # The oldest accounts first: those made later to fill the message cannot push the owner's out of it.
    assert len(named) == PASSWORD_RESET_ACCOUNTS_PER_MESSAGE and named[0] == "alice"
    assert len(re.findall(r"/accounts/password/reset/\S+/\S+/", body)) == PASSWORD_RESET_ACCOUNTS_PER_MESSAGE
    assert "6 more accounts have this address" in body


@pytest.mark.parametrize("revoke", [True, False])
def test_resetting_the_password_signs_the_account_out_everywhere_and_revokes_its_api_tokens_unless_unticked(
    client, alice, ask_reset, revoke
):
    from django.test import Client
    from rest_framework.test import APIClient

    from accounts.services import api_token_create

    elsewhere = Client()
    elsewhere.force_login(alice)
    assert elsewhere.get("/").status_code == 200
    _, key = api_token_create(user=alice, name="scanner")
    ask_reset(client, "alice@example.com")
    set_password = _set_password_url(client)
    # Ticked unless unticked, as on the password change page.
    form_page = client.get(set_password).content.decode()
    checkbox = re.search(r'<input type="checkbox" name="revoke_api_tokens"[^>]*>', form_page)
    assert " checked" in checkbox.group(0)
    done = client.post(set_password, {"new_password1": NEW_PASSWORD, "new_password2": NEW_PASSWORD,
                                      **({"revoke_api_tokens": "on"} if revoke else {})}, follow=True)
    assert "Your password was changed" in done.content.decode()
    assert ("Your 1 API token was revoked" in done.content.decode()) == revoke
    # Said once, and only when it is so.
    page = re.sub(r"\s+", " ", done.content.decode())
    assert page.count("revoked") == (1 if revoke else 0) and "unless you unticked" not in page
    assert ("programs that used it need a new one" in page) == revoke
    assert elsewhere.get("/").status_code == 302  # to the log-in page
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Token {key}")
    assert api.get("/api/v1/predictions/").status_code == (401 if revoke else 200)


def test_a_reset_lets_its_owner_in_at_once_from_the_address_that_was_locked_out(client, alice, settings, ask_reset):
    from django.core import mail

    for _ in range(settings.LOGIN_FAILURE_LIMIT):
        client.post("/accounts/login/", {"username": "alice", "password": "forgotten"})
    assert client.post("/accounts/login/", {"username": "alice", "password": "correct horse battery"}).status_code == 429
    ask_reset(client, "alice@example.com")
    _set_password_by_link(client, _reset_link(mail.outbox[0]))
    assert client.post("/accounts/login/", {"username": "alice", "password": NEW_PASSWORD}).status_code == 302


def test_one_client_address_may_ask_for_only_so_many_reset_links(client, alice, settings, ask_reset):
    from django.core import mail

    settings.PASSWORD_RESET_THROTTLE_RATE = "2/hour"
    asker = type(client)(REMOTE_ADDR="203.0.113.9")
    answers = [ask_reset(asker, f"someone{n}@example.com").status_code for n in range(2)]
    refused = ask_reset(asker, "alice@example.com")
    assert answers == [302, 302] and refused.status_code == 429
    assert "Too many reset links" in refused.content.decode() and 0 < int(refused["Retry-After"]) <= 3600
    assert mail.outbox == []
    # Another address has its own allowance.
    assert ask_reset(type(client)(REMOTE_ADDR="198.51.100.7"), "alice@example.com").status_code == 302
    assert len(mail.outbox) == 1


@pytest.mark.parametrize("email", ["alice@example.com", "nobody@example.com"])
def test_one_email_address_gets_only_so_many_reset_links_from_any_number_of_clients(
    client, alice, settings, email, ask_reset
):
    from django.core import mail

    settings.PASSWORD_RESET_EMAIL_THROTTLE_RATE = "2/hour"
    answers = [ask_reset(type(client)(REMOTE_ADDR=f"203.0.113.{n}"), email.upper() if n % 2 else email)
               for n in range(1, 5)]
    # The same answers whether or not an account has the address: the refusal tells nothing either.
    assert [answer.status_code for answer in answers] == [302, 302, 429, 429]
    assert "asked for too often" in answers[2].content.decode()
    assert len(mail.outbox) == (2 if email.startswith("alice") else 0)
    # A refusal for the email address costs the client's own allowance nothing.
    settings.PASSWORD_RESET_THROTTLE_RATE = "1/hour"
    assert ask_reset(type(client)(REMOTE_ADDR="203.0.113.3"), "other@example.com").status_code == 302


def test_a_reset_link_is_still_sent_while_the_cache_is_unreachable(client, alice, ask_reset):
    from django.core import mail
    from django.test import override_settings

    unreachable = UNREACHABLE_REDIS_CACHE
    with override_settings(CACHES={"default": unreachable}):
        assert ask_reset(client, "alice@example.com").status_code == 302
    assert len(mail.outbox) == 1


def test_a_known_and_an_unknown_address_cost_the_request_the_same_work(
    client, alice, reset_queue, django_capture_on_commit_callbacks
):
    from django.core import mail
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    work = {}
    for address in ("alice@example.com", "nobody@example.com"):
        with CaptureQueriesContext(connection) as queries, django_capture_on_commit_callbacks(execute=True):
            answer = type(client)().post(RESET, {"email": address})
        (queued,) = reset_queue.messages()
        # The address alone goes to the broker: the worker looks it up and makes any token itself.
        assert queued["kwargs"] == {"email": address} and queued["args"] == []
        work[address] = (answer.status_code, answer["Location"], [query["sql"] for query in queries.captured_queries],
                         queued["task"])
    assert work["alice@example.com"] == work["nobody@example.com"]
    assert work["alice@example.com"][3] == "accounts.tasks.password_reset_email_send"
    # Nothing is mailed while the request runs: a slow mail server would hold it, for known addresses only.
    assert mail.outbox == []


def test_a_reset_link_leads_to_site_url_whatever_host_the_request_named(client, alice, settings, ask_reset):
    from django.core import mail

    settings.SITE_URL = "https://digits.example.com"
    settings.ALLOWED_HOSTS = [*settings.ALLOWED_HOSTS, "mirror.example.net"]
    ask_reset(client, "alice@example.com", HTTP_HOST="mirror.example.net")
    (message,) = mail.outbox
    assert re.search(r"^https://digits\.example\.com/accounts/password/reset/\S+/\S+/$", message.body, re.M)
    assert message.subject == "Reset your password on digits.example.com"
    assert "mirror.example.net" not in message.subject + message.body


@pytest.mark.django_db(transaction=True)  # as served: no transaction around the request, so the broker is tried at once
def test_with_the_broker_down_every_asker_is_told_nothing_was_sent_and_keeps_the_allowance(
    client, alice, settings, reset_queue, caplog
):
    import logging

    from django.core import mail

    from tests.processes import NO_BROKER_URL, broker_switched

    settings.PASSWORD_RESET_THROTTLE_RATE = settings.PASSWORD_RESET_EMAIL_THROTTLE_RATE = "1/hour"
    answers = []
    with broker_switched(settings, NO_BROKER_URL):
        for address in ("alice@example.com", "nobody@example.com"):
            answer = type(client)().post(RESET, {"email": address})
            # But for the address, kept in the form to send again, and the form's security token.
            page = re.sub(r'name="csrfmiddlewaretoken" value="\w+"', "", answer.content.decode()).replace(address, "")
            answers.append((answer.status_code, page))
    # The same answer whether or not an account has the address: a broker outage does not depend on it.
    assert answers[0] == answers[1] and answers[0][0] == 503
    page = answers[0][1]
    assert "could not be taken now" in page and "nothing was sent" in page and "try again in a moment" in page
    assert 'name="email"' in page  # the form, to send again
    failures = [record for record in caplog.records if "could not queue a password reset email" in record.message]
    assert [record.levelno for record in failures] == [logging.ERROR] * 2
    # Nothing was counted: once the broker is back, the same client and address are taken at once.
    assert type(client)().post(RESET, {"email": "alice@example.com"}).status_code == 302
    assert [message["kwargs"] for message in reset_queue.messages()] == [{"email": "alice@example.com"}]
    assert mail.outbox == []


@pytest.mark.worker
def test_a_reset_link_asked_for_on_the_page_is_mailed_by_a_worker_process(
    client, alice, start_celery_worker, mail_server
):
    from django.core import mail

    # The worker sends through the test's own SMTP server; SITE_URL is the worker's, where links are made.
    start_celery_worker(TEST_EMAIL_BACKEND="django.core.mail.backends.smtp.EmailBackend",
                        EMAIL_URL=f"smtp://127.0.0.1:{mail_server.port}", SITE_URL="https://digits.example.com",
                        DEFAULT_FROM_EMAIL="digits@example.com")
    asked = client.post(RESET, {"email": "alice@example.com"})
    assert asked.status_code == 302 and mail.outbox == []
    (message,) = mail_server.wait_for(1, timeout=30)
    assert (message["To"], message["From"]) == ("alice@example.com", "digits@example.com")
    link = re.search(r"https://digits\.example\.com(/accounts/password/reset/\S+/\S+/)", message.get_content())
    assert _set_password_by_link(client, link.group(1)).status_code == 302
    assert _logs_in("alice", NEW_PASSWORD)


def test_a_site_that_sends_no_email_says_reset_is_unavailable_and_to_ask_an_administrator(
    client, alice, settings, ask_reset
):
    settings.EMAIL_BACKEND = "django.core.mail.backends.dummy.EmailBackend"
    settings.PASSWORD_RESET_THROTTLE_RATE = "1/hour"
    for response in (client.get(RESET), client.post(RESET, {"email": "alice@example.com"})):
        page = response.content.decode()
        assert "not available on this site" in page and "Ask an administrator" in page
        assert 'name="email"' not in page and "<form" not in page.split('id="content"')[1]
    assert response.status_code == 503  # the POST: nothing was sent, and no page says it was
    # Nor was anything counted: a site that starts sending email later takes the request.
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    assert ask_reset(client, "alice@example.com").status_code == 302


def test_every_id_a_reset_field_is_described_by_exists_and_a_mistake_is_marked_for_focus(client, alice, ask_reset):
    from django.core import mail

    ask_reset(client, "alice@example.com")
    set_password = client.get(_reset_link(mail.outbox[0]))["Location"]
    for response in (client.post(RESET, {"email": "not an address"}),
                     client.post(set_password, {"new_password1": NEW_PASSWORD, "new_password2": "different"})):
        page = response.content.decode()
        assert response.status_code == 400
        described = {name for value in re.findall(r'aria-describedby="([^"]+)"', page) for name in value.split()}
        assert any(name.endswith("_error") for name in described), described
        assert all(f'id="{name}"' in page for name in described), described
        assert 'aria-invalid="true"' in page  # static/js/site.js puts the keyboard there
    assert _logs_in("alice", "correct horse battery")


def test_signing_up_with_an_email_address_mails_a_link_that_makes_the_password_resettable(
    client, django_user_model, ask_reset, post_and_mail
):
    from django.core import mail

    response = post_and_mail(client, "/accounts/signup/", {"username": "carol", "email": " Carol@EXAMPLE.com ",
                                                           "password1": "x9!kQ2#vLp", "password2": "x9!kQ2#vLp"})
    assert response.status_code == 302
    assert django_user_model.objects.get(username="carol").email == "Carol@example.com"
    assert any("A link to confirm Carol@example.com is on its way" in str(message)
               for message in client.get(response["Location"]).context["messages"])
    (confirmation,) = mail.outbox
    assert confirmation.to == ["Carol@example.com"] and 'the account "carol"' in confirmation.body
    ask_reset(type(client)(), "carol@example.com")
    assert len(mail.outbox) == 1  # not confirmed yet: no reset link goes there
    post_and_mail(type(client)(), confirmation_path(confirmation))
    ask_reset(type(client)(), "carol@example.com")
    assert mail.outbox[-1].to == ["Carol@example.com"] and _reset_link(mail.outbox[-1])


def test_reset_links_skip_an_unconfirmed_address_with_the_same_answer_as_for_an_unknown_one(
    client, alice, django_user_model, ask_reset
):
    from django.core import mail

    # Someone else gave an account alice's address: it is not confirmed, and her message lists only her account.
    django_user_model.objects.create_user(username="mallory", password="x9!kQ2#vLp", email="alice@example.com")
    django_user_model.objects.create_user(username="dave", password="x9!kQ2#vLp", email="dave@example.com")
    unconfirmed = ask_reset(client, "dave@example.com")
    unknown = ask_reset(type(client)(), "nobody@example.com")
    assert (unconfirmed.status_code, unconfirmed["Location"]) == (unknown.status_code, unknown["Location"])
    assert client.get(unconfirmed["Location"]).content == type(client)().get(unknown["Location"]).content
    assert mail.outbox == []
    ask_reset(type(client)(), "alice@example.com")
    (message,) = mail.outbox
    assert re.findall(r'account "([^"]+)"', message.body) == ["alice"]
    # An address changed outside the Account page (the admin, a shell) is unconfirmed too.
    alice.email = "alice@example.org"
    alice.save()
    ask_reset(type(client)(), "alice@example.org")
    assert len(mail.outbox) == 1


def test_a_sign_up_with_a_malformed_email_address_is_refused_and_stores_nothing(client, django_user_model):
    response = client.post("/accounts/signup/", {"username": "carol", "email": "carol at example",
                                                 "password1": "x9!kQ2#vLp", "password2": "x9!kQ2#vLp"})
    assert response.status_code == 400 and "valid email address" in response.content.decode()
    assert not django_user_model.objects.filter(username="carol").exists()


def test_the_reset_form_opens_with_the_keyboard_in_its_email_field(client):
    page = client.get(RESET).content.decode()
    assert re.search(r'<input type="email" name="email"[^>]* autofocus', page)
