"""The account page: changing the password and the email address, the API tokens and deleting the account."""
import io
import re
from pathlib import Path

import pytest
from django.conf import settings
from django.template.defaultfilters import filesizeformat

from accounts import services
from accounts.models import ApiToken
from accounts.services import api_token_create
from classifier import services as classifier_services
from classifier.models import Upload
from tests.accounts.conftest import api_status, confirmation_path, email_confirm
from tests.caches import UNREACHABLE_REDIS_CACHE
from tests.classifier.fixtures import stored_size

pytestmark = pytest.mark.django_db

PASSWORD = "correct horse battery"  # the user fixture's


@pytest.fixture
def signed_in(client, user):
    client.force_login(user)
    return client


def _new_key(page) -> str | None:
    found = re.search(r'<code id="new-token">(\w+)</code>', page.content.decode())
    return found.group(1) if found else None


def test_a_new_api_token_is_shown_once_and_works_against_the_api(signed_in, user):
    made = signed_in.post("/accounts/tokens/", {"name": "  scanner   script ", "password": PASSWORD})
    assert made.status_code == 302 and made["Location"] == "/accounts/#new-token-message"
    shown = signed_in.get("/accounts/")
    assert shown.status_code == 200 and shown["Cache-Control"] == "no-store"
    key = _new_key(shown)
    assert "scanner script" in shown.content.decode() and api_status(key) == 200
    # Later visits list the token by its name and first characters, never its key.
    page = signed_in.get("/accounts/").content.decode()
    assert key not in page and "scanner script" in page and key[:8] in page


def test_creating_a_token_redirects_to_the_account_page_which_shows_the_key_once(signed_in, user):
    made = signed_in.post("/accounts/tokens/", {"name": "", "password": PASSWORD})
    # To the key itself, which a phone shows only far down the page.
    assert made.status_code == 302 and made["Location"] == "/accounts/#new-token-message"
    assert "new-token" not in made.content.decode()  # the key is on the page the redirect leads to, not in it
    shown = signed_in.get(made["Location"])
    assert shown["Cache-Control"] == "no-store"
    assert 'id="new-token-message"' in shown.content.decode()
    key = _new_key(shown)
    assert key and ApiToken.objects.get(user=user).prefix == key[:ApiToken.PREFIX_LENGTH]


def test_reloading_the_page_after_creating_a_token_neither_shows_the_key_again_nor_makes_another_token(
    signed_in, user
):
    made = signed_in.post("/accounts/tokens/", {"name": "", "password": PASSWORD})
    assert made.status_code == 302  # so the browser's last request, the one a reload repeats, is the GET below
    key = _new_key(signed_in.get("/accounts/"))
    reloaded = signed_in.get("/accounts/")
    assert reloaded.status_code == 200 and _new_key(reloaded) is None and key not in reloaded.content.decode()
    assert "no-store" not in reloaded.get("Cache-Control", "")
    assert ApiToken.objects.filter(user=user).count() == 1 and api_status(key) == 200


def test_the_key_of_a_token_is_not_kept_in_the_session_once_shown(signed_in, user):
    from accounts.views import NEW_API_TOKEN_SESSION_KEY

    signed_in.post("/accounts/tokens/", {"name": "scanner", "password": PASSWORD})
    key = _new_key(signed_in.get("/accounts/"))
    assert key and NEW_API_TOKEN_SESSION_KEY not in signed_in.session
    assert key not in str(dict(signed_in.session))


def test_a_token_revoked_before_its_key_was_shown_is_not_shown(signed_in, user):
    signed_in.post("/accounts/tokens/", {"name": "scanner", "password": PASSWORD})
    ApiToken.objects.filter(user=user).delete()
    page = signed_in.get("/accounts/")
    assert _new_key(page) is None and "You have no tokens" in page.content.decode()


def test_a_token_made_read_only_on_the_page_reads_is_refused_an_upload_and_is_listed_as_read_only(
    signed_in, user, digit_png
):
    from rest_framework.test import APIClient

    made = signed_in.post("/accounts/tokens/", {"name": "dashboard", "read_only": "on", "password": PASSWORD})
    assert made.status_code == 302
    key = _new_key(signed_in.get("/accounts/"))
    assert api_status(key) == 200
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Token {key}")
    refused = api.post("/api/v1/predictions/", {"files": [io.BytesIO(digit_png(3))]}, format="multipart")
    assert refused.status_code == 403 and "read-only" in refused.json()["error"]["message"]
    assert not Upload.objects.exists()
    page = signed_in.get("/accounts/").content.decode()
    assert re.search(r"dashboard</strong> <code>\w+…</code> <span class=\"badge\">read only</span>", page)
    # Without the box ticked, a token has full access, as before.
    signed_in.post("/accounts/tokens/", {"name": "uploader", "password": PASSWORD})
    assert list(ApiToken.objects.order_by("name").values_list("name", "read_only")) == [
        ("dashboard", True), ("uploader", False)]


def test_a_token_is_made_only_with_the_password_so_a_session_alone_cannot_make_one(signed_in, user):
    for password in ("", "guess"):
        refused = signed_in.post("/accounts/tokens/", {"name": "backdoor", "password": password})
        assert refused.status_code == 400 and 'id="new-token"' not in refused.content.decode()
    assert not ApiToken.objects.exists()
    # The guesses count towards the log-in lockout.
    for _ in range(4):
        signed_in.post("/accounts/tokens/", {"name": "backdoor", "password": "guess"})
    locked = signed_in.post("/accounts/tokens/", {"name": "backdoor", "password": PASSWORD})
    assert locked.status_code == 400 and "Too many wrong passwords" in locked.content.decode()
    assert not ApiToken.objects.exists()


