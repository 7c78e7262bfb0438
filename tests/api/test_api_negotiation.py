"""Content negotiation weighs the Accept header as RFC 9110 says: q=0 refuses a representation, the higher weight
wins, then the more specific media range, then the server's order; nothing acceptable is a 406 in the envelope."""
from __future__ import annotations

import re

import pytest

from tests.api.conftest import assert_envelope

pytestmark = pytest.mark.django_db

LIST = "/api/v1/predictions/"


def _answered_type(client, accept: str, path: str = LIST) -> str:
    response = client.get(path, HTTP_ACCEPT=accept)
    assert response.status_code == 200, (accept, response.content[:300])
    return response["Content-Type"].split(";")[0]


def test_a_representation_weighed_zero_is_not_acceptable_and_nothing_else_is_a_406(user_client):
    response = user_client.get(LIST, HTTP_ACCEPT="application/json;q=0, text/csv")

    assert response.status_code == 406
    assert response["Content-Type"] == "application/json"
    assert assert_envelope(response.json())["code"] == "not_acceptable"


def test_a_zero_weight_on_a_media_type_overrides_a_wildcard_that_covers_it(user_client):
    assert _answered_type(user_client, "application/json;q=0, */*") == "text/html"
    assert _answered_type(user_client, "*/*, application/json;Q=0.000") == "text/html"


def test_the_representation_with_the_higher_weight_is_answered(user_client):
    assert _answered_type(user_client, "text/html;q=1, application/json;q=0.5") == "text/html"
    assert _answered_type(user_client, "text/html;q=0.5, application/json") == "application/json"
    assert _answered_type(user_client, "application/*;q=0.2, text/*;q=0.3") == "text/html"


def test_among_equal_weights_the_more_specific_media_range_wins_then_the_servers_order(user_client):
    assert _answered_type(user_client, "*/*;q=0.5, text/html;q=0.5") == "text/html"
    assert _answered_type(user_client, "text/*, application/json") == "application/json"
    assert _answered_type(user_client, "text/html, application/json") == "application/json"
    assert _answered_type(user_client, "*/*") == "application/json"


def test_the_most_specific_range_that_matches_gives_a_representation_its_weight(user_client):
    # application/json is weighed by its own range (0.1), not by application/* (1), so HTML's 0.5 wins.
    assert _answered_type(user_client, "application/*, application/json;q=0.1, text/html;q=0.5") == "text/html"


def test_a_range_with_a_malformed_weight_is_left_out(user_client):
    assert _answered_type(user_client, "application/json;q=high, text/html") == "text/html"
    assert _answered_type(user_client, "application/json;q=1.5, text/html;q=0.9") == "text/html"
    refused = user_client.get(LIST, HTTP_ACCEPT="application/json;q=-1")
    assert refused.status_code == 406 and assert_envelope(refused.json())["code"] == "not_acceptable"


@pytest.mark.parametrize("accept", ["json", "application", "", " ", "text/html;q=high"], ids=repr)
def test_an_accept_header_with_no_media_range_that_can_be_read_is_a_406_saying_what_to_send(user_client, accept):
    # RFC 9110 lets a server either refuse or disregard an Accept header that allows nothing it has. One that names
    # nothing readable (a mistake: `json` for `application/json`) is refused, as every other input read wrong is,
    # rather than answered as if it had not been sent; the answer is JSON and says what to send.
    response = user_client.get(LIST, HTTP_ACCEPT=accept)

    assert response.status_code == 406
    assert response["Content-Type"] == "application/json"
    error = assert_envelope(response.json())
    assert error["code"] == "not_acceptable"
    assert "names no media range" in error["message"]
    assert "`application/json`" in error["message"] and "`text/html`" in error["message"]


def test_a_406_names_the_representations_there_are(user_client, api_client):
    message = assert_envelope(user_client.get(LIST, HTTP_ACCEPT="text/csv").json())["message"]
    assert message == "No representation the Accept header allows: ask for one of `application/json`, `text/html`."
    schema = assert_envelope(api_client.get("/api/schema/", HTTP_ACCEPT="text/csv").json())["message"]
    assert "`application/vnd.oai.openapi`" in schema and "`application/json`" in schema


def test_the_weights_choose_among_the_schemas_formats(api_client):
    accept = "application/vnd.oai.openapi;q=0.1, application/vnd.oai.openapi+json"

    assert _answered_type(api_client, accept, "/api/schema/") == "application/vnd.oai.openapi+json"
    assert _answered_type(api_client, "application/vnd.oai.openapi+json;q=0.1, application/vnd.oai.openapi",
                          "/api/schema/") == "application/vnd.oai.openapi"


