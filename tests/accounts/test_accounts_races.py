"""Two tabs at once: a sign-up sent twice, a reset link used twice, and an account deleted while another tab of it
changes its password, its address or its tokens. Run for real, on PostgreSQL, whose locks make the overlap happen
every time: the tab that goes first holds its transaction open until the other waits for it."""
import threading

import pytest
from django.contrib.auth import get_user_model
from django.db import connection, transaction
from django.test import Client
from django.utils.encoding import force_bytes
from django.utils.http import urlsafe_base64_encode

from accounts.models import ApiToken, EmailAddressState
from accounts.services import account_delete
from accounts.tokens import password_reset_token_generator

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif("connection.vendor != 'postgresql'", reason="the overlap is arranged with PostgreSQL's locks"),
]

PASSWORD = "correct horse battery"  # the user fixture's


def _lock_waits() -> int:
    with connection.cursor() as cursor:
        # Read live, not from a snapshot: pg_locks is no table of the transaction's.
        cursor.execute("SELECT count(*) FROM pg_locks WHERE NOT granted")
        return cursor.fetchone()[0]


def overtaken(*, first, then: list) -> list:
    """Runs ``first`` in a transaction of its own thread and holds it open while each of ``then`` (a request from
    another tab) runs in a thread of its own, until every one of them waits for a lock ``first`` took; then commits
    it. Returns what each of ``then`` returned (or raised), in order."""
    holding, release = threading.Event(), threading.Event()
    answers: list = [None] * len(then)

    def first_tab() -> None:
        try:
            with transaction.atomic():
                first()
                holding.set()
                release.wait(15)
        finally:
            connection.close()

    def other_tab(index: int) -> None:
        try:
            answers[index] = then[index]()
        except Exception as exc:  # noqa: BLE001 - a server error is an answer here, asserted on
            answers[index] = exc
        finally:
            connection.close()

    tab = threading.Thread(target=first_tab)
    tab.start()
    others = [threading.Thread(target=other_tab, args=(index,)) for index in range(len(then))]
    try:
        assert holding.wait(15)
        for other in others:
            other.start()
        for _ in range(300):
            if _lock_waits() >= len(then):
                break
            threading.Event().wait(0.05)
        else:
            pytest.fail(f"the other tabs never all waited for the first one ({_lock_waits()} waiting): {answers}")
    finally:
        release.set()
        tab.join()
        for other in others:
            other.join(30)
    return answers


def _deleted(user):
    return lambda: account_delete(user=get_user_model().objects.get(pk=user.pk))


def _signed_in(user) -> Client:
    client = Client(raise_request_exception=False)
    client.force_login(user)
    return client


def test_a_password_changed_in_one_tab_while_another_deletes_the_account_does_not_bring_the_account_back(user):
    tab = _signed_in(user)
    (answer,) = overtaken(first=_deleted(user), then=[lambda: tab.post("/accounts/password/", {
        "old_password": PASSWORD, "new_password1": "a-New-pass-482", "new_password2": "a-New-pass-482"})])

    assert not get_user_model().objects.filter(pk=user.pk).exists()
    assert answer.status_code == 302 and answer["Location"] == "/accounts/login/"
    page = tab.get(answer["Location"]).content.decode()
    assert "Your account was deleted" in page and "nothing was changed" in page
    assert tab.get("/accounts/")["Location"].startswith("/accounts/login/")  # signed out


def test_an_address_saved_in_one_tab_while_another_deletes_the_account_says_it_is_gone_not_a_server_error(user):
    tab = _signed_in(user)
    (answer,) = overtaken(first=_deleted(user), then=[lambda: tab.post("/accounts/email/", {
        "email-email": "alice@example.com", "email-password": PASSWORD})])

    assert not isinstance(answer, Exception), answer
    assert answer.status_code == 302 and answer["Location"] == "/accounts/login/"
    assert "Your account was deleted" in tab.get(answer["Location"]).content.decode()
    assert not get_user_model().objects.filter(pk=user.pk).exists() and not EmailAddressState.objects.exists()


def test_a_token_made_in_one_tab_while_another_deletes_the_account_says_it_is_gone_not_a_server_error(user):
    tab = _signed_in(user)
    (answer,) = overtaken(first=_deleted(user), then=[lambda: tab.post("/accounts/tokens/", {
        "name": "script", "password": PASSWORD})])

    assert not isinstance(answer, Exception), answer
    assert answer.status_code == 302 and answer["Location"] == "/accounts/login/"
    assert "Your account was deleted" in tab.get(answer["Location"]).content.decode()
    assert not ApiToken.objects.exists() and not get_user_model().objects.filter(pk=user.pk).exists()


def test_one_reset_link_used_in_two_tabs_at_once_sets_one_password_and_says_so(user):
    link = "/accounts/password/reset/{}/{}/".format(urlsafe_base64_encode(force_bytes(user.pk)),
                                                     password_reset_token_generator.make_token(user))
    tabs = [Client(raise_request_exception=False), Client(raise_request_exception=False)]
    forms = [tab.get(link)["Location"] for tab in tabs]
    assert all(form.endswith("/set-password/") for form in forms)
    passwords = ["first-New-pass-482", "second-New-pass-593"]

    def sent(index: int):
        return lambda: tabs[index].post(forms[index], {"new_password1": passwords[index],
                                                       "new_password2": passwords[index]})

    # Something else holds the account's row a moment (a log-in recording its time): both forms arrive meanwhile.
    answers = overtaken(first=lambda: get_user_model().objects.select_for_update().get(pk=user.pk),
                        then=[sent(0), sent(1)])

    assert not [answer for answer in answers if isinstance(answer, Exception)], answers
    done = [index for index, answer in enumerate(answers) if answer.status_code == 302]
    assert len(done) == 1, [answer.status_code for answer in answers]
    (refused,) = [answers[index] for index in range(2) if index not in done]
    assert "This link does not work" in refused.content.decode()
    user.refresh_from_db()
    assert user.check_password(passwords[done[0]])


def test_a_name_sent_twice_at_once_makes_one_account_and_says_the_name_is_taken_not_a_server_error():
    form = {"username": "carol", "password1": "a-Long-pass-123", "password2": "a-Long-pass-123"}
    tab = Client(raise_request_exception=False)
    # The first click's account is being made when the second click's form arrives.
    (answer,) = overtaken(first=lambda: get_user_model().objects.create_user(username="carol", password="x-Pass-9-long"),
                          then=[lambda: tab.post("/accounts/signup/", form)])

    assert not isinstance(answer, Exception), answer
    assert answer.status_code == 400 and "already exists" in answer.content.decode()
    assert get_user_model().objects.filter(username="carol").count() == 1
