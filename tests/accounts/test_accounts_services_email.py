"""Account services for email addresses: setting one, asking for its confirmation link, and confirming it."""
import pytest

from accounts import services
from accounts.selectors import user_email_confirmed
from tests.accounts.conftest import email_confirm
from tests.caches import UNREACHABLE_REDIS_CACHE

pytestmark = pytest.mark.django_db


def _set(user, email: str, capture) -> services.EmailSetResult:
    """Set the address as a page would: its transaction committed, its mail tasks queued on the real broker."""
    with capture(execute=True):
        result = services.user_email_set(user=user, email=email)
    return result


def test_saving_the_waiting_address_again_sends_another_link_and_once_confirmed_none(
    user, reset_queue, django_capture_on_commit_callbacks
):
    first = _set(user, "alice@example.com", django_capture_on_commit_callbacks)
    again = _set(user, "alice@example.com", django_capture_on_commit_callbacks)
    assert (first.changed, first.confirmation.link) == (True, services.ConfirmationLink.QUEUED)
    assert (again.changed, again.confirmation.link) == (False, services.ConfirmationLink.QUEUED)
    assert first.notice_to == again.notice_to == ""
    email_confirm(user)
    confirmed = _set(user, "alice@example.com", django_capture_on_commit_callbacks)
    assert (confirmed.changed, confirmed.confirmation.link) == (False, services.ConfirmationLink.NOT_NEEDED)
    assert [(message["task"], message["kwargs"]) for message in reset_queue.messages()] == [
        ("accounts.tasks.email_confirmation_send", {"email": "alice@example.com"})] * 2


def test_another_spelling_before_the_at_is_another_address_and_waits_for_its_own_link(
    user, reset_queue, django_capture_on_commit_callbacks
):
    _set(user, "alice@example.com", django_capture_on_commit_callbacks)
    email_confirm(user)
    # Some mail servers tell "Alice" and "alice" apart; the domain's case is not kept, so that is no change.
    assert not _set(user, "alice@EXAMPLE.COM", django_capture_on_commit_callbacks).changed
    assert user_email_confirmed(user=user)
    result = _set(user, "Alice@example.com", django_capture_on_commit_callbacks)
    assert result.changed and result.notice_to == "alice@example.com" and not user_email_confirmed(user=user)
    assert [message["task"] for message in reset_queue.messages()] == [
        "accounts.tasks.email_confirmation_send", "accounts.tasks.email_change_notice_send",
        "accounts.tasks.email_confirmation_send"]


def test_a_link_made_for_one_account_confirms_nothing_of_another_with_the_same_address(user, other_user):
    for account in (user, other_user):
        services.user_email_set(user=account, email="shared@example.com")
    services.email_confirm(token=services.email_confirmation_token_make(user=user))
    other_user.refresh_from_db()
    assert user_email_confirmed(user=user) and not user_email_confirmed(user=other_user)


def test_confirmation_links_are_still_sent_while_the_cache_that_counts_them_is_unreachable(user):
    from django.test import override_settings

    unreachable = UNREACHABLE_REDIS_CACHE
    with override_settings(CACHES={"default": unreachable}, EMAIL_CONFIRMATION_THROTTLE_RATE="1/hour"):
        results = [services.user_email_set(user=user, email="alice@example.com").confirmation.link for _ in range(3)]
    assert results == [services.ConfirmationLink.QUEUED] * 3


def test_links_owed_while_an_address_waits_for_its_allowance_go_together_in_one_message(
    django_user_model, reset_queue, django_capture_on_commit_callbacks, settings
):
    from django.core import mail
    from django.core.cache import cache

    from tests.accounts.conftest import run_queued

    settings.EMAIL_CONFIRMATION_THROTTLE_RATE = "1/hour"
    first, second, third = (django_user_model.objects.create_user(username=name) for name in ("ann", "ben", "cat"))
    assert _set(first, "shared@example.com", django_capture_on_commit_callbacks).confirmation.link \
        is services.ConfirmationLink.QUEUED
    run_queued(reset_queue)
    owed = [_set(user, "shared@example.com", django_capture_on_commit_callbacks).confirmation
            for user in (second, third)]
    assert [result.link for result in owed] == [services.ConfirmationLink.QUEUED] * 2
    cache.clear()  # the allowance refills, as an hour later
    services.email_confirmations_sweep()
    run_queued(reset_queue)
    assert len(mail.outbox) == 2
    names = [line for line in mail.outbox[1].body.splitlines() if line.startswith("The account ")]
    # Those that asked first, then the one that waits without having asked again.
    assert names == ['The account "ben":', 'The account "cat":', 'The account "ann":']
    assert run_queued(reset_queue) == []