def test_tokens_work_side_by_side_and_revoking_one_stops_only_that_one(signed_in, user, other_user):
    first, first_key = api_token_create(user=user, name="laptop")
    _, second_key = api_token_create(user=user, name="server")
    theirs, their_key = api_token_create(user=other_user, name="laptop")
    assert api_status(first_key) == api_status(second_key) == 200

    assert signed_in.post(f"/accounts/tokens/{first.pk}/revoke/").status_code == 302
    assert api_status(first_key) == 401 and api_status(second_key) == 200

    # Someone else's token is not found among one's own.
    assert signed_in.post(f"/accounts/tokens/{theirs.pk}/revoke/").status_code == 302
    assert api_status(their_key) == 200


def test_revoking_a_token_that_another_tab_revoked_already_says_so(signed_in, user):
    token, _ = api_token_create(user=user, name="laptop")
    first = signed_in.post(f"/accounts/tokens/{token.pk}/revoke/", follow=True).content.decode()
    assert "The token was revoked" in first
    # The same button, on the page still open in another tab.
    again = signed_in.post(f"/accounts/tokens/{token.pk}/revoke/", follow=True).content.decode()
    assert "That token was revoked already" in again and "The token was revoked;" not in again


def test_a_taken_name_or_one_token_too_many_is_refused_with_a_message(signed_in, user):
    api_token_create(user=user, name="laptop")
    taken = signed_in.post("/accounts/tokens/", {"name": "laptop", "password": PASSWORD})
    assert taken.status_code == 400 and "already" in taken.content.decode()

    for _ in range(ApiToken.MAX_PER_USER - 1):
        api_token_create(user=user)
    refused = signed_in.post("/accounts/tokens/", {"name": "one more", "password": PASSWORD})
    assert refused.status_code == 400 and "revoke one" in refused.content.decode()
    assert ApiToken.objects.filter(user=user).count() == ApiToken.MAX_PER_USER


def test_a_tokens_name_keeps_each_run_of_spaces_as_one_so_a_name_differing_only_in_spacing_is_taken(user):
    token, _ = api_token_create(user=user, name="  my   laptop ")
    assert token.name == "my laptop"

    with pytest.raises(services.ApiTokenError, match="already"):
        api_token_create(user=user, name="my laptop")


def test_changing_the_password_keeps_this_session_and_needs_the_old_one(signed_in, user, client):
    wrong = signed_in.post("/accounts/password/", {"old_password": "nope", "new_password1": "a-New-pass-482",
                                                  "new_password2": "a-New-pass-482"})
    assert wrong.status_code == 200 and "incorrectly" in wrong.content.decode()
    changed = signed_in.post("/accounts/password/", {"old_password": "correct horse battery",
                                                    "new_password1": "a-New-pass-482", "new_password2": "a-New-pass-482"})
    assert changed.status_code == 302 and changed["Location"] == "/accounts/"
    assert signed_in.get("/accounts/").status_code == 200  # still signed in
    user.refresh_from_db()
    assert user.check_password("a-New-pass-482")


def test_changing_the_password_revokes_the_api_tokens_unless_asked_not_to(signed_in, user):
    _, key = api_token_create(user=user, name="scanner")
    page = signed_in.get("/accounts/password/").content.decode()
    assert re.search(r'<input type="checkbox" name="revoke_api_tokens"[^>]*checked', page)

    kept = signed_in.post("/accounts/password/", {"old_password": PASSWORD, "new_password1": "a-New-pass-482",
                                                 "new_password2": "a-New-pass-482"})
    assert kept.status_code == 302 and api_status(key) == 200

    revoked = signed_in.post("/accounts/password/", {"old_password": "a-New-pass-482", "new_password1": "b-New-pass-593",
                                                    "new_password2": "b-New-pass-593", "revoke_api_tokens": "on"},
                             follow=True)
    assert "Your 1 API token was revoked" in revoked.content.decode()
    assert api_status(key) == 401 and not ApiToken.objects.exists()


def test_the_admins_password_change_leads_to_the_account_pages_which_counts_wrong_guesses(client, staff_user):
    client.force_login(staff_user)
    assert client.get("/admin/").content.decode().count('href="/admin/password_change/"') == 1
    page = client.get("/admin/password_change/", follow=True)
    assert page.redirect_chain == [("/accounts/password/", 302)]
    posted = client.post("/admin/password_change/", {"old_password": PASSWORD, "new_password1": "a-New-pass-482",
                                                      "new_password2": "a-New-pass-482"})
    assert posted.status_code == 302
    staff_user.refresh_from_db()
    assert staff_user.check_password(PASSWORD)


def test_deleting_the_account_needs_the_password_then_removes_it_with_its_images(
    signed_in, user, digit_png, django_capture_on_commit_callbacks
):
    upload = classifier_services.upload_create(owner=user, file=io.BytesIO(digit_png(0)), source="file")
    stored = Path(settings.MEDIA_ROOT) / upload.image.name
    api_token_create(user=user)

    refused = signed_in.post("/accounts/delete/", {"password": "guess"})
    assert refused.status_code == 400 and "not your password" in refused.content.decode()
    assert type(user).objects.filter(pk=user.pk).exists() and stored.exists()

    with django_capture_on_commit_callbacks(execute=True):  # the files go once the deletion commits
        deleted = signed_in.post("/accounts/delete/", {"password": "correct horse battery", "understood": "on"})
    assert deleted.status_code == 302 and deleted["Location"] == "/accounts/login/"
    assert not type(user).objects.filter(pk=user.pk).exists()
    assert not Upload.objects.exists() and not ApiToken.objects.exists() and not stored.exists()
    assert signed_in.get("/").status_code == 302  # signed out


