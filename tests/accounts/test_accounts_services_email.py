"""Account services for email addresses: setting one, asking for its confirmation link, and confirming it."""
import pytest

from accounts import services
from accounts.selectors import user_email_confirmed
from tests.accounts.conftest import email_confirm

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
    assert first.notice_queued is again.notice_queued is None
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
    assert result.changed and result.notice_queued and not user_email_confirmed(user=user)
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

    unreachable = {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": "redis://127.0.0.1:1/0"}
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
    deferred = [_set(user, "shared@example.com", django_capture_on_commit_callbacks).confirmation
                for user in (second, third)]
    assert [result.link for result in deferred] == [services.ConfirmationLink.DEFERRED] * 2
    assert all(3590 < result.retry_after <= 3600 for result in deferred)
    cache.clear()  # the allowance refills, as an hour later
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
    assert result.changed and result.notice_queued and not user_email_confirmed(user=user)
    run_queued(reset_queue)
    notice, confirmation = sorted(mail.outbox, key=lambda message: message.to)
    assert notice.to == ["alice@example.com"] and "An administrator of" in notice.body
    assert "If you made this change" not in notice.body
    assert confirmation.to == ["alice@example.net"] and confirmation_path(confirmation)
