"""API token authentication: DRF's scheme and answers, for tokens stored as digests and found with one statement."""
from __future__ import annotations

import datetime as dt
import io

import pytest
from django.core.management import call_command
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from rest_framework.exceptions import AuthenticationFailed

from accounts.models import ApiToken
from accounts.services import api_token_create
from api.authentication import TokenAuthentication
from tests.locks import held_open

pytestmark = pytest.mark.django_db

LIST = "/api/v1/predictions/"


def test_a_token_authenticates_its_user_in_one_query_and_records_its_use_once_an_hour(user):
    token, key = api_token_create(user=user)

    with CaptureQueriesContext(connection) as first:
        found_user, found_token = TokenAuthentication().authenticate_credentials(key)
    with CaptureQueriesContext(connection) as second:
        TokenAuthentication().authenticate_credentials(key)

    assert [query["sql"].split()[0] for query in first if query["sql"].split()[0] in ("SELECT", "UPDATE")] == [
        "SELECT", "UPDATE"]
    assert len(second) == 1
    assert (found_user.pk, found_user.username, found_user.is_active) == (user.pk, "alice", True)
    assert found_user.check_password("correct horse battery") and found_user.date_joined == user.date_joined
    assert (found_token.pk, found_token.user_id, found_token.created_at) == (token.pk, user.pk, token.created_at)
    assert not found_token._state.adding
    used = ApiToken.objects.get().last_used_at
    assert used is not None and timezone.now() - used < dt.timedelta(minutes=1)

    ApiToken.objects.update(last_used_at=used - ApiToken.LAST_USED_PRECISION)
    TokenAuthentication().authenticate_credentials(key)
    assert ApiToken.objects.get().last_used_at > used


def test_only_a_digest_of_the_key_is_stored(user):
    _, key = api_token_create(user=user)

    with connection.cursor() as cursor:
        cursor.execute(f"SELECT * FROM {ApiToken._meta.db_table}")
        stored = cursor.fetchall()

    assert len(stored) == 1 and len(key) == 40
    assert not any(key in str(value) for value in stored[0])
    assert ApiToken.objects.get().prefix == key[:8]


def test_an_unknown_token_is_invalid(user):
    api_token_create(user=user)

    with pytest.raises(AuthenticationFailed, match="Invalid token."):
        TokenAuthentication().authenticate_credentials("0" * 40)


def test_a_token_older_than_the_maximum_age_is_refused_with_its_date(api_client, user, settings):
    settings.API_TOKEN_MAX_AGE_DAYS = 30
    _, key = api_token_create(user=user)
    api_client.credentials(HTTP_AUTHORIZATION=f"Token {key}")
    assert api_client.get(LIST).status_code == 200

    ApiToken.objects.filter(user=user).update(created_at=timezone.now() - dt.timedelta(days=30, seconds=1))

    response = api_client.get(LIST)
    assert response.status_code == 401
    assert "expired on" in response.json()["error"]["message"]


def test_with_no_maximum_age_an_old_token_still_works(api_client, user, settings):
    settings.API_TOKEN_MAX_AGE_DAYS = 0
    _, key = api_token_create(user=user)
    ApiToken.objects.filter(user=user).update(created_at=timezone.now() - dt.timedelta(days=3650))
    api_client.credentials(HTTP_AUTHORIZATION=f"Token {key}")

    assert api_client.get(LIST).status_code == 200


def test_the_token_of_a_deactivated_user_is_refused(api_client, user):
    _, key = api_token_create(user=user)
    user.is_active = False
    user.save(update_fields=["is_active"])
    api_client.credentials(HTTP_AUTHORIZATION=f"Token {key}")

    response = api_client.get(LIST)

    assert response.status_code == 401
    assert response.json()["error"]["message"] == "User inactive or deleted."


def test_a_deleted_token_stops_working_on_the_next_request(api_client, user):
    token, key = api_token_create(user=user)
    api_client.credentials(HTTP_AUTHORIZATION=f"Token {key}")
    assert api_client.get(LIST).status_code == 200

    token.delete()

    response = api_client.get(LIST)
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "authentication_failed"


def test_the_command_prints_a_working_key_and_leaves_the_users_other_tokens_alone(api_client, user):
    _, old = api_token_create(user=user)
    out = io.StringIO()

    call_command("api_token_create", "alice", "--name", "nightly import", stdout=out, stderr=io.StringIO())

    key = out.getvalue().strip()
    assert ApiToken.objects.get(prefix=key[:8]).name == "nightly import"
    for working in (key, old):
        api_client.credentials(HTTP_AUTHORIZATION=f"Token {working}")
        assert api_client.get(LIST).status_code == 200


def test_the_command_makes_a_read_only_token_when_asked(api_client, user):
    out = io.StringIO()
    call_command("api_token_create", "alice", "--read-only", stdout=out, stderr=io.StringIO())

    key = out.getvalue().strip()
    assert ApiToken.objects.get(prefix=key[:8]).read_only
    api_client.credentials(HTTP_AUTHORIZATION=f"Token {key}")
    assert api_client.get(LIST).status_code == 200
    assert api_client.post(LIST, {}, format="multipart").status_code == 403


def test_the_admin_lists_tokens_without_keys_and_cannot_make_one(client, staff_user, user):
    _, key = api_token_create(user=user)
    client.force_login(staff_user)

    listing = client.get("/admin/accounts/apitoken/")

    assert listing.status_code == 200
    page = listing.content.decode()
    assert key[:8] in page and key not in page
    assert client.get("/admin/accounts/apitoken/add/").status_code == 403


@pytest.mark.django_db(transaction=True)
def test_a_token_whose_use_cannot_be_recorded_still_authenticates_its_request(api_client, user):
    if connection.vendor != "postgresql":
        pytest.skip("a row lock that times out needs PostgreSQL")
    token, key = api_token_create(user=user)
    try:
        with held_open(lambda: ApiToken.objects.select_for_update().get(pk=token.pk)):
            with connection.cursor() as cursor:
                cursor.execute("SET lock_timeout = '200ms'")
            api_client.credentials(HTTP_AUTHORIZATION=f"Token {key}")
            response = api_client.get(LIST)
    finally:
        with connection.cursor() as cursor:
            cursor.execute("RESET lock_timeout")

    assert response.status_code == 200
    assert ApiToken.objects.get().last_used_at is None