def test_deleting_the_account_asks_to_confirm_that_its_uploads_go_with_it_and_without_it_deletes_nothing(
    signed_in, user, digit_png
):
    for index in range(2):
        classifier_services.upload_create(owner=user, file=io.BytesIO(digit_png(index)), source="file")
    page = signed_in.get("/accounts/").content.decode()
    assert re.search(r'<label class="checkbox"><input type="checkbox" name="understood" required id="id_understood">\s*'
                     r"I understand that my 2 uploads will be deleted with my account, for good.</label>", page)

    # The password typed and Enter pressed: without the box ticked, nothing is deleted, and the page says why.
    refused = signed_in.post("/accounts/delete/", {"password": PASSWORD})
    assert refused.status_code == 400
    page = refused.content.decode()
    assert re.search(r'<input type="checkbox" name="understood" required aria-invalid="true" '
                     r'aria-describedby="id_understood_error" id="id_understood">', page)
    assert re.search(r'<div id="id_understood_error"><p class="field-error">Nothing was deleted: tick the box to '
                     r"confirm that your 2 uploads go with your account.</p></div>", page)
    assert type(user).objects.filter(pk=user.pk).exists() and Upload.objects.count() == 2
    # Without JavaScript the refusal opens at the deletion's own section, not at the top of a long page.
    assert '<form method="post" action="/accounts/delete/#delete-heading"' in page

    classifier_services.upload_delete(upload=Upload.objects.first())
    one = signed_in.post("/accounts/delete/", {"password": PASSWORD}).content.decode()
    assert "I understand that my 1 upload will be deleted" in one and "your 1 upload goes with your account" in one


def test_an_account_without_uploads_is_deleted_once_the_deletion_is_confirmed(signed_in, user):
    page = signed_in.get("/accounts/").content.decode()
    assert "I understand that my account will be deleted, for good." in page
    refused = signed_in.post("/accounts/delete/", {"password": PASSWORD})
    assert refused.status_code == 400 and "tick the box to confirm that your account is deleted" in refused.content.decode()
    assert signed_in.post("/accounts/delete/", {"password": PASSWORD, "understood": "on"}).status_code == 302
    assert not type(user).objects.filter(pk=user.pk).exists()


@pytest.mark.parametrize("superuser", [True, False])
def test_no_staff_account_deletes_itself_and_its_record_in_the_admin_from_this_page(
    client, django_user_model, superuser
):
    from django.contrib.admin.models import CHANGE, LogEntry
    from django.contrib.contenttypes.models import ContentType

    staff = django_user_model.objects.create_user(username="helpdesk", password="correct horse battery",
                                                  is_staff=True, is_superuser=superuser)
    LogEntry.objects.create(user_id=staff.pk, content_type_id=ContentType.objects.get_for_model(staff).pk,
                            object_id=staff.pk, object_repr="alice", action_flag=CHANGE, change_message="Set")
    client.force_login(staff)

    refused = client.post("/accounts/delete/", {"password": "correct horse battery", "understood": "on"})

    assert refused.status_code == 400
    assert "A staff account is deleted by an administrator, in the admin" in refused.content.decode()
    assert django_user_model.objects.filter(pk=staff.pk).exists() and LogEntry.objects.filter(user=staff).exists()


def test_every_page_links_to_the_account_page_once_signed_in(signed_in):
    assert 'href="/accounts/"' in signed_in.get("/history/").content.decode()


def test_guessing_the_password_on_the_account_page_meets_the_log_in_lockout(signed_in, user, settings):
    for _ in range(settings.LOGIN_FAILURE_LIMIT):
        signed_in.post("/accounts/password/", {"old_password": "guess", "new_password1": "a-New-pass-482",
                                              "new_password2": "a-New-pass-482"})
    locked = signed_in.post("/accounts/delete/", {"password": "correct horse battery", "understood": "on"})
    assert locked.status_code == 400 and "Too many wrong passwords" in locked.content.decode()
    assert type(user).objects.filter(pk=user.pk).exists()
    # The log-in form counts those guesses too.
    assert type(signed_in)().post("/accounts/login/", {"username": "alice", "password": "correct horse battery"}
                                  ).status_code == 429


def test_while_the_cache_counting_wrong_passwords_is_unreachable_the_account_page_checks_none_and_says_so(
        signed_in, user):
    from django.test import override_settings

    unreachable = UNREACHABLE_REDIS_CACHE
    with override_settings(CACHES={"default": unreachable}):
        for url, data in (
            ("/accounts/tokens/", {"name": "script", "password": PASSWORD}),
            ("/accounts/email/", {"email-email": "alice@example.com", "email-password": PASSWORD}),
            ("/accounts/password/", {"old_password": PASSWORD, "new_password1": "a-New-pass-482",
                                     "new_password2": "a-New-pass-482"}),
            ("/accounts/delete/", {"password": PASSWORD, "understood": "on"}),
        ):
            response = signed_in.post(url, data)
            assert response.status_code in (200, 400), url
            assert "Passwords cannot be checked at the moment; nothing was changed" in response.content.decode(), url
    user.refresh_from_db()
    assert user.check_password(PASSWORD) and user.email == "" and not ApiToken.objects.exists()