def test_one_message_lists_ten_accounts_at_most_and_the_rest_get_theirs_in_the_next(
    django_user_model, reset_queue, django_capture_on_commit_callbacks, settings
):
    from django.core import mail

    from tests.accounts.conftest import run_queued

    settings.EMAIL_CONFIRMATION_THROTTLE_RATE = ""
    users = [django_user_model.objects.create_user(username=f"user{n:02}") for n in range(12)]
    for user in users:
        _set(user, "shared@example.com", django_capture_on_commit_callbacks)
    run_queued(reset_queue)
    first, *_others = mail.outbox
    assert first.body.count("/accounts/email/confirm/") == 10 and "2 more accounts" in first.body
    run_queued(reset_queue)
    bodies = [message.body for message in mail.outbox[1:] if "user10" in message.body]
    assert bodies and all("user11" in body for body in bodies)


def test_an_address_staff_change_waits_for_its_link_and_the_confirmed_one_it_replaced_is_told_staff_did_it(
    user, reset_queue, django_capture_on_commit_callbacks
):
    from django.core import mail

    from tests.accounts.conftest import confirmation_path, run_queued

    user.email = "alice@example.com"
    user.save()
    email_confirm(user)
    with django_capture_on_commit_callbacks(execute=True):
        result = services.user_email_set(user=user, email="alice@example.net", by_staff=True)
    assert result.changed and result.notice_to == "alice@example.com" and not user_email_confirmed(user=user)
    run_queued(reset_queue)
    notice, confirmation = sorted(mail.outbox, key=lambda message: message.to)
    assert notice.to == ["alice@example.com"] and "An administrator of" in notice.body
    assert "If you made this change" not in notice.body
    assert confirmation.to == ["alice@example.net"] and confirmation_path(confirmation)


def test_one_account_saving_address_after_address_mails_only_as_many_as_its_allowance_lets_through(
    user, reset_queue, django_capture_on_commit_callbacks, settings
):
    from django.core import mail

    from tests.accounts.conftest import run_queued

    settings.EMAIL_CONFIRMATION_THROTTLE_RATE = "3/hour"
    results = []
    for n in range(20):
        # Each message sent before the next address is saved, as a worker would send it.
        results.append(_set(user, f"victim{n}@example.com", django_capture_on_commit_callbacks).confirmation)
        run_queued(reset_queue)
    services.email_confirmations_sweep()
    run_queued(reset_queue)
    assert [message.to for message in mail.outbox] == [[f"victim{n}@example.com"] for n in range(3)]
    assert [result.link for result in results] == [services.ConfirmationLink.QUEUED] * 3 + [
        services.ConfirmationLink.THROTTLED] * 17
    # Its allowance for links sent again is untouched: "Send the link again" sends one now, and counts against it.
    assert all("Press “Send the link again” to have it sent." in result.refusal for result in results[3:])
    user.refresh_from_db()
    assert user.email == "victim19@example.com" and not user_email_confirmed(user=user)


def test_an_address_saved_over_the_accounts_allowance_waits_and_its_link_is_sent_when_asked_for_again(
    user, reset_queue, django_capture_on_commit_callbacks, settings
):
    from django.core import mail
    from django.core.cache import cache

    from tests.accounts.conftest import run_queued

    settings.EMAIL_CONFIRMATION_THROTTLE_RATE = "1/hour"
    _set(user, "alice@exmaple.com", django_capture_on_commit_callbacks)
    run_queued(reset_queue)
    refused = _set(user, "alice@example.com", django_capture_on_commit_callbacks).confirmation
    assert refused.link is services.ConfirmationLink.THROTTLED and "to have it sent" in refused.refusal
    run_queued(reset_queue)
    services.email_confirmations_sweep()
    run_queued(reset_queue)
    assert [message.to for message in mail.outbox] == [["alice@exmaple.com"]]
    # "Send the link again" counts apart from the changes: it goes at once.
    with django_capture_on_commit_callbacks(execute=True):
        again = services.email_confirmation_request(user=user)
    assert again.link is services.ConfirmationLink.QUEUED
    run_queued(reset_queue)
    assert [message.to for message in mail.outbox] == [["alice@exmaple.com"], ["alice@example.com"]]
    cache.clear()


