"""Liveness and readiness endpoints report the real state of each dependency."""
import logging
import os
import socket
import threading
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


@pytest.mark.django_db
def test_readyz_gives_no_details_for_an_empty_bearer_token_while_metrics_are_off(client, settings):
    settings.METRICS_TOKEN = ""
    settings.CELERY_BROKER_URL = "redis://127.0.0.1:1/0"

    checks = client.get("/readyz", HTTP_AUTHORIZATION="Bearer ").json()["checks"]

    assert checks["broker"] == {"ok": False}


@pytest.mark.django_db
def test_a_probe_answers_at_once_while_the_broker_refuses_connections(scraper, settings):
    settings.CELERY_BROKER_URL = "redis://127.0.0.1:1/0"
    began = time.monotonic()
    response = scraper.get("/readyz")
    # Not after a pause to try again, on a web thread, at every probe of the outage.
    assert response.status_code == 503 and time.monotonic() - began < 1.5
    assert response.json()["checks"]["broker"] == {"ok": False, "error": "OperationalError"}


def _ready_within(client, seconds: float):
    # A worker logs "ready." a moment before it listens for control commands: asked in between, it is rightly not
    # ready yet.
    deadline = time.monotonic() + seconds
    while (response := client.get("/readyz")).status_code != 200 and time.monotonic() < deadline:
        time.sleep(0.5)
    return response


@pytest.mark.worker
def test_readyz_is_200_with_database_broker_worker_and_active_model(scraper, celery_worker_process, active_checkpoint):
    response = _ready_within(scraper, 15)
    body = response.json()
    assert response.status_code == 200, body
    assert body["checks"]["model"]["checkpoint"] == active_checkpoint.pk
    model = body["checks"]["model"]
    assert (model["validation_accuracy"], model["test_accuracy"]) == (
        active_checkpoint.validation_accuracy, active_checkpoint.test_accuracy
    )
    assert body["checks"]["workers"]["workers"]


@pytest.mark.django_db
def test_readyz_says_the_model_is_not_ready_when_its_file_is_damaged_or_gone(scraper, settings, active_checkpoint):
    from training.selectors import checkpoint_file_path

    settings.READYZ_CACHE_SECONDS = 0
    path = checkpoint_file_path(checkpoint=active_checkpoint)
    assert scraper.get("/readyz").json()["checks"]["model"]["ok"] is True
    original = path.read_bytes()

    path.write_bytes(original + b"\0")
    damaged = scraper.get("/readyz")
    assert damaged.status_code == 503
    assert damaged.json()["checks"]["model"] == {
        "ok": False, "checkpoint": active_checkpoint.pk, "error": "its file does not match its recorded sha256"
    }
    path.unlink()
    assert scraper.get("/readyz").json()["checks"]["model"]["error"] == "FileNotFoundError"
    path.write_bytes(original)
    assert scraper.get("/readyz").json()["checks"]["model"]["ok"] is True


@pytest.mark.django_db
def test_readyz_notices_a_checkpoint_file_damaged_in_place_at_the_same_size(scraper, settings, active_checkpoint):
    from training.selectors import checkpoint_file_path

    settings.READYZ_CACHE_SECONDS = 0
    path = checkpoint_file_path(checkpoint=active_checkpoint)
    assert scraper.get("/readyz").json()["checks"]["model"]["ok"] is True
    original, modified_ns = path.read_bytes(), path.stat().st_mtime_ns

    path.write_bytes(original[:-1] + bytes([original[-1] ^ 1]))
    # Written later, whatever the granularity of the file system's clock.
    os.utime(path, ns=(modified_ns + 10**9, modified_ns + 10**9))

    try:
        assert scraper.get("/readyz").json()["checks"]["model"] == {
            "ok": False, "checkpoint": active_checkpoint.pk, "error": "its file does not match its recorded sha256"
        }
    finally:
        path.write_bytes(original)


@pytest.mark.django_db
def test_readyz_tells_anyone_the_details_while_debug_is_on(client, settings):
    settings.DEBUG = True
    settings.CELERY_BROKER_URL = "redis://127.0.0.1:1/0"

    checks = client.get("/readyz").json()["checks"]

    assert checks["broker"] == {"ok": False, "error": "OperationalError"}
    assert checks["workers"] == {"ok": False, "error": "broker down"}


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


@pytest.mark.worker
def test_readyz_counts_only_a_worker_that_takes_predictions_not_a_trainer(scraper, start_celery_worker,
                                                                          active_checkpoint):
    from mnistsite.celery import app

    start_celery_worker(queues="training", name="trainer")
    deadline = time.monotonic() + 15
    # The trainer answers pings, which is all the check asked of a worker before.
    while not any(name.startswith("trainer-") for reply in app.control.ping(timeout=0.5) for name in reply):
        assert time.monotonic() < deadline, "the trainer never answered a ping"
    response = scraper.get("/readyz")
    assert response.status_code == 503
    checks = response.json()["checks"]
    assert checks["workers"] == {"ok": False, "workers": [], "error": "no worker consumes the inference queue"}
    assert checks["model"]["ok"] and checks["broker"]["ok"] and checks["database"]["ok"]

    start_celery_worker(queues="inference", name="predictor")
    response = _ready_within(scraper, 15)
    assert response.status_code == 200, response.json()
    (name,) = response.json()["checks"]["workers"]["workers"]
    assert name.startswith("predictor-")