def test_an_ipv6_client_is_counted_by_its_whole_64_block(db, django_user_model, client):
    django_user_model.objects.create_user(username="victim", password="the-right-password-1")
    for i in range(5):
        type(client)(REMOTE_ADDR=f"2001:db8:0:1::{i + 1}").post(
            "/accounts/login/", {"username": "victim", "password": f"guess{i}"})
    neighbour = type(client)(REMOTE_ADDR="2001:db8:0:1:ffff::9")
    assert neighbour.post("/accounts/login/", {"username": "victim", "password": "the-right-password-1"}
                          ).status_code == 429
    elsewhere = type(client)(REMOTE_ADDR="2001:db8:0:2::1")
    assert elsewhere.post("/accounts/login/", {"username": "victim", "password": "the-right-password-1"}
                          ).status_code == 302


def test_the_account_page_says_how_much_the_uploads_take_of_the_allowance(client, user, digit_png, settings):
    settings.UPLOAD_QUOTA_MB = 1
    client.force_login(user)
    classifier_services.predictions_submit(owner=user, files=[(io.BytesIO(digit_png(0)), "0.png")], source="file")
    page = client.get("/accounts/").content.decode()
    used = filesizeformat(stored_size(digit_png(0)))
    assert f"Your uploads take {used} of the 1.0\xa0MB you may use" in page
    assert f'max="{2**20}" value="{stored_size(digit_png(0))}"' in page
    # The bar follows the whole sentence, not in the middle of it.
    assert re.search(r"makes room\.</p>\s*<meter ", page)

    settings.UPLOAD_QUOTA_MB = 0
    assert f"Your uploads take {used}." in client.get("/accounts/").content.decode()


def test_the_email_address_reset_links_go_to_is_set_on_the_account_page_only_with_the_password(signed_in, user):
    assert "Your account has no email address" in signed_in.get("/accounts/").content.decode()
    wrong = signed_in.post("/accounts/email/", {"email-email": "mallory@example.com", "email-password": "guess"})
    assert wrong.status_code == 400 and "That is not your password" in wrong.content.decode()
    user.refresh_from_db()
    assert user.email == ""  # a session alone cannot point the reset links at another inbox
    saved = signed_in.post("/accounts/email/", {"email-email": "Alice@EXAMPLE.com", "email-password": PASSWORD},
                           follow=True)
    assert "A link to confirm Alice@example.com is on its way to it" in saved.content.decode()
    user.refresh_from_db()
    assert user.email == "Alice@example.com"


def test_on_a_site_that_sends_no_email_saving_an_address_does_not_say_links_go_to_it(signed_in, user, settings):
    settings.EMAIL_BACKEND = "django.core.mail.backends.dummy.EmailBackend"
    saved = signed_in.post("/accounts/email/", {"email-email": "alice@example.com", "email-password": PASSWORD},
                           follow=True)
    messages = [str(message) for message in saved.context["messages"]]
    assert messages == ["Your address alice@example.com was saved; this site sends no email at present, so no reset "
                        "link can reach it: ask an administrator should you forget your password."]
    user.refresh_from_db()
    assert user.email == "alice@example.com"


def test_a_malformed_email_address_is_refused_and_described_where_it_is_typed(signed_in, user):
    response = signed_in.post("/accounts/email/", {"email-email": "alice at example", "email-password": PASSWORD})
    page = response.content.decode()
    assert response.status_code == 400
    field = re.search(r'<input type="email" name="email-email"[^>]*>', page).group(0)
    assert 'aria-invalid="true"' in field and "id_email-email_error" in field
    assert '<div id="id_email-email_error"><p class="field-error">Enter a valid email address.</p></div>' in page
    user.refresh_from_db()
    assert user.email == ""


def test_removing_the_email_address_stops_the_reset_links_already_sent(signed_in, user, client, settings, ask_reset):
    from django.core import mail
    from django.test import Client

    user.email = "alice@example.com"
    user.save()
    email_confirm(user)
    ask_reset(Client(), "alice@example.com")
    link = re.search(re.escape(settings.SITE_URL) + r"(\S+)", mail.outbox[0].body).group(1)
    removed = signed_in.post("/accounts/email/", {"email-email": "", "email-password": PASSWORD}, follow=True)
    assert "Your email address was removed" in removed.content.decode()
    assert "This link does not work" in Client().get(link).content.decode()
    ask_reset(Client(), "alice@example.com")
    assert len(mail.outbox) == 1


def test_the_account_page_says_when_the_site_sends_no_email(signed_in, settings):
    assert "This site sends no email" not in signed_in.get("/accounts/").content.decode()
    settings.EMAIL_BACKEND = "django.core.mail.backends.dummy.EmailBackend"
    assert "This site sends no email" in signed_in.get("/accounts/").content.decode()


# Confirming the email address.

EMAIL = "/accounts/email/"


def _set_email(post, visitor, address: str, password: str = PASSWORD):
    return post(visitor, EMAIL, {"email-email": address, "email-password": password})


def _messages(response) -> list[str]:
    return [str(message) for message in response.context["messages"]]


def _confirmed(user) -> bool:
    from accounts.selectors import user_email_confirmed

    user.refresh_from_db()
    return user_email_confirmed(user=user)