def test_a_link_owed_while_its_address_allowance_is_spent_is_queued_by_nobody_and_sent_once_by_the_sweep(
    django_user_model, reset_queue, django_capture_on_commit_callbacks, settings
):
    from django.core import mail
    from django.core.cache import cache

    from tests.accounts.conftest import run_queued

    settings.EMAIL_CONFIRMATION_THROTTLE_RATE = "1/hour"
    ann, ben = (django_user_model.objects.create_user(username=name) for name in ("ann", "ben"))
    _set(ann, "shared@example.com", django_capture_on_commit_callbacks)
    run_queued(reset_queue)
    owed = _set(ben, "shared@example.com", django_capture_on_commit_callbacks).confirmation
    # Said alike whether it goes now or waits: nobody learns that the address was sent links lately.
    assert owed.link is services.ConfirmationLink.QUEUED
    # No message waits on the broker for an hour (one a lost worker would hold, and Redis hand out twice).
    assert reset_queue.messages() == []
    services.email_confirmations_sweep()
    assert reset_queue.messages() == [] and len(mail.outbox) == 1
    cache.clear()  # the allowance refills, as an hour later
    services.email_confirmations_sweep()
    services.email_confirmations_sweep()
    run_queued(reset_queue)
    assert len(mail.outbox) == 2 and 'The account "ben":' in mail.outbox[1].body
    services.email_confirmations_sweep()
    assert run_queued(reset_queue) == [] and len(mail.outbox) == 2


@pytest.mark.django_db(transaction=True)  # as served: no transaction around the change, so the broker is tried at once
def test_a_link_the_broker_could_not_take_is_on_its_way_all_the_same_and_the_sweep_sends_it(
    user, settings, reset_queue
):
    from django.core import mail

    from tests.accounts.conftest import run_queued
    from tests.processes import NO_BROKER_URL, broker_switched

    with broker_switched(settings, NO_BROKER_URL):
        result = services.user_email_set(user=user, email="alice@example.com")
    assert result.confirmation.link is services.ConfirmationLink.QUEUED
    services.email_confirmations_sweep()
    run_queued(reset_queue)
    (message,) = mail.outbox
    assert message.to == ["alice@example.com"]
    services.email_confirmations_sweep()
    assert run_queued(reset_queue) == []


def _at_once(*calls):
    """Run ``calls`` in threads, each started while the one before waits on the mail server; their results."""
    import threading
    import time

    from django.db import connection

    results = [None] * len(calls)

    def run(index, call):
        try:
            results[index] = call()
        finally:
            connection.close()

    threads = [threading.Thread(target=run, args=(index, call)) for index, call in enumerate(calls)]
    for thread in threads:
        thread.start()
        time.sleep(0.5)
    for thread in threads:
        thread.join(timeout=30)
    return results


@pytest.mark.django_db(transaction=True)  # the two senders see each other's writes, as two workers do
def test_two_copies_of_a_notice_task_running_at_once_mail_it_once(smtp_settings, mail_server, confirmed_user):
    from accounts.models import EmailChangeNotice
    from tests.accounts.conftest import SLOW

    alice = confirmed_user(username="alice", email="alice@example.com")
    services.user_email_set(user=alice, email="")
    (notice,) = EmailChangeNotice.objects.all()
    mail_server.answers = [SLOW, SLOW]
    sent = _at_once(*[lambda: services.email_change_notice_send(notice_id=notice.pk)] * 2)
    assert sorted(sent) == [False, True] and len(mail_server.received) == 1


@pytest.mark.django_db(transaction=True)  # the two senders see each other's writes, as two workers do
def test_two_confirmation_sends_for_one_address_at_once_mail_its_owed_links_once(
    smtp_settings, mail_server, user, settings
):
    from django.utils import timezone

    from accounts.models import EmailAddressState
    from tests.accounts.conftest import SLOW

    settings.EMAIL_CONFIRMATION_THROTTLE_RATE = ""
    with settings_no_mail(settings):
        services.user_email_set(user=user, email="alice@example.com")
    EmailAddressState.objects.filter(user=user).update(link_requested_at=timezone.now())
    mail_server.answers = [SLOW, SLOW]
    sent = _at_once(*[lambda: services.email_confirmation_send(email="alice@example.com")] * 2)
    assert sorted(sent) == [0, 1] and len(mail_server.received) == 1
    assert services.email_confirmation_send(email="alice@example.com") == 0


