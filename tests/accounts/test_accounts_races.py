"""Two tabs at once: a sign-up sent twice, a reset link used twice, and an account deleted while another tab of it
changes its password, its address or its tokens, asks for its link again or logs in, or while staff save it, set its
password or send its link again. Run for real, on PostgreSQL, whose locks make the overlap happen every time: the tab
that goes first holds its transaction open until the other waits for it."""
import threading

import pytest
from django.contrib.auth import get_user_model
from django.db import connection
from django.test import Client
from django.utils.encoding import force_bytes
from django.utils.http import urlsafe_base64_encode

from accounts.models import ApiToken, EmailAddressState
from accounts.services import account_delete
from accounts.tokens import password_reset_token_generator
from tests.locks import held_open, lock_waits, lock_waits_reach, overtaken

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif("connection.vendor != 'postgresql'", reason="the overlap is arranged with PostgreSQL's locks"),
]

PASSWORD = "correct horse battery"  # the user fixture's


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


def _staff(django_user_model) -> Client:
    return _signed_in(django_user_model.objects.create_user(username="root", password=PASSWORD, is_staff=True,
                                                            is_superuser=True))


def test_a_link_asked_for_again_in_one_tab_while_another_deletes_the_account_says_it_is_gone_not_a_server_error(
        user):
    get_user_model().objects.filter(pk=user.pk).update(email="alice@example.com")  # no state recorded yet
    tab = _signed_in(user)
    (answer,) = overtaken(first=_deleted(user), then=[lambda: tab.post("/accounts/email/confirmation/")])

    assert not isinstance(answer, Exception), answer
    assert answer.status_code == 302 and answer["Location"] == "/accounts/login/"
    page = tab.get(answer["Location"]).content.decode()
    assert "Your account was deleted" in page and "on its way" not in page
    assert not get_user_model().objects.filter(pk=user.pk).exists() and not EmailAddressState.objects.exists()


def test_a_link_sent_again_by_staff_to_an_account_deleted_meanwhile_says_so_not_a_server_error(
        user, django_user_model):
    get_user_model().objects.filter(pk=user.pk).update(email="alice@example.com")
    staff = _staff(django_user_model)
    (answer,) = overtaken(first=_deleted(user), then=[lambda: staff.post("/admin/auth/user/", {
        "action": "email_confirmation_send_again", "_selected_action": [user.pk]})])

    assert not isinstance(answer, Exception), answer
    assert answer.status_code == 302, answer.status_code
    page = staff.get(answer["Location"]).content.decode()
    assert "1 account was deleted meanwhile: no link was sent to it." in page and "on their way" not in page
    assert not get_user_model().objects.filter(pk=user.pk).exists() and not EmailAddressState.objects.exists()


@pytest.mark.parametrize("email", ["", "alice@example.net"])
def test_a_user_saved_in_the_admin_while_the_account_is_deleted_is_not_brought_back_and_staff_are_told(
        user, django_user_model, email):
    from django.contrib.admin.models import LogEntry

    staff = _staff(django_user_model)
    form = {"username": "alice", "email": email, "first_name": "Alice", "is_active": "on",
            "date_joined_0": "2024-01-01", "date_joined_1": "00:00:00", "initial-date_joined_0": "2024-01-01",
            "initial-date_joined_1": "00:00:00"}
    (answer,) = overtaken(first=_deleted(user), then=[lambda: staff.post(f"/admin/auth/user/{user.pk}/change/", form)])

    assert not isinstance(answer, Exception), answer
    assert not get_user_model().objects.filter(pk=user.pk).exists()
    assert not EmailAddressState.objects.exists() and not LogEntry.objects.exists()
    assert answer.status_code == 302 and answer["Location"] == "/admin/auth/user/"
    page = staff.get(answer["Location"]).content.decode()
    assert "alice was deleted meanwhile" in page and "nothing was saved" in page and "successfully" not in page


def test_a_password_set_in_the_admin_while_the_account_is_deleted_does_not_bring_it_back_and_staff_are_told(
        user, django_user_model):
    staff = _staff(django_user_model)
    (answer,) = overtaken(first=_deleted(user), then=[lambda: staff.post(f"/admin/auth/user/{user.pk}/password/", {
        "password1": "a-New-pass-482", "password2": "a-New-pass-482"})])

    assert not isinstance(answer, Exception), answer
    assert not get_user_model().objects.filter(pk=user.pk).exists()
    assert answer.status_code == 302 and answer["Location"] == "/admin/auth/user/"
    page = staff.get(answer["Location"]).content.decode()
    assert "alice was deleted meanwhile" in page and "successfully" not in page


def test_a_log_in_while_the_account_is_deleted_is_refused_as_for_any_name_without_an_account(user):
    tab = Client(raise_request_exception=False)
    (answer,) = overtaken(first=_deleted(user), then=[lambda: tab.post("/accounts/login/", {
        "username": "alice", "password": PASSWORD})])

    assert not isinstance(answer, Exception), answer
    assert answer.status_code == 200, answer.status_code
    assert "Please enter a correct username and password" in answer.content.decode()
    assert tab.get("/accounts/")["Location"].startswith("/accounts/login/")  # not signed in
    assert not get_user_model().objects.filter(pk=user.pk).exists()