@pytest.mark.django_db
def test_a_probe_waits_for_checks_that_hang_only_so_long_and_then_answers_503(scraper, settings, monkeypatch):
    from django.db import connection
    from django.test import Client

    from mnistsite import health

    # A broker that accepts connections and never answers: the first probe's check hangs until this test closes the
    # connection (the socket timeout only ends a test that fails before that).
    silent = socket.create_server(("127.0.0.1", 0))
    silent.settimeout(10)
    settings.CELERY_BROKER_URL = f"redis://127.0.0.1:{silent.getsockname()[1]}/0"
    monkeypatch.setattr(health, "BROKER_CHECK_TIMEOUT_S", 30)
    health._recent = health._RecentReadiness(wait_seconds=2.0)
    first, accepted = {}, None

    def probe() -> None:
        try:
            first["response"] = Client().get("/readyz")
        finally:
            connection.close()

    hanging = threading.Thread(target=probe)
    try:
        began = time.monotonic()  # the first probe's check starts after this
        hanging.start()
        accepted, _ = silent.accept()  # the first probe is inside its broker check now
        waited = scraper.get("/readyz")
        waited_until = time.monotonic() - began
        waited_while_checking = hanging.is_alive()
        started = time.monotonic()
        again = scraper.get("/readyz")
        again_for = time.monotonic() - started
        again_while_checking = hanging.is_alive()
    finally:
        silent.close()
        if accepted is not None:
            accepted.close()  # the hanging check fails now
        hanging.join(timeout=30)
        health._recent = health._RecentReadiness()
    # It waited until the running check had taken 2 s, and gave up while that check still hung.
    assert waited.status_code == 503 and waited_until >= 1.9 and waited_while_checking
    assert waited.json()["checks"] == {"readiness": {"ok": False, "error": "checks still running after 2 s"}}
    # The check has been running longer than a probe waits: the next one does not wait at all (not 2 s again).
    assert again.status_code == 503 and again_while_checking and again_for < 1.5
    assert again.json()["checks"] == {"readiness": {"ok": False, "error": "checks still running after 2 s"}}
    # The hanging check itself still ends, with the broker's failure.
    assert not hanging.is_alive()
    assert first["response"].status_code == 503
    assert first["response"].json()["checks"]["broker"]["ok"] is False


@pytest.mark.django_db
def test_readyz_answers_503_naming_the_model_check_when_the_database_answers_but_its_tables_do_not(scraper):
    from django.db import connection

    # A database reached before its migrations ran (or restored without them): SELECT 1 works, the checkpoints'
    # table does not. Renamed inside the test's transaction, so it comes back when that rolls back.
    with connection.cursor() as cursor:
        cursor.execute("ALTER TABLE training_checkpoint RENAME TO training_checkpoint_away")
    response = scraper.get("/readyz")
    assert response.status_code == 503
    checks = response.json()["checks"]
    assert checks["database"] == {"ok": True}
    # PostgreSQL's kind of error for a missing table, and SQLite's.
    assert checks["model"] in ({"ok": False, "error": "ProgrammingError"}, {"ok": False, "error": "OperationalError"})


@pytest.mark.django_db
def test_a_probe_that_finds_the_site_not_ready_is_logged_as_one_warning_naming_the_failed_checks_not_an_error(
    client, settings, caplog
):
    # No broker (so no worker) and no active model, as while the first model trains or Redis restarts: a verdict that
    # an orchestrator's probe meets every few seconds, which must not page anyone as an error each time.
    settings.CELERY_BROKER_URL = "redis://127.0.0.1:1/0"
    with caplog.at_level("INFO"):
        response = client.get("/readyz")
    assert response.status_code == 503
    lines = [record for record in caplog.records if record.name == "django.request"]
    assert [(record.levelname, record.getMessage()) for record in lines] == [
        ("WARNING", "Not ready (broker, workers, model): /readyz")
    ]
    assert not [record for record in caplog.records if record.levelno >= logging.ERROR]


@pytest.mark.django_db
def test_a_broker_that_accepts_the_connection_and_never_answers_fails_its_check_within_2_s(scraper, settings):
    # A hung Redis host, or a proxy in front of one that is gone: the TCP connection is made, no answer comes.
    silent = socket.create_server(("127.0.0.1", 0))
    settings.CELERY_BROKER_URL = f"redis://127.0.0.1:{silent.getsockname()[1]}/0"
    settings.CELERY_BROKER_TRANSPORT_OPTIONS = {**settings.CELERY_BROKER_TRANSPORT_OPTIONS, "socket_timeout": 5}
    try:
        began = time.monotonic()
        response = scraper.get("/readyz")
        took = time.monotonic() - began
    finally:
        silent.close()
    assert response.status_code == 503
    assert response.json()["checks"]["broker"] == {"ok": False, "error": "OperationalError"}
    assert took < 3
