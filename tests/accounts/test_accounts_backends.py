"""The log-in backend: the client address it counts failures by, and a warning when a proxy hides every client."""
import pytest
from django.db import connection

from accounts import backends

pytestmark = pytest.mark.django_db


@pytest.fixture
def warning_not_given_yet(monkeypatch):
    # Given once a process: this test's process may have given it already.
    monkeypatch.setitem(backends._proxy_warning, "given", False)


def _log_in(client, **headers):
    client.post("/accounts/login/", {"username": "nobody", "password": "wrong"}, **headers)


def test_a_forwarded_log_in_without_num_proxies_warns_once_that_lockouts_count_every_client_as_the_proxy(
    client, settings, caplog, warning_not_given_yet
):
    settings.REST_FRAMEWORK = {**settings.REST_FRAMEWORK, "NUM_PROXIES": 0}
    with caplog.at_level("WARNING", logger="accounts.backends"):
        _log_in(client)
        assert caplog.records == []
        for address in ("198.51.100.7", "203.0.113.9"):
            _log_in(client, HTTP_X_FORWARDED_FOR=address)

    [record] = caplog.records
    assert "X-Forwarded-For" in record.getMessage() and "NUM_PROXIES" in record.getMessage()


def test_a_forwarded_log_in_behind_the_configured_proxies_logs_no_warning(
    client, settings, caplog, warning_not_given_yet
):
    settings.REST_FRAMEWORK = {**settings.REST_FRAMEWORK, "NUM_PROXIES": 1}
    with caplog.at_level("WARNING", logger="accounts.backends"):
        _log_in(client, HTTP_X_FORWARDED_FOR="198.51.100.7")
    assert caplog.records == []


@pytest.mark.parametrize("typed", ["Alice", "ALICE", " alice"])
def test_an_account_logs_in_with_its_name_typed_in_another_case(client, user, typed):
    # Names are unique in any case, so the one typed names one account whatever its case.
    response = client.post("/accounts/login/", {"username": typed, "password": "correct horse battery"})

    assert response.status_code == 302
    assert int(client.session["_auth_user_id"]) == user.pk


def test_a_name_in_another_case_with_a_wrong_password_is_refused_and_counted_against_the_account(client, user):
    from accounts.services import LOCKOUT_THRESHOLD

    for _ in range(LOCKOUT_THRESHOLD):
        client.post("/accounts/login/", {"username": "ALICE", "password": "wrong"})

    response = client.post("/accounts/login/", {"username": "alice", "password": "correct horse battery"})
    assert "_auth_user_id" not in client.session
    assert response.status_code in (400, 429)


@pytest.mark.skipif(connection.vendor != "postgresql", reason="SQLite folds ASCII letters only: 'alıce' names no one")
@pytest.mark.parametrize("spelling", ["alıce", "ALıCE"])
def test_every_spelling_the_database_takes_for_an_account_meets_its_lockout(client, user, spelling):
    from accounts.services import LOCKOUT_THRESHOLD

    right = {"password": "correct horse battery"}
    # PostgreSQL compares names upper-cased, and a dotless i upper-cases to I: the spelling logs in to alice.
    assert client.post("/accounts/login/", {**right, "username": spelling}).status_code == 302
    client.post("/accounts/logout/")
    for _ in range(LOCKOUT_THRESHOLD):
        client.post("/accounts/login/", {"username": "alice", "password": "wrong"})

    # Counted under the account's name, not the one typed: no spelling gets fresh guesses.
    assert client.post("/accounts/login/", {**right, "username": spelling}).status_code == 429
