"""The tasks that mail reset links, confirmation links and change notices: through a real SMTP server, retrying what
may pass, routed to a worker."""
import logging
import re

import pytest

from accounts import tasks

pytestmark = pytest.mark.django_db

SITE = "https://digits.example.com"


@pytest.fixture
def alice(confirmed_user):
    return confirmed_user(username="alice", password="correct horse battery",
                          email="alice@example.com")


@pytest.fixture
def alice_work(confirmed_user, alice):
    """A second account with alice's address."""
    return confirmed_user(username="alice-work", password="x9!kQ2#vLp",
                          email="alice@example.com")


@pytest.fixture(autouse=True)
def retries_run_at_once(monkeypatch):
    """Run here, a task's retries run at once, one after another, without their waits: Celery goes on to each only
    while a task's errors are kept in its result (.get() still raises them) instead of raised."""
    from mnistsite.celery import app

    monkeypatch.setitem(app.conf, "task_eager_propagates", False)


def _send(address: str = "alice@example.com"):
    """Run the task here, as a worker would."""
    return tasks.password_reset_email_send.apply(kwargs={"email": address})


def _account(message) -> str:
    return re.search(r'account "([^"]+)"', message.get_content()).group(1)


def _accounts(message) -> list[str]:
    return re.findall(r'account "([^"]+)"', message.get_content())


def test_the_task_mails_the_address_one_message_with_a_link_to_the_site_url_for_each_account(
    smtp_settings, mail_server, alice, alice_work, client
):
    smtp_settings.SITE_URL = SITE
    smtp_settings.DEFAULT_FROM_EMAIL = "digits@example.com"
    assert _send("ALICE@example.com").get() == 2
    (message,) = mail_server.received
    assert _accounts(message) == ["alice", "alice-work"]
    assert (message["To"], message["From"]) == ("alice@example.com", "digits@example.com")
    assert message["Subject"] == "Reset your password on digits.example.com"
    paths = re.findall(r"^https://digits\.example\.com(/accounts/password/reset/\S+/\S+/)\s*$", message.get_content(),
                       re.M)
    assert len(paths) == 2
    for username, path in zip(_accounts(message), paths):
        # Each link is a working one, for its own account.
        assert f"<strong>{username}</strong>" in client.get(client.get(path)["Location"]).content.decode()


def test_accounts_whose_address_is_spelled_in_another_case_get_their_links_only_at_that_spelling(
    smtp_settings, mail_server, alice, confirmed_user
):
    # Some mail servers tell the case of the name before the @ apart: a link goes only where its account's address,
    # as stored, leads. The address as asked for picks the spelling, else the oldest account's does.
    confirmed_user(username="alice-caps", password="x9!kQ2#vLp", email="ALICE@example.com")
    assert [_send(address).get() for address in ("ALICE@example.com", "Alice@example.com")] == [1, 1]
    assert [(message["To"], _accounts(message)) for message in mail_server.received] == [
        ("ALICE@example.com", ["alice-caps"]), ("alice@example.com", ["alice"])]


def test_an_address_no_active_account_has_gets_nothing(smtp_settings, mail_server, confirmed_user):
    confirmed_user(username="gone", password="x9!kQ2#vLp", email="gone@example.com",
                   is_active=False)
    confirmed_user(username="nopassword", email="nopassword@example.com")
    assert [_send(address).get() for address in ("nobody@example.com", "gone@example.com",
                                                 "nopassword@example.com")] == [0, 0, 0]
    assert mail_server.attempts == 0


@pytest.mark.parametrize("refusal", ["421 Service not available, closing channel", "451 Local error, try later"])
def test_a_mail_server_that_cannot_take_a_link_now_is_asked_again_until_it_does(
    smtp_settings, mail_server, alice, refusal, caplog
):
    mail_server.answers = [refusal, refusal]
    assert _send().get() == 1
    assert mail_server.attempts == 3 and [_account(message) for message in mail_server.received] == ["alice"]
    deferred = [record for record in caplog.records if "deferred" in record.message]
    assert [record.levelno for record in deferred] == [logging.WARNING] * 2


def test_a_retry_sends_the_links_of_the_first_try_and_no_others(
    smtp_settings, mail_server, alice, alice_work, confirmed_user
):
    from accounts.services import password_reset_email_send

    mail_server.answers = ["421 Try again later"]
    assert _send().get() == 2
    assert mail_server.attempts == 2 and [_accounts(message) for message in mail_server.received] == [
        ["alice", "alice-work"]]
    # A retry names the accounts it owes links: one given the address since gets none from it.
    confirmed_user(username="latecomer", password="x9!kQ2#vLp", email="alice@example.com")
    assert password_reset_email_send(email="alice@example.com", user_ids=[alice.pk, alice_work.pk]) == 2
    assert _accounts(mail_server.received[-1]) == ["alice", "alice-work"]


def test_a_message_refused_for_good_is_logged_and_not_retried(smtp_settings, mail_server, alice, alice_work, caplog):
    mail_server.answers = ["550 No such mailbox"]
    assert _send().get() == 0
    assert mail_server.attempts == 1 and mail_server.received == []
    (refused,) = [record for record in caplog.records if "refused the password reset email" in record.message]
    assert refused.levelno == logging.ERROR and "550" in refused.message
    assert f"users [{alice.pk}, {alice_work.pk}]" in refused.message


def test_retries_are_bounded_and_giving_up_is_logged(smtp_settings, mail_server, alice, caplog):
    mail_server.answers = ["421 Try again later"] * 100
    assert _send().get() == 0
    assert mail_server.attempts == tasks.MAX_RETRIES + 1 and mail_server.received == []
    (gave_up,) = [record for record in caplog.records if "gave up" in record.message]
    assert gave_up.levelno == logging.ERROR and f"after {tasks.MAX_RETRIES + 1} tries" in gave_up.message


