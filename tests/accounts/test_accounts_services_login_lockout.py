"""Log-in lockout: counting password checks per account and client address."""
import pytest
from django.core.cache import cache

from accounts.services import (
    LOCKOUT_THRESHOLD,
    address_key,
    login_attempt_allowed,
    login_attempt_start,
    login_attempt_succeeded,
)


@pytest.fixture(autouse=True)
def fresh_counts():
    cache.clear()
    yield
    cache.clear()


def test_guesses_in_flight_at_once_are_each_counted_before_any_password_is_checked():
    # Eight requests that all arrive before the first password check ends: only the limit's worth may check one.
    started = [login_attempt_start(username="victim", ip="203.0.113.7") for _ in range(8)]
    assert started == [True] * LOCKOUT_THRESHOLD + [False] * (8 - LOCKOUT_THRESHOLD)
    assert not login_attempt_allowed(username="victim", ip="203.0.113.7")


def test_a_password_check_that_succeeds_takes_its_count_back():
    for _ in range(LOCKOUT_THRESHOLD - 1):
        assert login_attempt_start(username="owner", ip="198.51.100.4")
    # Re-entering the password on the account page: the count it took is given back, the failures before stay.
    assert login_attempt_start(username="owner", ip="198.51.100.4")
    login_attempt_succeeded(username="owner", ip="198.51.100.4", log_in=False)
    assert login_attempt_allowed(username="owner", ip="198.51.100.4")
    assert login_attempt_start(username="owner", ip="198.51.100.4")
    assert not login_attempt_start(username="owner", ip="198.51.100.4")


def test_a_log_in_clears_its_own_failures_but_not_those_made_at_the_account_from_elsewhere():
    for _ in range(LOCKOUT_THRESHOLD - 1):
        login_attempt_start(username="owner", ip="198.51.100.4")
    login_attempt_start(username="owner", ip="198.51.100.4")
    login_attempt_succeeded(username="owner", ip="198.51.100.4", log_in=True)
    assert all(login_attempt_start(username="owner", ip="198.51.100.4") for _ in range(LOCKOUT_THRESHOLD))
    assert cache.get("login-failures:user:owner") == LOCKOUT_THRESHOLD * 2 - 1


def test_attempts_refused_unchecked_cost_nothing_so_one_address_cannot_lock_the_owner_out_everywhere():
    for _ in range(LOCKOUT_THRESHOLD * 20):
        login_attempt_start(username="victim", ip="203.0.113.9")
    # The guessing address spent only what it checked; the owner, elsewhere, still may.
    assert not login_attempt_allowed(username="victim", ip="203.0.113.9")
    assert login_attempt_allowed(username="victim", ip="198.51.100.7")
    assert cache.get("login-failures:user:victim") == LOCKOUT_THRESHOLD


def test_ipv4_clients_seen_as_ipv4_mapped_ipv6_addresses_are_each_counted_by_their_own_ipv4_address():
    # A dual-stack socket shows every IPv4 client as ::ffff:a.b.c.d, all in one /64 (::/64): counted by that block,
    # one guesser would lock every IPv4 client out of the account.
    assert address_key("::ffff:203.0.113.7") == address_key("203.0.113.7") == "203.0.113.7"
    for _ in range(LOCKOUT_THRESHOLD):
        assert login_attempt_start(username="victim", ip="::ffff:203.0.113.7")
    assert not login_attempt_allowed(username="victim", ip="::ffff:203.0.113.7")
    assert not login_attempt_allowed(username="victim", ip="203.0.113.7")  # the same client, however it arrives
    assert login_attempt_allowed(username="victim", ip="::ffff:198.51.100.4")
    assert login_attempt_start(username="victim", ip="::ffff:198.51.100.4")


def test_guesses_at_one_account_typed_in_different_cases_are_counted_together():
    # Log-in reads the name in any case: counted apart, each spelling would bring the pair's limit afresh.
    spellings = ["victim", "Victim", "VICTIM", "vIctim", "viCtim", "vicTim", "victIm"]
    started = [login_attempt_start(username=name, ip="203.0.113.7") for name in spellings]

    assert started == [True] * LOCKOUT_THRESHOLD + [False] * (len(spellings) - LOCKOUT_THRESHOLD)