def _email_state(page) -> str:
    return re.sub(r"\s+", " ", re.search(r'<p id="email-state">(.*?)</p>', page.content.decode(), re.S).group(1))


def test_a_new_address_waits_until_the_link_mailed_to_it_is_opened_and_its_button_pressed(
    signed_in, user, post_and_mail, settings
):
    from django.core import mail
    from django.test import Client

    settings.SITE_URL = "https://digits.example.com"
    settings.DEFAULT_FROM_EMAIL = "digits@example.com"
    assert _set_email(post_and_mail, signed_in, "alice@example.com").status_code == 302
    (message,) = mail.outbox
    assert message.to == ["alice@example.com"] and message.from_email == "digits@example.com"
    assert message.subject == "Confirm your email address on digits.example.com"
    assert 'the account "alice" on digits.example.com' in message.body and "within 3 days" in message.body
    page = signed_in.get("/accounts/")
    assert "waiting for confirmation" in _email_state(page) and "Send the link again" in page.content.decode()

    # Opened anywhere, signed in or not: the page asks, and only its button confirms (mail scanners open links).
    stranger, link = Client(), confirmation_path(message)
    shown = stranger.get(link)
    assert shown.status_code == 200 and "Confirm this address" in shown.content.decode()
    assert not _confirmed(user)
    confirmed = stranger.post(link)
    assert confirmed.status_code == 302 and confirmed["Location"] == link
    assert "This address is confirmed" in stranger.get(link).content.decode()
    assert _confirmed(user)
    page = signed_in.get("/accounts/")
    assert "confirmed" in _email_state(page) and "waiting" not in _email_state(page)
    assert "Send the link again" not in page.content.decode()
    # Opened again, it does no harm.
    assert stranger.post(link).status_code == 302 and _confirmed(user)


def test_a_confirmation_link_stops_working_once_the_address_changes_even_back_to_the_same_one(
    signed_in, user, post_and_mail
):
    from django.core import mail
    from django.test import Client

    _set_email(post_and_mail, signed_in, "alice@example.com")
    first = confirmation_path(mail.outbox[0])
    _set_email(post_and_mail, signed_in, "alice@example.net")
    _set_email(post_and_mail, signed_in, "alice@example.com")
    for response in (Client().get(first), Client().post(first)):
        assert response.status_code == 400 and "address was changed after it was sent" in response.content.decode()
    assert not _confirmed(user)
    # The link sent last works.
    assert Client().post(confirmation_path(mail.outbox[-1])).status_code == 302 and _confirmed(user)


def test_a_confirmation_link_stops_working_once_its_time_is_up_and_works_for_nothing_else(
    signed_in, user, post_and_mail, settings
):
    import time

    from django.core import mail, signing
    from django.test import Client

    settings.EMAIL_CONFIRMATION_TIMEOUT = 1
    _set_email(post_and_mail, signed_in, "alice@example.com")
    link = confirmation_path(mail.outbox[0])
    time.sleep(2.1)  # the token counts whole seconds
    expired = Client().post(link)
    assert expired.status_code == 400 and "This link has expired" in expired.content.decode()
    # A value this site signed for another purpose, with the same contents, confirms nothing.
    payload = signing.loads(link.split("/")[-2], salt="accounts.email-confirmation")
    forged = Client().post(f"/accounts/email/confirm/{signing.dumps(payload)}/")
    assert forged.status_code == 400 and "This link does not work" in forged.content.decode()
    assert not _confirmed(user)


def _run(messages: list[dict]) -> None:
    """Run ``messages`` here, as a worker would once they are due."""
    from mnistsite.celery import app

    for message in messages:
        app.tasks[message["task"]].apply(kwargs=message["kwargs"])


def _confirmation_paths(message) -> list[str]:
    return re.findall(re.escape(settings.SITE_URL) + r"(/accounts/email/confirm/[^/\s]+/)", message.body)


def test_a_stranger_who_gives_her_account_someones_address_cannot_stop_its_owner_confirming_it(
    signed_in, user, client, post_and_mail, reset_queue, settings, django_capture_on_commit_callbacks,
    django_user_model
):
    from django.core import mail
    from django.core.cache import cache
    from django.test import Client

    settings.EMAIL_CONFIRMATION_THROTTLE_RATE = "2/hour"
    # alice names carol's inbox and sends the link again: the inbox's allowance is spent.
    _set_email(post_and_mail, signed_in, "carol@example.com")
    post_and_mail(signed_in, "/accounts/email/confirmation/")
    assert len(mail.outbox) == 2
    carol = Client()
    with django_capture_on_commit_callbacks(execute=True):
        signed_up = _sign_up(lambda visitor, path, data: visitor.post(path, data), carol, "carol",
                             "carol@example.com")
    said = _messages(carol.get(signed_up["Location"]))
    # Said as for any link, which may wait as long: nobody learns that the inbox was sent links lately.
    assert any("A link to confirm carol@example.com is on its way to it; it usually arrives within 31 minutes." in text
               for text in said)
    assert not any("Too many" in text or "no link was sent" in text for text in said)
    # Owed in the database, not queued to wait on the broker; the sweep finds the allowance spent and sends nothing.
    assert reset_queue.messages() == []
    services.email_confirmations_sweep()
    assert reset_queue.messages() == [] and len(mail.outbox) == 2
    cache.clear()  # the allowance refills, as half an hour later
    services.email_confirmations_sweep()
    (swept,) = reset_queue.messages()
    assert swept["kwargs"] == {"email": "carol@example.com"} and swept["eta"] is None
    _run([swept])
    assert len(mail.outbox) == 3
    message = mail.outbox[-1]
    assert message.to == ["carol@example.com"]
    assert 'If you did not make an account named "carol", ignore its link.' in message.body
    assert 'If you did not make an account named "alice", ignore its link.' in message.body
    carols_link, alices_link = _confirmation_paths(message)  # the account waiting on a link first
    assert Client().post(carols_link).status_code == 302
    assert _confirmed(django_user_model.objects.get(username="carol")) and not _confirmed(user)
    assert reset_queue.messages() == []


