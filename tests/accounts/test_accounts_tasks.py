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
                                                 email="Alice@example.com")


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


def test_the_task_mails_each_account_with_the_address_a_link_to_the_site_url(
    smtp_settings, mail_server, alice, alice_work, client
):
    smtp_settings.SITE_URL = SITE
    smtp_settings.DEFAULT_FROM_EMAIL = "digits@example.com"
    assert _send("ALICE@example.com").get() == 2
    messages = mail_server.received
    assert sorted(_account(message) for message in messages) == ["alice", "alice-work"]
    for message in messages:
        assert message["From"] == "digits@example.com"
        assert message["Subject"] == "Reset your password on digits.example.com"
        path = re.search(r"^https://digits\.example\.com(/accounts/password/reset/\S+/\S+/)\s*$", message.get_content(),
                         re.M).group(1)
        # Each link is a working one, for its own account.
        assert client.get(path).status_code == 302


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


def test_a_retry_sends_only_the_links_still_owed(smtp_settings, mail_server, alice, alice_work):
    # The first account's link goes, the second's is refused for now, then taken.
    mail_server.answers = [None, "421 Try again later"]
    _send()
    assert mail_server.attempts == 3
    assert [_account(message) for message in mail_server.received] == ["alice", "alice-work"]


def test_a_link_refused_for_good_is_logged_not_retried_and_the_others_still_go(
    smtp_settings, mail_server, alice, alice_work, caplog
):
    mail_server.answers = ["550 No such mailbox"]
    assert _send().get() == 1
    assert mail_server.attempts == 2 and [_account(message) for message in mail_server.received] == ["alice-work"]
    (refused,) = [record for record in caplog.records if "refused the password reset email" in record.message]
    assert refused.levelno == logging.ERROR and f"user {alice.pk}" in refused.message and "550" in refused.message


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