def test_an_unreachable_mail_server_is_retried_like_one_that_answers_not_now(smtp_settings, alice, caplog):
    import socket

    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        smtp_settings.EMAIL_PORT = closed.getsockname()[1]  # nothing listens: every connection is refused
        assert _send().get() == 0
    deferred = [record for record in caplog.records if "deferred" in record.message]
    assert len(deferred) == tasks.MAX_RETRIES and f"after {tasks.MAX_RETRIES + 1} tries" in caplog.text


@pytest.mark.worker
def test_a_worker_process_retries_a_link_the_mail_server_could_not_take_at_first(
    start_celery_worker, mail_server, alice
):
    from accounts.services import password_reset_email_publish

    start_celery_worker(TEST_EMAIL_BACKEND="django.core.mail.backends.smtp.EmailBackend",
                        EMAIL_URL=f"smtp://127.0.0.1:{mail_server.port}", SITE_URL=SITE)
    mail_server.answers = ["421 Service not available, closing channel"]
    assert password_reset_email_publish(email="alice@example.com")
    (message,) = mail_server.wait_for(1, timeout=45)
    assert mail_server.attempts == 2 and _account(message) == "alice"
    assert f"{SITE}/accounts/password/reset/" in message.get_content()


def test_the_mail_task_goes_to_a_queue_that_the_compose_and_make_run_workers_take():
    from django.conf import settings

    from mnistsite.celery import app
    from tests.processes import REPO

    queue = app.amqp.router.route({}, tasks.password_reset_email_send.name)["queue"].name
    compose = (REPO / "docker-compose.yml").read_text()
    run_local = (REPO / "scripts" / "run_local.py").read_text()
    assert queue in {name for found in re.findall(r"celery -A mnistsite worker -Q ([\w,]+)", compose)
                     for name in found.split(",")}
    assert queue in {name for found in re.findall(r'"-Q", "([\w,]+)"', run_local) for name in found.split(",")}
    # Not the training queue: a trainer may be busy with one run for hours.
    assert queue != "training" and settings.CELERY_TASK_ROUTES["accounts.tasks.*"]["queue"] == queue


# Confirmation links and change notices.


def test_a_confirmation_link_the_mail_server_could_not_take_at_first_is_sent_again_and_works(
    smtp_settings, mail_server, user, client
):
    from accounts.selectors import user_email_confirmed
    from accounts.services import user_email_set
    from tests.accounts.conftest import confirmation_path

    smtp_settings.SITE_URL = SITE
    user_email_set(user=user, email="alice@example.com")
    mail_server.answers = ["421 Service not available, closing channel"]
    assert tasks.email_confirmation_send.apply(kwargs={"user_id": user.pk, "email": "alice@example.com"}).get() == 1
    (message,) = mail_server.received
    assert mail_server.attempts == 2 and message["To"] == "alice@example.com"
    assert client.post(confirmation_path(message)).status_code == 302
    user.refresh_from_db()
    assert user_email_confirmed(user=user)


def test_a_confirmation_queued_for_an_address_since_changed_or_confirmed_sends_nothing(
    smtp_settings, mail_server, user
):
    from accounts.services import user_email_set
    from tests.accounts.conftest import email_confirm

    user_email_set(user=user, email="alice@example.com")
    user_email_set(user=user, email="alice@example.net")
    # The first change's message, taken by a worker after the second: that one queued its own link.
    assert tasks.email_confirmation_send.apply(kwargs={"user_id": user.pk, "email": "alice@example.com"}).get() == 0
    email_confirm(user)
    assert tasks.email_confirmation_send.apply(kwargs={"user_id": user.pk, "email": "alice@example.net"}).get() == 0
    assert mail_server.attempts == 0


def test_change_notices_are_retried_a_bounded_number_of_times(smtp_settings, mail_server, user, caplog):
    mail_server.answers = ["421 Try again later"] * 100
    assert tasks.email_change_notice_send.apply(
        kwargs={"user_id": user.pk, "email": "alice@example.com", "replaced": True}).get() == 0
    assert mail_server.attempts == tasks.MAX_RETRIES + 1 and mail_server.received == []
    (gave_up,) = [record for record in caplog.records if "gave up" in record.message]
    assert gave_up.levelno == logging.ERROR and "email change notice" in gave_up.message


@pytest.mark.worker
def test_a_worker_process_mails_the_notice_and_the_link_of_a_changed_address_which_then_gets_reset_links(
    start_celery_worker, mail_server, alice, client
):
    start_celery_worker(TEST_EMAIL_BACKEND="django.core.mail.backends.smtp.EmailBackend",
                        EMAIL_URL=f"smtp://127.0.0.1:{mail_server.port}", SITE_URL=SITE)
    client.force_login(alice)
    changed = client.post("/accounts/email/", {"email-email": "alice@example.net",
                                               "email-password": "correct horse battery"})
    assert changed.status_code == 302
    received = sorted(mail_server.wait_for(2, timeout=45), key=lambda message: message["To"])
    notice, confirmation = received
    assert notice["To"] == "alice@example.com" and "was given another email address" in notice.get_content()
    assert confirmation["To"] == "alice@example.net"
    link = re.search(re.escape(SITE) + r"(/accounts/email/confirm/[^/\s]+/)", confirmation.get_content()).group(1)
    assert type(client)().post(link).status_code == 302
    assert type(client)().post("/accounts/password/reset/", {"email": "alice@example.net"}).status_code == 302
    reset = mail_server.wait_for(3, timeout=45)[-1]
    assert reset["To"] == "alice@example.net" and f"{SITE}/accounts/password/reset/" in reset.get_content()
