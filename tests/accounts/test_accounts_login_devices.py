"""A browser an account has logged in from keeps logging in while guesses from everywhere else lock the account out."""
import time

import pytest
from django.core import signing
from django.test import Client

from accounts import login_devices
from accounts.services import ACCOUNT_FACTOR, LOCKOUT_THRESHOLD, login_attempt_allowed, login_attempt_start

pytestmark = pytest.mark.django_db

RIGHT = {"username": "alice", "password": "correct horse battery"}
WRONG = {"username": "alice", "password": "a guess"}


def _locked_out_everywhere(username: str = "alice", *, network: str = "198.51.100") -> None:
    """Guesses at the account from enough addresses, each within its own limit, to pass the account-wide one."""
    for index in range(LOCKOUT_THRESHOLD * ACCOUNT_FACTOR):
        address = f"{network}.{index // LOCKOUT_THRESHOLD + 1}"
        assert login_attempt_start(username=username, ip=address)
    assert not login_attempt_allowed(username=username, ip="192.0.2.200")


def _known_browser(address: str = "192.0.2.10", *, accounts: tuple[str, ...] = ("alice",)) -> Client:
    browser = Client(REMOTE_ADDR=address)
    for username in accounts:
        assert browser.post("/accounts/login/", {**RIGHT, "username": username}).status_code == 302
        browser.post("/accounts/logout/")
    return browser


def test_the_owners_browser_logs_in_while_guesses_from_everywhere_lock_the_account_out(user):
    browser = _known_browser()
    _locked_out_everywhere()

    stranger = Client(REMOTE_ADDR="192.0.2.10").post("/accounts/login/", RIGHT)
    owner = browser.post("/accounts/login/", RIGHT)

    # The same address without the cookie is refused: it is the browser that is known, not the address.
    assert stranger.status_code == 429 and "Too many failed log-in attempts" in stranger.content.decode()
    assert owner.status_code == 302 and owner["Location"] == "/"


def test_a_known_browser_is_locked_out_by_its_own_wrong_passwords(user):
    browser = _known_browser()

    answers = [browser.post("/accounts/login/", WRONG).status_code for _ in range(LOCKOUT_THRESHOLD)]
    refused = browser.post("/accounts/login/", RIGHT)

    assert answers == [200] * LOCKOUT_THRESHOLD and refused.status_code == 429
    # Counted apart, against neither the address nor the account: another browser there, or elsewhere, logs in.
    assert Client(REMOTE_ADDR="192.0.2.10").post("/accounts/login/", RIGHT).status_code == 302
    assert Client(REMOTE_ADDR="203.0.113.9").post("/accounts/login/", RIGHT).status_code == 302


def test_a_browser_known_to_another_account_is_not_known_to_this_one(user, other_user):
    browser = Client(REMOTE_ADDR="192.0.2.10")
    assert browser.post("/accounts/login/", {"username": "bob", "password": "correct horse battery"}).status_code == 302
    browser.post("/accounts/logout/")
    _locked_out_everywhere()

    assert browser.post("/accounts/login/", RIGHT).status_code == 429


@pytest.mark.parametrize("made", ["tampered", "another key", "unsigned"])
def test_a_cookie_not_earned_by_logging_in_counts_for_nothing(user, settings, made):
    known = {"known": [["alice", "mine", int(time.time()), user.get_session_auth_hash()[:24]]]}
    value = signing.dumps(known, salt="accounts.login_devices")
    if made == "tampered":  # its signature changed by one character
        value = value[:-1] + ("A" if value[-1] != "A" else "B")
    elif made == "another key":
        value = signing.dumps(known, key="x" * 50, salt="accounts.login_devices")
    else:
        value = "alice"
    _locked_out_everywhere()
    browser = Client(REMOTE_ADDR="192.0.2.10")
    browser.cookies[login_devices.COOKIE] = value

    assert browser.post("/accounts/login/", RIGHT).status_code == 429