def test_the_first_link_for_a_newly_saved_address_goes_however_often_the_last_one_was_sent_again(
    signed_in, user, post_and_mail, settings
):
    from django.core import mail

    settings.EMAIL_CONFIRMATION_THROTTLE_RATE = "2/hour"
    _set_email(post_and_mail, signed_in, "alice@exmaple.com")
    post_and_mail(signed_in, "/accounts/email/confirmation/")
    deferred = signed_in.get(post_and_mail(signed_in, "/accounts/email/confirmation/")["Location"])
    assert any("is on its way to it; it usually arrives within 31 minutes" in text for text in _messages(deferred))
    refused = signed_in.get(post_and_mail(signed_in, "/accounts/email/confirmation/")["Location"])
    assert len(mail.outbox) == 2
    (said,) = _messages(refused)
    assert said.startswith("No link was sent. Too many confirmation links were sent for your account lately")
    assert "was saved" not in said
    fixed = signed_in.get(_set_email(post_and_mail, signed_in, "alice@example.com")["Location"])
    assert any("A link to confirm alice@example.com is on its way" in text for text in _messages(fixed))
    assert [message.to for message in mail.outbox[2:]] == [["alice@example.com"]]


def test_replacing_or_removing_a_confirmed_address_mails_it_a_notice(signed_in, user, post_and_mail, settings):
    from django.core import mail

    settings.SITE_URL = "https://digits.example.com"
    user.email = "alice@example.com"
    user.save()
    email_confirm(user)
    replaced = signed_in.get(_set_email(post_and_mail, signed_in, "alice@example.net")["Location"])
    assert "A notice that the address changed is on its way to your previous address." in _messages(replaced)
    notice, confirmation = sorted(mail.outbox, key=lambda message: message.to)
    assert notice.to == ["alice@example.com"] and confirmation.to == ["alice@example.net"]
    assert notice.subject == "Your email address was changed on digits.example.com"
    assert 'The account "alice" on digits.example.com was given another email address' in notice.body
    assert "alice@example.net" not in notice.body  # where the links go now is nobody else's business
    post_and_mail(type(signed_in)(), confirmation_path(confirmation))

    mail.outbox.clear()
    _set_email(post_and_mail, signed_in, "")
    (notice,) = mail.outbox
    assert notice.to == ["alice@example.net"] and notice.subject == "Your email address was removed on digits.example.com"


def test_replacing_an_address_never_confirmed_mails_it_nothing(signed_in, user, post_and_mail):
    from django.core import mail

    _set_email(post_and_mail, signed_in, "typo@exmaple.com")
    _set_email(post_and_mail, signed_in, "alice@example.com")
    _set_email(post_and_mail, signed_in, "")
    assert [message.to for message in mail.outbox] == [["typo@exmaple.com"], ["alice@example.com"]]
    assert all("/accounts/email/confirm/" in message.body for message in mail.outbox)


def test_on_a_site_without_mail_an_address_waits_and_is_confirmed_once_the_site_sends_mail(
    signed_in, user, post_and_mail, settings
):
    from django.core import mail

    settings.EMAIL_BACKEND = "django.core.mail.backends.dummy.EmailBackend"
    _set_email(post_and_mail, signed_in, "alice@example.com")
    page = signed_in.get("/accounts/")
    assert "waiting for confirmation" in _email_state(page) and "Send the link again" not in page.content.decode()
    assert "This site sends no email at present" in page.content.decode()
    assert post_and_mail(signed_in, "/accounts/email/confirmation/").status_code == 302
    assert mail.outbox == [] and not _confirmed(user)

    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    assert "Send the link again" in signed_in.get("/accounts/").content.decode()
    post_and_mail(signed_in, "/accounts/email/confirmation/")
    (message,) = mail.outbox
    post_and_mail(type(signed_in)(), confirmation_path(message))
    assert _confirmed(user)


@pytest.mark.django_db(transaction=True)  # as served: no transaction around the request, so the broker is tried at once
def test_with_the_broker_down_the_address_is_saved_and_the_page_offers_to_send_the_link_again(
    client, user, settings, reset_queue, caplog
):
    import logging

    from tests.processes import NO_BROKER_URL, broker_switched

    settings.EMAIL_CONFIRMATION_THROTTLE_RATE = "1/hour"
    client.force_login(user)
    with broker_switched(settings, NO_BROKER_URL):
        saved = client.post(EMAIL, {"email-email": "alice@example.com", "email-password": PASSWORD}, follow=True)
    assert saved.status_code == 200
    # Owed in the database, the link is on its way all the same: the sweep sends it once the broker is back.
    assert any("A link to confirm alice@example.com is on its way to it" in text for text in _messages(saved))
    assert "waiting for confirmation" in _email_state(saved) and "Send the link again" in saved.content.decode()
    user.refresh_from_db()
    assert user.email == "alice@example.com"
    failures = [record for record in caplog.records if "could not queue an email confirmation link" in record.message]
    assert [record.levelno for record in failures] == [logging.ERROR]
    services.email_confirmations_sweep()
    assert [message["kwargs"] for message in reset_queue.messages()] == [{"email": "alice@example.com"}]


