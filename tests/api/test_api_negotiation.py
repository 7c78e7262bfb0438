"""Content negotiation weighs the Accept header as RFC 9110 says: q=0 refuses a representation, the higher weight
wins, then the more specific media range, then the server's order; nothing acceptable is a 406 in the envelope."""
from __future__ import annotations

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