def settings_no_mail(settings):
    """While open, the site sends no mail: an address saved asks for no link, and queues nothing."""
    import contextlib

    @contextlib.contextmanager
    def switched():
        backend = settings.EMAIL_BACKEND
        settings.EMAIL_BACKEND = "django.core.mail.backends.dummy.EmailBackend"
        try:
            yield
        finally:
            settings.EMAIL_BACKEND = backend

    return switched()


def _owed_since(user, email: str, *, hours: float) -> None:
    """``user`` has ``email``, waiting, and asked for its link ``hours`` ago, unsent since (a mail server refusing)."""
    import datetime as dt

    from django.utils import timezone

    from accounts.models import EmailAddressState

    type(user).objects.filter(pk=user.pk).update(email=email)
    user.email = email
    asked = timezone.now() - dt.timedelta(hours=hours)
    EmailAddressState.objects.update_or_create(user=user, defaults={"set_at": asked, "link_requested_at": asked})


def test_a_link_owed_for_a_day_since_it_was_last_asked_for_is_given_up_with_an_error(user, reset_queue, caplog):
    import logging

    from accounts.models import EmailAddressState

    _owed_since(user, "alice@example.com", hours=24.5)
    with caplog.at_level(logging.ERROR, logger="accounts"):
        assert services.email_confirmations_sweep() == 0
    assert EmailAddressState.objects.get(user=user).link_requested_at is None and reset_queue.messages() == []
    assert [(record.levelno, record.message) for record in caplog.records if "gave up" in record.message] == [
        (logging.ERROR, f"gave up on the email confirmation link owed to user {user.pk} for a day, unsent")]


def test_a_link_asked_for_again_gets_a_full_day_from_that_press_and_keeps_its_place_in_the_queue(
    user, reset_queue, caplog
):
    import logging

    from accounts.models import EmailAddressState

    _owed_since(user, "alice@example.com", hours=25)
    first = EmailAddressState.objects.get(user=user).link_requested_at
    # "Send the link again", pressed once the first request is a day old.
    assert services.email_confirmation_request(user=user).link is services.ConfirmationLink.QUEUED
    with caplog.at_level(logging.ERROR, logger="accounts"):
        services.email_confirmations_sweep()
    # Owed still, and listed as first asked for: before accounts that asked for theirs since.
    assert EmailAddressState.objects.get(user=user).link_requested_at == first
    assert not [record for record in caplog.records if "gave up" in record.message]
    assert [message["kwargs"] for message in reset_queue.messages()] == [{"email": "alice@example.com"}]


def test_a_deactivated_account_is_owed_no_link_and_spends_none_of_its_allowance(
    user, reset_queue, settings, django_capture_on_commit_callbacks
):
    from accounts.models import EmailAddressState

    settings.EMAIL_CONFIRMATION_THROTTLE_RATE = "1/hour"
    type(user).objects.filter(pk=user.pk).update(is_active=False)
    user.refresh_from_db()
    with django_capture_on_commit_callbacks(execute=True):
        saved = services.user_email_set(user=user, email="alice@example.com")
        again = services.email_confirmation_request(user=user)
    assert saved.changed and saved.confirmation.link is again.link is services.ConfirmationLink.INACTIVE
    assert EmailAddressState.objects.get(user=user).link_requested_at is None and reset_queue.messages() == []
    type(user).objects.filter(pk=user.pk).update(is_active=True)
    user.refresh_from_db()
    # Reactivated, its allowances are whole: the presses while it was deactivated cost nothing.
    with django_capture_on_commit_callbacks(execute=True):
        assert services.email_confirmation_request(user=user).link is services.ConfirmationLink.QUEUED
    assert [message["kwargs"] for message in reset_queue.messages()] == [{"email": "alice@example.com"}]