SIGNUP_PASSWORD = "x9!kQ2#vLp"


def _sign_up(post, visitor, username: str, email: str):
    return post(visitor, "/accounts/signup/", {"username": username, "password1": SIGNUP_PASSWORD,
                                               "password2": SIGNUP_PASSWORD, "email": email})


def test_an_address_given_at_sign_up_is_confirmed_by_its_link_which_then_shows_a_plain_confirmed_page(
    client, post_and_mail, django_user_model
):
    from django.core import mail
    from django.test import Client

    assert _sign_up(post_and_mail, client, "carol", "carol@example.com").status_code == 302
    (message,) = mail.outbox
    link = confirmation_path(message)
    confirmed = Client().post(link, follow=True)
    assert confirmed.status_code == 200 and "This address is confirmed" in confirmed.content.decode()
    assert _confirmed(django_user_model.objects.get(username="carol"))
    client.get("/accounts/")  # shows, and so drops, the sign-up's messages
    # A double click, a second tab, the signed-in owner: the same plain page, which names neither account nor address.
    for visitor in (Client(), client):
        again = visitor.post(link, follow=True)
        page = again.content.decode()
        assert again.status_code == 200 and "This address is confirmed" in page
        assert "carol@example.com" not in page and "<strong>carol</strong>" not in page


def test_a_link_opened_once_confirmed_names_neither_the_account_nor_the_address(signed_in, user, post_and_mail):
    from django.core import mail
    from django.test import Client

    _set_email(post_and_mail, signed_in, "alice@example.com")
    link = confirmation_path(mail.outbox[0])
    assert "alice@example.com" in Client().get(link).content.decode()  # before: the page says what it confirms
    Client().post(link)
    page = Client().get(link).content.decode()
    assert "This address is confirmed" in page
    assert "alice@example.com" not in page and "<strong>alice</strong>" not in page


def test_confirming_another_accounts_address_while_signed_in_says_whose_it_is(
    signed_in, user, other_user, post_and_mail
):
    from django.core import mail
    from django.test import Client

    bob = Client()
    bob.force_login(other_user)
    _set_email(post_and_mail, bob, "bob@example.com")
    link = confirmation_path(mail.outbox[0])
    page = re.sub(r"\s+", " ", signed_in.get(link).content.decode())
    assert f"You are signed in as alice; this confirms {other_user.username}’s address." in page
    assert "You are signed in as" not in Client().get(link).content.decode()


def test_an_expired_link_says_how_to_get_a_new_one_whether_or_not_the_reader_is_signed_in(
    signed_in, user, post_and_mail, settings
):
    import time

    from django.core import mail
    from django.test import Client

    settings.EMAIL_CONFIRMATION_TIMEOUT = 1
    _set_email(post_and_mail, signed_in, "alice@example.com")
    link = confirmation_path(mail.outbox[0])
    time.sleep(2.1)  # the token counts whole seconds
    signed_out_page = re.sub(r"\s+", " ", Client().get(link).content.decode())
    signed_in_page = re.sub(r"\s+", " ", signed_in.get(link).content.decode())
    assert "Sign in and send a new one" in signed_out_page
    assert "Sign in" not in signed_in_page and "Send a new one from your Account page" in signed_in_page
    forged = re.sub(r"\s+", " ", Client().get(link[:-5] + "/").content.decode())
    assert "This link does not work: " not in forged and "This link does not work" in forged


def test_saving_no_address_when_there_is_none_says_nothing_changed(signed_in, user, post_and_mail):
    said = _messages(signed_in.get(_set_email(post_and_mail, signed_in, "")["Location"]))
    assert said == ["Your account has no email address; nothing was changed."]


def test_removing_a_confirmed_address_says_a_notice_is_on_its_way_to_it(signed_in, user, post_and_mail):
    user.email = "alice@example.com"
    user.save()
    email_confirm(user)
    said = _messages(signed_in.get(_set_email(post_and_mail, signed_in, "")["Location"]))
    assert "A notice is on its way to the address you removed." in said
    assert not any("previous address" in text for text in said)


@pytest.mark.django_db(transaction=True)  # as served: no transaction around the request, so the broker is tried at once
def test_send_the_link_again_with_the_broker_down_says_the_link_is_on_its_way_which_the_sweep_then_sends(
    client, user, settings, reset_queue
):
    from tests.processes import NO_BROKER_URL, broker_switched

    user.email = "alice@example.com"
    user.save()
    client.force_login(user)
    with broker_switched(settings, NO_BROKER_URL):
        said = _messages(client.post("/accounts/email/confirmation/", follow=True))
    assert [text.split(";")[0] for text in said] == ["A link to confirm alice@example.com is on its way to it"]
    services.email_confirmations_sweep()
    assert [message["kwargs"] for message in reset_queue.messages()] == [{"email": "alice@example.com"}]


