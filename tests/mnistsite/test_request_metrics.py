"""The web's request counts and latencies in /metrics: by URL pattern, added up over processes in Redis."""
import http.client
import math
import re
import sys
import textwrap
import time

import pytest
from django.core.cache import cache
from django.http import HttpResponse
from django.test import RequestFactory
from django.urls import resolve
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families

from mnistsite import request_metrics
from mnistsite.metrics import metrics_text
from mnistsite.request_metrics import BUCKETS, request_counts_flush, request_record
from tests.caches import UNREACHABLE_REDIS_CACHE, redis_cache_config
from tests.processes import child_env, start_process

pytestmark = pytest.mark.django_db

TOKEN = "scrape-8d1c0f2e6b7a49c3a5d4e2f1b0c9d8e7"
REQUESTS = "mnistsite_http_requests_total"
DURATION = "mnistsite_http_request_duration_seconds"


# The Redis tests' cache shares the broker's database: they delete only their own keys, never the whole database.
@pytest.fixture(autouse=True)
def fresh_cache():
    yield


@pytest.fixture
def metrics_on(settings):
    settings.METRICS_TOKEN = TOKEN


def _counts_delete() -> None:
    cache._cache.get_client(write=True).delete(
        *(cache.make_key(key) for key in (request_metrics.REQUESTS_KEY, request_metrics.DURATIONS_KEY))
    )


@pytest.fixture
def redis_cache(settings):
    """The Redis cache in the broker's database (this test run's own), without counts, as ``_cache_url`` names it.

    Without a key prefix: a CACHE_URL cannot set one for the processes these tests start.
    """
    # What earlier tests counted goes to the local memory's figures, not to this test's Redis.
    request_counts_flush()
    settings.CACHES = {"default": redis_cache_config(key_prefix="")}
    _counts_delete()
    yield cache._cache.get_client(write=True)
    request_counts_flush()
    _counts_delete()


