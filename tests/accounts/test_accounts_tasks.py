"""The task that mails password reset links: through a real SMTP server, retrying what may pass, routed to a worker."""
import logging
import re

import pytest

from accounts import tasks

pytestmark = pytest.mark.django_db

SITE = "https://digits.example.com"


@pytest.fixture
def alice(django_user_model):
    return django_user_model.objects.create_user(username="alice", password="correct horse battery",
                                                 email="alice@example.com")


@pytest.fixture
def alice_work(django_user_model, alice):
    """A second account with alice's address."""
    return django_user_model.objects.create_user(username="alice-work", password="x9!kQ2#vLp",
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
    smtp_settings, mail_server, alice, django_user_model
):
    # Some mail servers tell the case of the name before the @ apart: a link goes only where its account's address,
    # as stored, leads. The address as asked for picks the spelling, else the oldest account's does.
    django_user_model.objects.create_user(username="alice-caps", password="x9!kQ2#vLp", email="ALICE@example.com")
    assert [_send(address).get() for address in ("ALICE@example.com", "Alice@example.com")] == [1, 1]
    assert [(message["To"], _accounts(message)) for message in mail_server.received] == [
        ("ALICE@example.com", ["alice-caps"]), ("alice@example.com", ["alice"])]


def test_an_address_no_active_account_has_gets_nothing(smtp_settings, mail_server, django_user_model):
    django_user_model.objects.create_user(username="gone", password="x9!kQ2#vLp", email="gone@example.com",
                                          is_active=False)
    django_user_model.objects.create_user(username="nopassword", email="nopassword@example.com")
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
    smtp_settings, mail_server, alice, alice_work, django_user_model
):
    from accounts.services import password_reset_email_send

    mail_server.answers = ["421 Try again later"]
    assert _send().get() == 2
    assert mail_server.attempts == 2 and [_accounts(message) for message in mail_server.received] == [
        ["alice", "alice-work"]]
    # A retry names the accounts it owes links: one given the address since gets none from it.
    django_user_model.objects.create_user(username="latecomer", password="x9!kQ2#vLp", email="alice@example.com")
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
