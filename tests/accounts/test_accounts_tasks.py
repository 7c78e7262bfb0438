"""The accounts' tasks: mailing reset links, confirmation links and change notices through a real SMTP server,
retrying what may pass, routed to a worker; and the daily deletion of expired sessions."""
import logging
import re

import pytest
from django.db import connection

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


def _our_log(caplog) -> str:
    # The test's mail server (aiosmtpd, logger "mail.log") logs every address it is given.
    return "\n".join(record.getMessage() for record in caplog.records if not record.name.startswith("mail."))


def test_a_message_refused_for_good_is_logged_and_not_retried_without_the_address_it_was_for(
    smtp_settings, mail_server, alice, alice_work, caplog
):
    # Servers name the refused address in their answer: the log keeps its code and whose account it was, not it.
    mail_server.answers = ["550 5.1.1 <alice@example.com>: No such mailbox"]
    assert _send().get() == 0
    assert mail_server.attempts == 1 and mail_server.received == []
    (refused,) = [record for record in caplog.records if "refused the password reset email" in record.message]
    assert refused.levelno == logging.ERROR and "550" in refused.message
    assert f"users [{alice.pk}, {alice_work.pk}]" in refused.message
    assert "alice@example.com" not in _our_log(caplog)


def test_retries_are_bounded_and_giving_up_is_logged_without_the_address(smtp_settings, mail_server, alice, caplog):
    mail_server.answers = ["450 4.2.1 <alice@example.com>: Try again later"] * 100
    assert _send().get() == 0
    assert mail_server.attempts == tasks.MAX_RETRIES + 1 and mail_server.received == []
    (gave_up,) = [record for record in caplog.records if "gave up" in record.message]
    assert gave_up.levelno == logging.ERROR and f"after {tasks.MAX_RETRIES + 1} tries" in gave_up.message
    assert "450" in gave_up.message and "alice@example.com" not in _our_log(caplog)


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


# The task's limits and the worker's EMAIL_TIMEOUT as in production, shortened: the soft limit ends the stalled send
# before a socket's timeout would, and the hard one is far enough behind it for the connection to be closed.
SHORT_LIMITS = {"soft_time_limit": 2, "time_limit": 20}
EMAIL_TIMEOUT_S = 5


def _stalling_worker(start_celery_worker, mail_server):
    return start_celery_worker(TEST_EMAIL_BACKEND="django.core.mail.backends.smtp.EmailBackend",
                               EMAIL_URL=f"smtp://127.0.0.1:{mail_server.port}", EMAIL_TIMEOUT=str(EMAIL_TIMEOUT_S), SITE_URL=SITE)


@pytest.mark.worker
def test_mail_cut_short_by_the_soft_time_limit_on_a_stalled_mail_server_is_sent_again(
    start_celery_worker, mail_server, alice, other_user
):
    from django.utils import timezone

    from accounts.models import EmailAddressState, EmailChangeNotice
    from tests.accounts.conftest import STALL

    user = other_user
    user.email = "bob@example.com"  # waiting for confirmation, its link owed, as the Account page leaves it
    user.save(update_fields=["email"])
    now = timezone.now()
    EmailAddressState.objects.create(user=user, set_at=now, link_requested_at=now)
    notice = EmailChangeNotice.objects.create(user=user, username=user.get_username(), address="bob@example.org",
                                              kind=EmailChangeNotice.REPLACED, created_at=now, queued_at=now)
    _stalling_worker(start_celery_worker, mail_server)
    # Whichever message comes first, three offers hang: each of the three is cut short once and sent again.
    mail_server.answers = [STALL] * 3
    # The messages as the site queues them now.
    tasks.password_reset_email_send.apply_async(kwargs={"email": "alice@example.com"}, **SHORT_LIMITS)
    tasks.email_confirmation_send.apply_async(kwargs={"email": "bob@example.com"}, **SHORT_LIMITS)
    tasks.email_change_notice_send.apply_async(kwargs={"notice_id": notice.pk}, **SHORT_LIMITS)
    received = mail_server.wait_for(3, timeout=90)
    assert sorted(message["To"] for message in received) == ["alice@example.com", "bob@example.com",
                                                               "bob@example.org"]
    assert mail_server.attempts == 6


