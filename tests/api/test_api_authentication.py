"""API token authentication: the same tokens and answers as DRF's, found with one statement."""
from __future__ import annotations

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from rest_framework.authtoken.models import Token
from rest_framework.exceptions import AuthenticationFailed

from api.authentication import TokenAuthentication

pytestmark = pytest.mark.django_db

LIST = "/api/v1/predictions/"


def test_a_token_authenticates_its_user_in_one_query(user):
    token = Token.objects.create(user=user)

    with CaptureQueriesContext(connection) as queries:
        found_user, found_token = TokenAuthentication().authenticate_credentials(token.key)

    assert len(queries) == 1
    assert (found_user.pk, found_user.username, found_user.is_active) == (user.pk, "alice", True)
    assert found_user.check_password("correct horse battery") and found_user.date_joined == user.date_joined
    assert (found_token.key, found_token.user_id, found_token.created) == (token.key, user.pk, token.created)
    assert not found_token._state.adding


def test_an_unknown_token_is_invalid(user):
    Token.objects.create(user=user)

    with pytest.raises(AuthenticationFailed, match="Invalid token."):
        TokenAuthentication().authenticate_credentials("0" * 40)


def test_the_token_of_a_deactivated_user_is_refused(api_client, user):
    token = Token.objects.create(user=user)
    user.is_active = False
    user.save(update_fields=["is_active"])
    api_client.credentials(HTTP_AUTHORIZATION=f"Token {token.key}")

    response = api_client.get(LIST)

    assert response.status_code == 401
    assert response.json()["error"]["message"] == "User inactive or deleted."


def test_a_deleted_token_stops_working_on_the_next_request(api_client, user):
    token = Token.objects.create(user=user)
    api_client.credentials(HTTP_AUTHORIZATION=f"Token {token.key}")
    assert api_client.get(LIST).status_code == 200

    token.delete()

    response = api_client.get(LIST)
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "authentication_failed"