def test_a_token_made_by_command_for_an_account_deleted_meanwhile_is_refused_with_a_message(user):
    from django.core.management import CommandError, call_command

    (answer,) = overtaken(first=_deleted(user), then=[lambda: call_command("api_token_create", "alice")])

    assert isinstance(answer, CommandError) and "alice" in str(answer) and "deleted" in str(answer), answer
    assert not ApiToken.objects.exists() and not get_user_model().objects.filter(pk=user.pk).exists()


def test_a_log_in_to_the_admin_while_the_account_is_deleted_signs_nobody_in_and_is_no_server_error(
        django_user_model):
    staff = django_user_model.objects.create_user(username="root", password=PASSWORD, is_staff=True,
                                                  is_superuser=True)
    tab = Client(raise_request_exception=False)
    from accounts.services import users_delete

    # Deleted by another administrator, in the admin.
    (answer,) = overtaken(first=lambda: users_delete(users=[staff]), then=[lambda: tab.post(
        "/admin/login/?next=/admin/", {"username": "root", "password": PASSWORD, "next": "/admin/"})])

    assert not isinstance(answer, Exception), answer
    assert answer.status_code in (200, 302), answer.status_code
    assert tab.get("/admin/")["Location"].startswith("/admin/login/")  # nobody signed in
    assert not get_user_model().objects.filter(pk=staff.pk).exists()


def test_a_token_revoked_in_one_tab_while_another_deletes_the_account_says_the_account_is_gone(user):
    from accounts.services import api_token_create

    token, _ = api_token_create(user=user, name="laptop")
    tab = _signed_in(user)
    (answer,) = overtaken(first=_deleted(user), then=[lambda: tab.post(f"/accounts/tokens/{token.pk}/revoke/")])

    assert not isinstance(answer, Exception), answer
    assert answer.status_code == 302 and answer["Location"] == "/accounts/login/"
    page = tab.get(answer["Location"]).content.decode()
    assert "Your account was deleted" in page and "revoked already" not in page


def _wait_for_lock_waits(count: int) -> None:
    if not lock_waits_reach(count):
        pytest.fail(f"only {lock_waits()} of {count} waited")


def test_a_password_changed_while_the_account_is_being_deleted_waits_for_the_deletion_instead_of_deadlocking(user):
    from accounts.services import api_token_create, user_email_set

    api_token_create(user=user, name="laptop")
    user_email_set(user=user, email="alice@example.com")
    tab = _signed_in(user)
    answers: dict = {}

    def run(name: str, call) -> None:
        try:
            answers[name] = call()
        except Exception as exc:  # noqa: BLE001 - a deadlock is an answer here, asserted on
            answers[name] = exc
        finally:
            connection.close()

    threads = []
    try:
        # A worker recording the link it mails holds the account's address state a moment: the deletion, its
        # tokens deleted already, waits for it there, and the other tab's change comes meanwhile.
        with held_open(lambda: EmailAddressState.objects.select_for_update().get(user_id=user.pk)):
            threads.append(threading.Thread(target=run, args=("deletion", _deleted(user))))
            threads[-1].start()
            _wait_for_lock_waits(1)
            threads.append(threading.Thread(target=run, args=("tab", lambda: tab.post("/accounts/password/", {
                "old_password": PASSWORD, "new_password1": "a-New-pass-482", "new_password2": "a-New-pass-482",
                "revoke_api_tokens": "on"}))))
            threads[-1].start()
            _wait_for_lock_waits(2)
    finally:
        for thread in threads:
            thread.join(30)

    assert not [answer for answer in answers.values() if isinstance(answer, Exception)], answers
    assert answers["tab"].status_code == 302 and answers["tab"]["Location"] == "/accounts/login/"
    assert not get_user_model().objects.filter(pk=user.pk).exists() and not ApiToken.objects.exists()


def _deactivated_by_staff(user):
    def deactivate():
        locked = get_user_model().objects.select_for_update().get(pk=user.pk)
        locked.is_active = False
        locked.save(update_fields=["is_active"])

    return deactivate


def _password_changed_from(tab):
    return lambda: tab.post("/accounts/password/", {
        "old_password": PASSWORD, "new_password1": "a-New-pass-482", "new_password2": "a-New-pass-482"})


def test_a_password_changed_while_another_tab_changes_the_address_keeps_the_new_address(user):
    def address_changed_in_another_tab():
        from accounts import services

        services.user_email_set(user=get_user_model().objects.get(pk=user.pk), email="new@example.com")

    (answer,) = overtaken(first=address_changed_in_another_tab, then=[_password_changed_from(_signed_in(user))])

    assert answer.status_code == 302, answer
    stored = get_user_model().objects.get(pk=user.pk)
    assert stored.check_password("a-New-pass-482") and stored.email == "new@example.com"


def test_a_password_changed_while_staff_deactivate_the_account_leaves_it_deactivated(user):
    overtaken(first=_deactivated_by_staff(user), then=[_password_changed_from(_signed_in(user))])

    assert not get_user_model().objects.get(pk=user.pk).is_active


def test_a_password_set_by_a_reset_link_while_staff_deactivate_the_account_leaves_it_deactivated(user):
    link = "/accounts/password/reset/{}/{}/".format(urlsafe_base64_encode(force_bytes(user.pk)),
                                                     password_reset_token_generator.make_token(user))
    tab = Client(raise_request_exception=False)
    form = tab.get(link)["Location"]

    overtaken(first=_deactivated_by_staff(user), then=[
        lambda: tab.post(form, {"new_password1": "a-New-pass-482", "new_password2": "a-New-pass-482"})])

    assert not get_user_model().objects.get(pk=user.pk).is_active