@pytest.mark.worker
@pytest.mark.skipif("connection.vendor != 'postgresql'", reason="a query held by another's table lock is PostgreSQL's")
def test_a_reset_link_whose_account_lookup_the_soft_time_limit_cut_short_is_sent_again(
    start_celery_worker, mail_server, alice
):
    import time

    import psycopg

    _stalling_worker(start_celery_worker, mail_server)
    # The database stops answering the lookup (a table locked by a migration, a host gone without closing the
    # connection): the task's soft time limit ends its query, not the sending.
    with psycopg.connect(**connection.get_connection_params()) as locker:
        locker.execute("LOCK TABLE auth_user IN ACCESS EXCLUSIVE MODE")
        tasks.password_reset_email_send.apply_async(kwargs={"email": "alice@example.com"}, **SHORT_LIMITS)
        deadline = time.monotonic() + 30
        # Until the task waits for the lock (pg_locks is read live, not from a snapshot kept by the transaction).
        while not locker.execute("SELECT count(*) FROM pg_locks WHERE NOT granted "
                                 "AND relation = 'auth_user'::regclass").fetchone()[0]:
            assert time.monotonic() < deadline, "the task never looked up the accounts"
            time.sleep(0.1)
        time.sleep(SHORT_LIMITS["soft_time_limit"] + 1)
        locker.rollback()

    (message,) = mail_server.wait_for(1, timeout=45)
    assert _account(message) == "alice" and mail_server.attempts == 1


@pytest.mark.worker
def test_a_reset_message_the_server_kept_before_stalling_arrives_twice_and_either_link_works_once(
    start_celery_worker, mail_server, alice, client
):
    from django.contrib.auth import get_user_model

    from tests.accounts.conftest import KEEP_THEN_STALL

    _stalling_worker(start_celery_worker, mail_server)
    mail_server.answers = [KEEP_THEN_STALL]
    tasks.password_reset_email_send.apply_async(kwargs={"email": "alice@example.com"}, **SHORT_LIMITS)
    first, second = mail_server.wait_for(2, timeout=60)
    assert mail_server.attempts == 2
    links = [re.search(re.escape(SITE) + r"(/accounts/password/reset/\S+/\S+/)", message.get_content()).group(1)
             for message in (second, first)]
    form_page = client.get(links[0])
    assert form_page.status_code == 302
    new_password = "a fresh passphrase 42"
    assert client.post(form_page["Location"], {"new_password1": new_password,
                                               "new_password2": new_password}).status_code == 302
    assert get_user_model().objects.get(pk=alice.pk).check_password(new_password)
    # The copy kept by the stalled server is no key to the account once the password changed.
    assert "This link does not work" in type(client)().get(links[1], follow=True).content.decode()


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
    assert tasks.email_confirmation_send.apply(kwargs={"email": "alice@example.com"}).get() == 1
    (message,) = mail_server.received
    assert mail_server.attempts == 2 and message["To"] == "alice@example.com"
    assert client.post(confirmation_path(message)).status_code == 302
    user.refresh_from_db()
    assert user_email_confirmed(user=user)