def test_a_browser_stays_known_to_each_of_the_last_accounts_logged_in_to_from_it(django_user_model):
    names = [f"member{index}" for index in range(login_devices.ACCOUNTS_KEPT + 1)]
    for name in names:
        django_user_model.objects.create_user(username=name, password=RIGHT["password"])
    browser = _known_browser(accounts=tuple(names))
    for index, name in enumerate(names):
        _locked_out_everywhere(name, network=f"10.0.{index}")

    answers = {name: browser.post("/accounts/login/", {**RIGHT, "username": name}).status_code for name in names}

    # The first account logged in to from it was one too many to keep.
    assert answers == {names[0]: 429, **{name: 302 for name in names[1:]}}


def test_each_account_a_browser_is_known_to_is_forgotten_a_cookie_lifetime_after_its_own_log_in(
    user, other_user, monkeypatch
):
    browser = _known_browser(accounts=("alice",))
    later = time.time() + login_devices.MAX_AGE_S - 60
    monkeypatch.setattr(time, "time", lambda: later)
    # Logging in to another account renews the cookie, not alice's part of it.
    assert browser.post("/accounts/login/", {**RIGHT, "username": "bob"}).status_code == 302
    browser.post("/accounts/logout/")
    monkeypatch.setattr(time, "time", lambda: later + 120)
    _locked_out_everywhere("alice")
    _locked_out_everywhere("bob", network="10.0.1")

    assert browser.post("/accounts/login/", RIGHT).status_code == 429
    assert browser.post("/accounts/login/", {**RIGHT, "username": "bob"}).status_code == 302


def test_a_new_password_unties_every_browser_known_with_the_old_one(user):
    browser = _known_browser()
    user.set_password("a brand new passphrase")
    user.save()
    _locked_out_everywhere()

    # Whoever learnt the old password and kept the cookies it earned gets no guesses of their own any more.
    assert browser.post("/accounts/login/", {**RIGHT, "password": "a brand new passphrase"}).status_code == 429


def test_a_cookie_earned_with_the_password_counts_while_a_copy_tied_to_another_does_not(user):
    _locked_out_everywhere()
    forged = {"known": [["alice", "mine", int(time.time()), "0" * 24]]}
    browser = Client(REMOTE_ADDR="192.0.2.10")
    browser.cookies[login_devices.COOKIE] = signing.dumps(forged, salt="accounts.login_devices")
    assert browser.post("/accounts/login/", RIGHT).status_code == 429

    forged["known"][0][3] = user.get_session_auth_hash()[:24]
    browser.cookies[login_devices.COOKIE] = signing.dumps(forged, salt="accounts.login_devices")
    assert browser.post("/accounts/login/", RIGHT).status_code == 302


def test_the_cookie_is_kept_from_scripts_and_other_sites_and_sent_only_over_https_in_production(user, settings):
    settings.SESSION_COOKIE_SECURE = True
    browser = Client(REMOTE_ADDR="192.0.2.10")

    cookie = browser.post("/accounts/login/", RIGHT).cookies[login_devices.COOKIE]

    assert cookie["httponly"] and cookie["secure"] and cookie["samesite"] == "Lax"
    assert cookie["max-age"] == login_devices.MAX_AGE_S


def test_the_admins_log_in_form_honours_a_known_browser_too(staff_user):
    browser = Client(REMOTE_ADDR="192.0.2.10")
    credentials = {"username": staff_user.username, "password": "correct horse battery"}
    assert browser.post("/accounts/login/", credentials).status_code == 302
    browser.post("/accounts/logout/")
    _locked_out_everywhere(staff_user.username)

    answer = browser.post("/admin/login/?next=/admin/", credentials)

    assert answer.status_code == 302 and answer["Location"] == "/admin/"


def test_the_owners_browser_keeps_its_account_page_password_checks_while_the_account_is_locked_out(user):
    browser = Client(REMOTE_ADDR="192.0.2.10")
    assert browser.post("/accounts/login/", RIGHT).status_code == 302
    _locked_out_everywhere()

    made = browser.post("/accounts/tokens/", {"name": "script", "password": RIGHT["password"]})

    assert made.status_code == 302 and made["Location"] == "/accounts/#new-token-message"
    assert user.api_tokens.count() == 1
