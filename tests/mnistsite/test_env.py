"""The environment's reader: rates are read by one parser, at start and per request alike."""
import pytest
from django.core.exceptions import ImproperlyConfigured

from mnistsite.env import rate_check, rate_parse, url_credentials_check


@pytest.mark.parametrize(("rate", "parsed"), [
    ("600/minute", (600, 60)), ("10/hour", (10, 3600)), ("3/h", (3, 3600)), ("1/s", (1, 1)), ("5/day", (5, 86400)),
    ("1_000/minute", (1000, 60)), (" 7 /minute", (7, 60)), ("600/mins", (600, 60)), ("", None),
    ("5/15minute", (5, 900)), ("1/15s", (1, 15)), ("2/12h", (2, 43200)), ("3/1day", (3, 86400)),
])
def test_a_readable_rate_is_a_count_and_a_period_in_seconds_and_empty_is_no_limit(rate, parsed):
    assert rate_parse(rate) == parsed
    rate_check(name="SOME_RATE", rate=rate)


@pytest.mark.parametrize("rate", [
    "600/week", "10 per hour", "600", "600/", "/minute", "ten/minute", "6.5/minute", "600/ minute", "600/Minute",
    "0/minute", "-1/hour", "5/0minute", "5/15", "5/15 minute", "5/-15minute", "5/1.5hour", "5/15week",
])
def test_a_rate_the_throttles_could_not_read_or_that_would_refuse_everything_stops_the_start(rate):
    with pytest.raises(ValueError):
        rate_parse(rate)
    with pytest.raises(ImproperlyConfigured, match=f"SOME_RATE={rate!r} is not a rate"):
        rate_check(name="SOME_RATE", rate=rate)


@pytest.mark.parametrize("url", [
    "postgres://user:pa?ss@db.example/digits", "postgres://user:pa#ss@db.example/digits",
    "postgres://user:pa/ss@db.example/digits", "postgres://us@er:pass@db.example/digits",
])
def test_a_url_whose_password_holds_an_unencoded_separator_is_refused_without_quoting_it(url):
    with pytest.raises(ImproperlyConfigured) as info:
        url_credentials_check(name="DATABASE_URL", url=url)
    assert "db.example" not in str(info.value) and "ss@" not in str(info.value)


@pytest.mark.parametrize("url", [
    "postgres://user:pa%3Fss@db.example/digits", "postgres://db.example/digits?sslrootcert=/etc/ssl/ca@corp.pem",
    "sqlite:////srv/data/db@2.sqlite3", "postgres://user:pass@db.example:5432/digits?sslmode=require",
])
def test_a_url_with_its_password_encoded_or_an_at_sign_in_a_query_parameter_is_read(url):
    url_credentials_check(name="DATABASE_URL", url=url)