def test_a_link_refused_for_want_of_such_a_mailbox_is_said_on_the_account_page_until_the_address_is_corrected(
    smtp_settings, mail_server, user, client
):
    from accounts.services import email_confirmation_request, user_email_set

    client.force_login(user)
    user_email_set(user=user, email="alice@exmaple.com")  # a typo
    mail_server.no_such_mailbox = {"alice@exmaple.com"}
    assert tasks.email_confirmation_send.apply(kwargs={"email": "alice@exmaple.com"}).get() == 0
    assert mail_server.attempts == 0  # refused at its address, before any message went
    page = client.get("/accounts/").content.decode()
    assert "waiting for confirmation" in page and "Its mail server refused the link sent on" in page

    # Sent again to a server that takes it now (the mailbox was made meanwhile): the refusal is old news.
    mail_server.no_such_mailbox = set()
    assert email_confirmation_request(user=user).link.value == "queued"
    assert tasks.email_confirmation_send.apply(kwargs={"email": "alice@exmaple.com"}).get() == 1
    assert "refused" not in client.get("/accounts/").content.decode()

    # Refused again, then corrected: the new address says nothing of the old one's refusal.
    mail_server.no_such_mailbox = {"alice@exmaple.com"}
    email_confirmation_request(user=user)
    tasks.email_confirmation_send.apply(kwargs={"email": "alice@exmaple.com"}).get()
    assert "Its mail server refused" in client.get("/accounts/").content.decode()
    user_email_set(user=user, email="alice@example.com")
    page = client.get("/accounts/").content.decode()
    assert "alice@example.com" in page and "refused" not in page


def test_a_confirmation_queued_for_an_address_since_changed_or_confirmed_sends_nothing(
    smtp_settings, mail_server, user
):
    from accounts.services import user_email_set
    from tests.accounts.conftest import email_confirm

    user_email_set(user=user, email="alice@example.com")
    user_email_set(user=user, email="alice@example.net")
    # The first change's message, taken by a worker after the second: that one queued its own link.
    assert tasks.email_confirmation_send.apply(kwargs={"email": "alice@example.com"}).get() == 0
    email_confirm(user)
    assert tasks.email_confirmation_send.apply(kwargs={"email": "alice@example.net"}).get() == 0
    assert mail_server.attempts == 0


def test_change_notices_are_retried_a_bounded_number_of_times(smtp_settings, mail_server, user, caplog):
    from accounts.models import EmailChangeNotice
    from accounts.services import user_email_set
    from tests.accounts.conftest import email_confirm

    user_email_set(user=user, email="alice@example.com")
    email_confirm(user)
    user_email_set(user=user, email="alice@example.net")
    mail_server.answers = ["421 Try again later"] * 100
    notice = EmailChangeNotice.objects.get(user=user, address="alice@example.com")
    assert tasks.email_change_notice_send.apply(kwargs={"notice_id": notice.pk}).get() == 0
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


# Notices owed to a replaced or removed confirmed address: kept until sent.


@pytest.mark.django_db(transaction=True)  # as served: no transaction around the change, so the broker is tried at once
def test_a_notice_the_broker_could_not_take_is_sent_by_the_sweep_once_it_is_back(alice, settings, reset_queue):
    import datetime as dt

    from django.core import mail
    from django.db.models import F

    from accounts import services
    from accounts.models import EmailChangeNotice
    from tests.accounts.conftest import run_queued
    from tests.processes import NO_BROKER_URL, broker_switched

    with broker_switched(settings, NO_BROKER_URL):
        assert services.user_email_set(user=alice, email="alice@example.net").notice_to == "alice@example.com"
    (notice,) = EmailChangeNotice.objects.all()
    assert (notice.user_id, notice.address, notice.kind, notice.sent_at) == (
        alice.pk, "alice@example.com", EmailChangeNotice.REPLACED, None)
    # Swept within minutes of being queued, it is left to the worker that may still be trying it.
    tasks.email_change_notices_sweep.apply()
    assert reset_queue.messages() == []
    EmailChangeNotice.objects.update(queued_at=F("queued_at") - dt.timedelta(minutes=15))
    tasks.email_change_notices_sweep.apply()
    run_queued(reset_queue)
    (message,) = mail.outbox
    assert message.to == ["alice@example.com"] and "was given another email address" in message.body
    notice.refresh_from_db()
    assert notice.sent_at is not None
    # Sent once: the same task again (a message delivered twice) sends nothing.
    assert tasks.email_change_notice_send.apply(kwargs={"notice_id": notice.pk}).get() == 0
    tasks.email_change_notices_sweep.apply()
    assert reset_queue.messages() == [] and len(mail.outbox) == 1


