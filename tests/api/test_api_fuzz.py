"""Property-based fuzzing of the whole API from its own OpenAPI schema: no request may cause a 5xx."""
from __future__ import annotations

import os

import pytest
import schemathesis
from django.core.signals import request_finished, request_started
from django.core.wsgi import get_wsgi_application
from django.db import close_old_connections
from hypothesis import HealthCheck, settings
from schemathesis.specs.openapi.checks import negative_data_rejection, positive_data_acceptance

from accounts.services import api_token_create
from classifier.models import Upload


# The schema is public and generated without the database, so it can be loaded while tests are collected.
schema = schemathesis.openapi.from_wsgi("/api/schema/?format=json", get_wsgi_application())


@pytest.fixture
def keep_test_connection(db):
    """Requests must not close the database connection: it holds the test's transaction.

    Django's own test client disconnects the same handlers.
    """
    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    yield
    request_started.connect(close_old_connections)
    request_finished.connect(close_old_connections)


@pytest.fixture
def staff_token_headers(staff_user, make_prediction, make_checkpoint) -> dict:
    # Staff reach every endpoint; a few real objects give the generated ids something to hit.
    make_prediction(owner=staff_user, done=True)
    make_checkpoint(activate=True)
    return {"Authorization": f"Token {api_token_create(user=staff_user)[1]}"}


@schema.parametrize()
@settings(
    max_examples=int(os.environ.get("API_FUZZ_EXAMPLES", "15")),
    # CI replays the same inputs every run; API_FUZZ_RANDOM=1 explores new ones.
    derandomize=not os.environ.get("API_FUZZ_RANDOM"),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.filter_too_much],
)
def test_no_generated_request_gets_a_server_error(case, keep_test_connection, staff_token_headers):
    uploads_before = Upload.objects.count()

    response = case.call(headers=staff_token_headers)

    assert response.status_code < 500, case.as_curl_command(headers=staff_token_headers)
    # The schema cannot say "a picture of a digit", so a schema-valid but blank image is rightly rejected,
    # and an empty query parameter rightly means "not given": those two strictness checks do not apply.
    case.validate_response(
        response, headers=staff_token_headers, excluded_checks=[positive_data_acceptance, negative_data_rejection]
    )
    if response.status_code >= 400:
        assert set(response.json()) == {"error"}
        assert Upload.objects.count() == uploads_before