def _samples(text: str) -> dict[tuple[str, tuple], float]:
    """The request metrics' samples as Prometheus's own parser reads them, keyed by name and sorted labels."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        if family.name.startswith("mnistsite_http_")
        for sample in family.samples
    }


def _scrape(client) -> dict[tuple[str, tuple], float]:
    response = client.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {TOKEN}")
    assert response.status_code == 200
    return _samples(response.content.decode())


def _requests(samples, route, method, status) -> float:
    return samples.get((REQUESTS, (("method", method), ("route", route), ("status", status))), 0)


def _buckets(samples, route, method) -> list[tuple[float, float]]:
    return sorted(
        (float(dict(labels)["le"]), value) for (name, labels), value in samples.items()
        if name == f"{DURATION}_bucket" and dict(labels)["route"] == route and dict(labels)["method"] == method
    )


def test_requests_are_counted_by_url_pattern_method_and_status_never_by_the_raw_path(client, metrics_on, user):
    before = _scrape(client)
    client.get("/api/v1/predictions/12/")
    client.get("/api/v1/predictions/345/")
    client.get("/wp-login.php")
    client.get("/.env")
    client.generic("BREW", "/healthz")
    client.force_login(user)
    client.get("/")
    after = _scrape(client)

    def added(route, method, status):
        return _requests(after, route, method, status) - _requests(before, route, method, status)

    assert added("/api/v1/predictions/<int:prediction_id>/", "GET", "401") == 2
    # Every path no pattern matches is one label value: scanners cannot grow the series.
    assert added("unmatched", "GET", "404") == 2
    # So is every method a client makes up.
    assert added("/healthz", "other", "405") == 1
    assert added("/", "GET", "200") == 1
    # The scrape before this one is counted, in the next scrape (it is timed once answered).
    assert added("/metrics", "GET", "200") == 1
    assert not any("12" in dict(labels).get("route", "") for _, labels in after)


def test_an_answer_a_middleware_gives_before_urls_are_resolved_counts_under_its_url_pattern(client, metrics_on,
                                                                                             settings):
    settings.UPLOAD_MAX_BYTES, settings.UPLOAD_MAX_FILES = 1000, 1
    before = _scrape(client)
    client.generic("POST", "/api/v1/predictions/", b"x", content_type="application/octet-stream",
                   CONTENT_LENGTH=str(3 * 1024 * 1024))
    after = _scrape(client)
    route = "/api/v1/predictions/"
    assert _requests(after, route, "POST", "413") - _requests(before, route, "POST", "413") == 1


def test_latencies_land_in_cumulative_buckets_that_end_in_the_count(client, metrics_on):
    request = RequestFactory().get("/api/v1/checkpoints/")
    request.resolver_match = resolve("/api/v1/checkpoints/")
    route = "/api/v1/checkpoints/"
    before = _scrape(client)
    # On a bound, below it and past the last one.
    for seconds in (0.005, 0.004, 0.3, 20.0):
        request_record(request=request, response=HttpResponse(), seconds=seconds)
    after = _scrape(client)

    buckets = _buckets(after, route, "GET")
    assert [bound for bound, _ in buckets] == [*BUCKETS, math.inf]
    counts = [value for _, value in buckets]
    assert counts == sorted(counts), "cumulative"
    previous = dict(_buckets(before, route, "GET"))
    added = {bound: value - previous.get(bound, 0) for bound, value in buckets}
    assert added[0.005] == 2 and added[0.25] == 2 and added[0.5] == 3 and added[10.0] == 3 and added[math.inf] == 4
    labels = (("method", "GET"), ("route", route))
    assert after[(f"{DURATION}_count", labels)] == counts[-1]
    assert after[(f"{DURATION}_sum", labels)] - before.get((f"{DURATION}_sum", labels), 0) == pytest.approx(20.309)


def test_the_families_are_typed_so_that_prometheus_reads_them_as_a_counter_and_a_histogram(client, metrics_on):
    client.get("/healthz")
    request_counts_flush()
    types = {family.name: family.type for family in text_string_to_metric_families(metrics_text(now=timezone.now()))}
    assert types["mnistsite_http_requests"] == "counter"
    assert types[DURATION] == "histogram"


def test_counts_wait_in_the_process_and_reach_redis_in_one_batch_once_due(client, redis_cache, monkeypatch):
    requests_key = cache.make_key(request_metrics.REQUESTS_KEY)
    monkeypatch.setattr(request_metrics, "FLUSH_EVERY_S", 3600.0)
    request_counts_flush()
    for _ in range(3):
        client.get("/healthz")
    assert not redis_cache.exists(requests_key)

    monkeypatch.setattr(request_metrics, "FLUSH_EVERY_S", 0.0)
    client.get("/healthz")

    assert redis_cache.hgetall(requests_key) == {b'["/healthz", "GET", "200"]': b"4"}
    # Never expired: a counter must not go down.
    assert redis_cache.ttl(requests_key) == -1
    assert redis_cache.ttl(cache.make_key(request_metrics.DURATIONS_KEY)) == -1


def test_counts_are_kept_while_redis_is_unreachable_and_added_once_it_is_back(client, metrics_on, redis_cache,
                                                                              settings, monkeypatch, caplog):
    monkeypatch.setattr(request_metrics, "FLUSH_EVERY_S", 0.0)
    # As in a process that has not warned within the minute: another test's unreachable cache may have, in this one.
    monkeypatch.setattr(request_metrics._counts, "warned_at", -math.inf)
    request_counts_flush()
    good = settings.CACHES
    settings.CACHES = {"default": UNREACHABLE_REDIS_CACHE}
    with caplog.at_level("WARNING"):
        for _ in range(3):
            assert client.get("/healthz").status_code == 200
        # The database's figures are still answered.
        scrape = client.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {TOKEN}")
    assert scrape.status_code == 200
    assert "mnistsite_predictions_waiting" in scrape.content.decode() and REQUESTS not in scrape.content.decode()
    assert sum("request counts kept in this process" in r.getMessage() for r in caplog.records) == 1

    settings.CACHES = good
    samples = _scrape(client)

    assert _requests(samples, "/healthz", "GET", "200") == 3
    assert _requests(samples, "/metrics", "GET", "200") == 1


def _child_requesting(*, name: str, tmp_path, cache_url: str, healthz: int, missing: int):
    script = textwrap.dedent(f"""
        import django
        django.setup()
        from django.test import Client
        client = Client(HTTP_HOST="127.0.0.1")
        for _ in range({healthz}):
            assert client.get("/healthz").status_code == 200
        for _ in range({missing}):
            assert client.get("/no-such-page/").status_code == 404
        print("done", flush=True)
    """)
    return start_process(name=name, log_dir=tmp_path, env=child_env(CACHE_URL=cache_url),
                         args=[sys.executable, "-c", script])


def _cache_url() -> str:
    return redis_cache_config(key_prefix="")["LOCATION"].replace("redis://", "rediscache://", 1)


def test_a_scrape_adds_up_what_every_process_sharing_the_redis_cache_counted(client, metrics_on, redis_cache,
                                                                             tmp_path):
    # Each process ends before its first interval is up: its counts go to Redis as it exits.
    children = [
        _child_requesting(name="web-a", tmp_path=tmp_path, cache_url=_cache_url(), healthz=7, missing=2),
        _child_requesting(name="web-b", tmp_path=tmp_path, cache_url=_cache_url(), healthz=5, missing=1),
    ]
    for child in children:
        assert child.popen.wait(timeout=120) == 0, child.log()
        assert "done" in child.log()
        child.stop()

    samples = _scrape(client)

    assert _requests(samples, "/healthz", "GET", "200") == 12
    assert _requests(samples, "unmatched", "GET", "404") == 3
    assert _buckets(samples, "/healthz", "GET")[-1] == (math.inf, 12)
    assert samples[(f"{DURATION}_count", (("method", "GET"), ("route", "/healthz")))] == 12


@pytest.mark.django_db(transaction=True)
def test_gunicorns_processes_add_up_their_counts_the_last_ones_as_they_stop(redis_cache, tmp_path, settings):
    settings.METRICS_TOKEN = TOKEN
    server = start_process(
        name="gunicorn", log_dir=tmp_path, env=child_env(CACHE_URL=_cache_url(), METRICS_TOKEN=TOKEN),
        args=[sys.executable, "-m", "gunicorn", "--bind", "127.0.0.1:0", "--workers", "2", "--threads", "2",
              "mnistsite.wsgi:application"],
    )
    try:
        server.wait_for_output("Booting worker", timeout=60)
        port = int(re.search(r"Listening at: http://127\.0\.0\.1:(\d+)", server.log())[1])
        deadline = time.monotonic() + 60
        while server.log().count("Booting worker") < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        for path in ["/healthz"] * 10 + ["/no-such-page/"] * 2:
            # A connection each, so that both processes take some.
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            connection.request("GET", path, headers={"Host": "127.0.0.1"})
            connection.getresponse().read()
            connection.close()
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        connection.request("GET", "/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
        scrape = connection.getresponse()
        scraped = _samples(scrape.read().decode())
    finally:
        server.stop()

    assert scrape.status == 200
    # Each process adds its first request's count at once, and the one answering the scrape its own first.
    assert 0 < _requests(scraped, "/healthz", "GET", "200") <= 10
    # Everything, the scrape too, once both processes have stopped: within 5 s, only their exit added the rest.
    stopped = _samples(metrics_text(now=timezone.now()))
    assert _requests(stopped, "/healthz", "GET", "200") == 10
    assert _requests(stopped, "unmatched", "GET", "404") == 2
    assert _requests(stopped, "/metrics", "GET", "200") == 1