def test_the_confirmation_sweep_finds_links_owed_through_an_index_not_a_scan_of_every_account(user, reset_queue):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    if connection.vendor != "postgresql":
        pytest.skip("the plan asked of PostgreSQL")
    _owed_since(user, "alice@example.com", hours=1)
    with CaptureQueriesContext(connection) as queries:
        services.email_confirmations_sweep()
    scans = [query["sql"] for query in queries.captured_queries
             if query["sql"].startswith("SELECT") and 'FROM "accounts_emailaddressstate"' in query["sql"]]
    assert len(scans) == 2  # the links to give up, the addresses to queue
    with connection.cursor() as cursor:
        # As on a table of many accounts: a scan of every row costs more than the index.
        cursor.execute("SET LOCAL enable_seqscan = off")
        for sql in scans:
            cursor.execute(f"EXPLAIN {sql}")
            plan = "\n".join(row[0] for row in cursor.fetchall())
            assert "email_address_state_link_owed" in plan, plan


# A deleted account leaves no address behind but the one a notice is still owed to, until it is sent.


def test_deleting_an_account_deletes_its_sent_notices_and_keeps_one_still_owed_only_until_it_is_sent(
    confirmed_user
):
    from django.core import mail

    from accounts.models import EmailChangeNotice

    alice = confirmed_user(username="alice", email="alice@example.com")
    services.user_email_set(user=alice, email="alice@example.net")
    (sent,) = EmailChangeNotice.objects.all()
    assert services.email_change_notice_send(notice_id=sent.pk)
    email_confirm(alice)
    services.user_email_set(user=alice, email="")  # removed, its notice still on its way when the account goes
    owed = EmailChangeNotice.objects.get(address="alice@example.net")
    bob = confirmed_user(username="bob", email="bob@example.com")
    services.user_email_set(user=bob, email="bob@example.net")
    (bobs,) = EmailChangeNotice.objects.filter(user=bob)
    assert services.email_change_notice_send(notice_id=bobs.pk)

    services.account_delete(user=alice)

    assert list(EmailChangeNotice.objects.filter(username="alice").values_list("pk", "user_id")) == [(owed.pk, None)]
    assert services.email_change_notice_send(notice_id=owed.pk)
    assert mail.outbox[-1].to == ["alice@example.net"] and "alice" in mail.outbox[-1].body
    # Sent, it was needed no more; another account's notices stay with it.
    assert list(EmailChangeNotice.objects.all()) == [bobs]


def test_the_notice_sweep_deletes_the_finished_notices_that_deleted_accounts_left_and_nothing_else(
    confirmed_user, reset_queue
):
    import datetime as dt

    from django.contrib.auth import get_user_model
    from django.utils import timezone

    from accounts import tasks
    from accounts.models import EmailChangeNotice

    now, day = timezone.now(), dt.timedelta(days=1)
    carol = confirmed_user(username="carol", email="carol@example.com")
    services.user_email_set(user=carol, email="carol@example.net")
    # Left by accounts deleted in a shell, or before deleting one took its notices along.
    for name in ("dave", "erin", "frank"):
        services.user_email_set(user=confirmed_user(username=name, email=f"{name}@example.com"), email="")
    get_user_model().objects.filter(username__in=["dave", "erin", "frank"]).delete()
    EmailChangeNotice.objects.filter(username__in=["carol", "dave"]).update(sent_at=now)
    EmailChangeNotice.objects.filter(username="erin").update(given_up_at=now)
    # Owed still (queued a moment ago): kept for the worker that may be sending it.
    EmailChangeNotice.objects.filter(username="frank").update(created_at=now - day / 2, queued_at=now)

    tasks.email_change_notices_sweep.apply()

    assert sorted(EmailChangeNotice.objects.values_list("username", flat=True)) == ["carol", "frank"]


def test_every_spelling_of_one_inbox_shares_its_allowance_and_other_inboxes_do_not():
    from django.core.validators import validate_email

    from accounts.services.mail_allowances import email_key

    spellings = ["victim@example.com", "Victim@EXAMPLE.com", '"victim"@example.com', '"\\v\\ictim"@example.com',
                 "victim+1@example.com", '"victim+x"@example.com']
    for spelling in spellings:
        validate_email(spelling)  # every one of them is an address the account forms take
    assert {email_key(spelling) for spelling in spellings} == {email_key("victim@example.com")}
    assert email_key("victim2@example.com") != email_key("victim@example.com")
    assert email_key("victim@example.org") != email_key("victim@example.com")