def test_a_weighted_media_type_keeps_its_other_parameters(user_client):
    response = user_client.get(LIST, HTTP_ACCEPT="application/json; indent=4; q=0.9, text/html;q=0.5")

    assert response["Content-Type"] == "application/json"
    assert '\n    "count"' in response.content.decode()


def test_a_format_the_client_asked_for_still_answers_when_its_accept_header_allows_it(user_client):
    response = user_client.get(LIST, {"format": "json"},
                               HTTP_ACCEPT="text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8")

    assert response.status_code == 200 and response["Content-Type"] == "application/json"


def test_a_zero_weight_on_a_wildcard_refuses_what_it_covers_unless_a_more_specific_range_allows_it(user_client):
    refused = user_client.get(LIST, HTTP_ACCEPT="*/*;q=0")
    assert refused.status_code == 406 and assert_envelope(refused.json())["code"] == "not_acceptable"
    assert _answered_type(user_client, "application/*;q=0, */*;q=0.1") == "text/html"
    assert _answered_type(user_client, "*/*;q=0, text/html;q=0.2") == "text/html"
    assert _answered_type(user_client, "text/*;q=0, */*") == "application/json"


def test_a_comma_inside_a_quoted_parameter_does_not_split_the_media_range(user_client):
    # Split at that comma, the header would seem to allow application/json with a weight of 1.
    assert _answered_type(user_client, 'application/json;q=0, text/*; p="a,application/json,b"') == "text/html"


@pytest.mark.parametrize(("header", "ranges"), [
    ("", []),
    ("*/*", [("*/*", {}, 1.0)]),
    ("Text/HTML;Level=1;Q=0.5", [("text/html", {"level": "1"}, 0.5)]),
    ('application/json ; indent="4" ; q=0.9 , text/*;q=0', [("application/json", {"indent": "4"}, 0.9),
                                                             ("text/*", {}, 0.0)]),
    ('text/plain; p="a\\"b,c"', [("text/plain", {"p": 'a"b,c'}, 1.0)]),
    # A weight is read wherever it stands among the parameters (RFC 9110 12.5.1).
    ("application/json;q=0.1;indent=2", [("application/json", {"indent": "2"}, 0.1)]),
])
def test_the_accept_header_is_read_into_media_ranges_with_their_parameters_and_weights(header, ranges):
    from api.negotiation import accept_parse

    assert [(r.full_type, r.params, r.weight) for r in accept_parse(header)] == ranges


@pytest.mark.parametrize("header", [
    "json", "application", "*/json", "text/html;q=high", "text/html;q=1.5", "text/html;q=-1", "text/html;q=.5",
    "text/html; p=", 'text/html; p="unclosed', "text/html junk", "te xt/html",
])
def test_a_malformed_media_range_is_left_out_and_the_others_are_read(header):
    from api.negotiation import accept_parse

    assert [r.full_type for r in accept_parse(f"{header}, image/png")] == ["image/png"]


def test_a_wildcard_covers_every_type_or_subtype_and_a_range_is_as_specific_as_what_it_names():
    from api.negotiation import media_range_parse

    html, any_text, anything, level = (media_range_parse(text) for text in
                                        ("text/html", "text/*", "*/*", "text/html;level=1"))
    assert [r.precedence for r in (anything, any_text, html, level)] == [0, 1, 2, 3]
    assert all(r.covers(html) for r in (html, any_text, anything, level))
    assert not any_text.covers(media_range_parse("application/json"))
    assert not media_range_parse("text/plain").covers(html)
    # An offered type with a parameter is covered only by ranges that name the same value.
    assert not html.covers(media_range_parse("text/html;charset=utf-8"))
    assert media_range_parse("text/html;charset=UTF-8").covers(media_range_parse("text/html;charset=UTF-8"))


def test_the_accept_header_is_split_into_elements_as_its_grammar_reads_it():
    import random

    from api.negotiation import _QUOTED, _elements

    # The grammar as a regular expression: right, but it reads the rest of the header again at each unclosed quote.
    grammar = re.compile(rf'(?:{_QUOTED}|[^,"])+|"')
    picked = random.Random(7)
    for _ in range(3000):
        header = "".join(picked.choice('ab,"\\; =') for _ in range(picked.randrange(0, 24)))
        assert _elements(header) == grammar.findall(header), header


def test_an_accept_header_of_unclosed_quotes_is_answered_however_long_whoever_sends_it(api_client):
    # Read as the grammar's expression reads it, 8 KB of these took seconds of a web process and the 800 KB that
    # gunicorn makes of a hundred such lines hours: the test's time limit ends it.
    header = '"' + '\\"' * 400_000 + ", application/json"

    response = api_client.get("/api/v1/predictions/", HTTP_ACCEPT=header)

    # Its first 4 KB name no media range that can be read: it allows nothing.
    assert response.status_code == 406