def test_saving_addresses_past_the_accounts_allowance_saves_the_address_and_says_when_to_ask_for_its_link(
    signed_in, user, post_and_mail, settings
):
    from django.core import mail

    settings.EMAIL_CONFIRMATION_THROTTLE_RATE = "1/hour"
    _set_email(post_and_mail, signed_in, "alice@exmaple.com")
    said = _messages(signed_in.get(_set_email(post_and_mail, signed_in, "alice@example.com")["Location"]))
    assert said[-1:] == ["Your address alice@example.com was saved, but waits for confirmation: too many addresses were "
                    "saved for your account lately. Press “Send the link again” to have it sent."]
    assert [message.to for message in mail.outbox] == [["alice@exmaple.com"]]
    user.refresh_from_db()
    assert user.email == "alice@example.com"


def test_every_id_the_api_token_fields_are_described_by_exists(signed_in):
    page = signed_in.get("/accounts/").content.decode()
    described_by = re.findall(r'aria-describedby="([^"]+)"', page)
    assert described_by
    for ids in described_by:
        for element_id in ids.split():
            assert f'id="{element_id}"' in page, element_id


def _logged_in_again_after(client, path: str, data: dict | None = None):
    """A form of the account page sent after the session ended (logged out in another tab), then the log-in it leads
    to: the pages that follow, from the log-in page's redirect on."""
    client.post("/accounts/logout/", follow=True)
    sent = client.post(path, data or {})
    assert sent.status_code == 302 and sent["Location"].startswith("/accounts/login/?next=")
    assert client.get(sent["Location"]).status_code == 200
    return client.post(sent["Location"], {"username": "alice", "password": PASSWORD}, follow=True)


def test_an_address_saved_after_the_session_ended_is_not_saved_and_the_account_page_says_to_save_it_again(
    signed_in, user
):
    shown = _logged_in_again_after(signed_in, EMAIL, {"email-email": "alice@example.com", "email-password": PASSWORD})
    assert shown.status_code == 200 and shown.redirect_chain[-1] == ("/accounts/", 302)
    assert _messages(shown) == ["Your email address was not changed: type it and your password again, and save it."]
    user.refresh_from_db()
    assert user.email == ""  # a GET changes nothing


def test_send_the_link_again_pressed_after_the_session_ended_sends_nothing_and_says_to_press_it_again(
    signed_in, user, settings
):
    from accounts.models import EmailAddressState

    user.email = "alice@example.com"
    user.save()
    services.email_address_state_ensure(user=user)
    before = list(EmailAddressState.objects.filter(user=user).values())
    shown = _logged_in_again_after(signed_in, "/accounts/email/confirmation/")
    assert shown.status_code == 200 and shown.redirect_chain[-1] == ("/accounts/", 302)
    assert _messages(shown) == ["No link was sent: press “Send the link again” to send one."]
    assert list(EmailAddressState.objects.filter(user=user).values()) == before
    # Where the page offers no such button (confirmed meanwhile, or a site that sends no mail), nothing is to press.
    settings.EMAIL_BACKEND = "django.core.mail.backends.dummy.EmailBackend"
    again = signed_in.get("/accounts/email/confirmation/", follow=True)
    assert again.redirect_chain == [("/accounts/", 302)] and _messages(again) == []


def test_a_token_asked_for_after_the_session_ended_is_not_made_and_the_account_page_says_to_ask_again(
    signed_in, user
):
    shown = _logged_in_again_after(signed_in, "/accounts/tokens/", {"name": "laptop", "password": PASSWORD})
    assert shown.status_code == 200 and shown.redirect_chain[-1] == ("/accounts/", 302)
    assert _messages(shown) == ["No token was made: type its name and your password again, and create it."]
    assert not ApiToken.objects.exists()
    assert signed_in.head("/accounts/tokens/").status_code == 302 and not ApiToken.objects.exists()


def test_a_token_revoked_after_the_session_ended_is_kept_and_the_account_page_says_to_revoke_it_again(
    signed_in, user, other_user
):
    token, _ = api_token_create(user=user, name="laptop")
    shown = _logged_in_again_after(signed_in, f"/accounts/tokens/{token.pk}/revoke/")
    assert shown.status_code == 200 and shown.redirect_chain[-1] == ("/accounts/", 302)
    assert _messages(shown) == ["The token “laptop” was not revoked: press its Revoke button again to revoke it."]
    assert ApiToken.objects.filter(pk=token.pk).exists()
    # Revoked meanwhile, or never theirs: nothing is left to press, and the page says so as its button would.
    theirs, _ = api_token_create(user=other_user, name="theirs")
    for token_id in (theirs.pk, token.pk + theirs.pk):
        again = signed_in.get(f"/accounts/tokens/{token_id}/revoke/", follow=True)
        assert again.redirect_chain == [("/accounts/", 302)]
        assert _messages(again) == ["That token was revoked already, perhaps from another tab: it is no longer "
                                    "among your tokens."]
    assert ApiToken.objects.count() == 2


def test_a_deletion_sent_after_the_session_ended_deletes_nothing_and_the_account_page_says_to_confirm_it_again(
    signed_in, user, client, staff_user
):
    shown = _logged_in_again_after(signed_in, "/accounts/delete/", {"password": PASSWORD, "understood": "on"})
    assert shown.status_code == 200 and shown.redirect_chain[-1] == ("/accounts/", 302)
    assert _messages(shown) == ["Nothing was deleted: type your password and tick the box again to delete your "
                                "account."]
    assert type(user).objects.filter(pk=user.pk).exists()
    # An administrator's account is not deleted from this page: nothing is to send again.
    client.force_login(staff_user)
    again = client.get("/accounts/delete/", follow=True)
    assert again.redirect_chain == [("/accounts/", 302)] and _messages(again) == []
