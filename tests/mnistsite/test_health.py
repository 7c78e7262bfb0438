"""Liveness and readiness endpoints report the real state of each dependency."""
import time

import pytest


@pytest.mark.django_db
def test_healthz_answers_without_login(client):
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


@pytest.mark.django_db
@pytest.mark.parametrize("path", ["/healthz", "/readyz"])
def test_health_probes_answer_head_requests_as_uptime_monitors_send_them(client, path):
    response = client.head(path)
    assert response.status_code in (200, 503) and response.content == b""


TOKEN = "a-scrapers-token-of-at-least-32-characters-0123"


@pytest.fixture
def scraper(client, settings):
    settings.METRICS_TOKEN = TOKEN
    client.defaults["HTTP_AUTHORIZATION"] = f"Bearer {TOKEN}"
    return client


@pytest.mark.django_db
def test_readyz_is_503_without_a_worker_or_an_active_model(client):
    response = client.get("/readyz")
    assert response.status_code == 503
    checks = response.json()["checks"]
    assert checks["database"]["ok"] is True
    assert checks["broker"]["ok"] is True
    assert checks["model"]["ok"] is False


@pytest.mark.django_db
def test_readyz_tells_anyone_each_verdict_and_only_the_scraper_the_details(client, settings, scraper):
    settings.CELERY_BROKER_URL = "redis://127.0.0.1:1/0"
    detailed = scraper.get("/readyz")
    assert detailed.status_code == 503
    # Even then the kind of failure, not the message that names hosts and ports.
    assert detailed.json()["checks"]["broker"] == {"ok": False, "error": "OperationalError"}
    del client.defaults["HTTP_AUTHORIZATION"]
    anonymous = client.get("/readyz")
    assert anonymous.status_code == 503
    assert anonymous.json()["checks"] == {name: {"ok": check["ok"]} for name, check in detailed.json()["checks"].items()}


@pytest.mark.worker
def test_readyz_is_200_with_database_broker_worker_and_active_model(scraper, celery_worker_process, active_checkpoint):
    client = scraper
    # A worker logs "ready." a moment before it listens for pings: asked in between, it is rightly not ready yet.
    deadline = time.monotonic() + 15
    while (response := client.get("/readyz")).status_code != 200 and time.monotonic() < deadline:
        time.sleep(0.5)
    body = response.json()
    assert response.status_code == 200, body
    assert body["checks"]["model"]["checkpoint"] == active_checkpoint.pk
    assert body["checks"]["workers"]["workers"]


@pytest.mark.django_db
def test_readyz_reuses_its_last_check_for_a_few_seconds_so_a_flood_of_probes_costs_one(client, settings):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from mnistsite import health

    settings.READYZ_CACHE_SECONDS = 60
    health._recent = health._RecentReadiness()
    try:
        with CaptureQueriesContext(connection) as queries:
            first = [client.get("/readyz") for _ in range(5)]
        # One round of checks: the database's SELECT 1 and the active-checkpoint lookup.
        assert len(queries) == 2
        assert {response.status_code for response in first} == {503}
        settings.READYZ_CACHE_SECONDS = 0
        with CaptureQueriesContext(connection) as queries:
            client.get("/readyz")
        assert len(queries) == 2
    finally:
        health._recent = health._RecentReadiness()