def test_a_notice_still_unsent_after_a_day_is_given_up_with_an_error(alice, reset_queue, caplog):
    import datetime as dt

    from django.core import mail
    from django.utils import timezone

    from accounts import services
    from accounts.models import EmailChangeNotice

    services.user_email_set(user=alice, email="")  # its transaction never commits here: nothing is queued
    long_ago = timezone.now() - dt.timedelta(days=1, minutes=1)
    EmailChangeNotice.objects.update(created_at=long_ago, queued_at=long_ago)
    with caplog.at_level(logging.ERROR, logger="accounts.services"):
        tasks.email_change_notices_sweep.apply()
    assert reset_queue.messages() == [] and mail.outbox == []
    (notice,) = EmailChangeNotice.objects.all()
    assert notice.kind == EmailChangeNotice.REMOVED and notice.given_up_at is not None and notice.sent_at is None
    assert [(record.levelno, record.message) for record in caplog.records if "gave up" in record.message] == [
        (logging.ERROR, f"gave up on the notice to the address user {alice.pk} replaced or removed a day ago, "
                        "unsent")]


@pytest.mark.parametrize("task, most_s", [("accounts.tasks.email_change_notices_sweep", 600),
                                           ("accounts.tasks.email_confirmations_sweep", 60)])
def test_the_mail_sweeps_are_scheduled_often_and_go_to_the_queue_of_the_worker_that_mails(task, most_s):
    from django.conf import settings

    from mnistsite.celery import app

    (entry,) = [entry for entry in settings.CELERY_BEAT_SCHEDULE.values() if entry["task"] == task]
    assert entry["schedule"] <= most_s and entry["options"]["expires"] <= entry["schedule"]
    assert app.amqp.router.route({}, task)["queue"].name == app.amqp.router.route(
        {}, tasks.password_reset_email_send.name)["queue"].name == "inference"


@pytest.mark.worker
def test_a_link_owed_past_its_address_allowance_is_sent_by_the_sweep_once_it_refills_and_only_once(
    start_celery_worker, mail_server, django_user_model
):
    import time

    from accounts.services import user_email_set

    # Long enough for the second link to find the allowance spent; the worker's allowances are its own (its cache, not
    # this process's).
    start_celery_worker(TEST_EMAIL_BACKEND="django.core.mail.backends.smtp.EmailBackend",
                        EMAIL_URL=f"smtp://127.0.0.1:{mail_server.port}", SITE_URL=SITE,
                        EMAIL_CONFIRMATION_THROTTLE_RATE="1/20s")
    ann, ben = (django_user_model.objects.create_user(username=name) for name in ("ann", "ben"))
    user_email_set(user=ann, email="shared@example.com")
    (first,) = mail_server.wait_for(1, timeout=30)
    first_at = time.monotonic()
    assert set(_accounts(first)) == {"ann"}
    # Its message finds the address's allowance spent, and leaves the link owed, in the database.
    user_email_set(user=ben, email="shared@example.com")
    # Beat's messages, more often than it sends them: each finds the link owed until one message carries it.
    while len(mail_server.received) < 2 and time.monotonic() - first_at < 60:
        tasks.email_confirmations_sweep.apply_async()
        time.sleep(2)
    second = mail_server.wait_for(2, timeout=5)[1]
    assert time.monotonic() - first_at > 16 and _accounts(second)[0] == "ben"
    for _ in range(3):
        tasks.email_confirmations_sweep.apply_async()
    time.sleep(4)
    assert len(mail_server.received) == mail_server.attempts == 2


def test_the_daily_sweep_deletes_expired_sessions_and_keeps_live_ones(user, client):
    from datetime import timedelta

    from django.conf import settings
    from django.contrib.sessions.models import Session
    from django.utils import timezone

    client.force_login(user)
    live = Session.objects.get()
    Session.objects.create(session_key="x" * 32, session_data="", expire_date=timezone.now() - timedelta(seconds=1))

    assert tasks.sessions_expired_delete() == 1
    assert list(Session.objects.all()) == [live]
    (entry,) = [entry for entry in settings.CELERY_BEAT_SCHEDULE.values()
                if entry["task"] == tasks.sessions_expired_delete.name]
    assert entry["schedule"].hour == {4}
