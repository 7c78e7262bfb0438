"""Migrating API tokens: keys stored in plain text by earlier versions become digests, and the plain keys go."""
from __future__ import annotations

import datetime as dt
import hashlib

import pytest
from django.contrib.contenttypes.models import ContentType
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

from accounts.models import ApiToken
from api.authentication import TokenAuthentication

PLAIN = "authtoken_token"
BEFORE, AFTER = ("accounts", "0001_initial"), ("accounts", "0002_tokens_from_plain_keys")


@pytest.mark.django_db(transaction=True)
def test_plain_keys_become_digests_that_still_authenticate_and_the_plain_table_and_its_permissions_go(user, settings):
    executor = MigrationExecutor(connection)
    executor.migrate([BEFORE])
    key, made = "0123456789abcdef0123456789abcdef01234567", dt.datetime(2026, 3, 1, 12, 30, tzinfo=dt.timezone.utc)
    with connection.cursor() as cursor:
        cursor.execute(f'CREATE TABLE {PLAIN} ("key" varchar(40) PRIMARY KEY, "created" timestamp with time zone '
                       'NOT NULL, "user_id" integer NOT NULL)')
        cursor.execute(f'INSERT INTO {PLAIN} ("key", "created", "user_id") VALUES (%s, %s, %s)', [key, made, user.pk])

    ContentType.objects.get_or_create(app_label="authtoken", model="token")

    executor = MigrationExecutor(connection)
    executor.migrate([AFTER])

    token = ApiToken.objects.get()
    assert (token.user_id, token.digest, token.prefix) == (user.pk, hashlib.sha256(key.encode()).hexdigest(), key[:8])
    assert token.created_at == made
    assert PLAIN not in connection.introspection.table_names()
    assert not ContentType.objects.filter(app_label="authtoken").exists()
    settings.API_TOKEN_MAX_AGE_DAYS = 0  # the key was made on a fixed day
    assert TokenAuthentication().authenticate_credentials(key)[0].pk == user.pk
