"""Counts and latencies of the web's requests, kept per process and added up in the shared cache for ``/metrics``."""
from __future__ import annotations

import atexit
import json
import logging
import math
import threading
import time
from bisect import bisect_left
from dataclasses import dataclass

from django.core.cache import DEFAULT_CACHE_ALIAS, caches
from django.core.cache.backends.redis import RedisCache
from django.http import HttpRequest, HttpResponseBase
from django.urls import Resolver404, resolve

logger = logging.getLogger(__name__)

# Upper bounds (seconds) of the latency histogram's buckets, Prometheus's own defaults: from a cached page's few
# milliseconds to a `?wait` upload's seconds; longer ones count in +Inf only.
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
# A process adds its counts to the shared cache at most this often (from a request that ends after that), and when
# it exits: one pipelined batch, never a round trip per request. A process killed outright loses what it held.
FLUSH_EVERY_S = 5.0
# The route of a request whose path no URL pattern matches: one label value for every scanner's guess.
UNMATCHED = "unmatched"
# Any other method a client makes up counts as this one, so that the methods cannot grow the label values either.
OTHER_METHOD = "other"
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT"})
# Answered by mnistsite.health.HealthProbeMiddleware before URLs are resolved: each its own route all the same.
PROBE_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})

# The Redis hashes, under the cache's key prefix: never given an expiry, since a counter must never go down.
REQUESTS_KEY = "metrics_http_requests"
DURATIONS_KEY = "metrics_http_request_durations"
# At most one warning a minute while the shared cache cannot be reached, whatever the request rate.
WARN_EVERY_S = 60.0

# route, method, status
RequestKey = tuple[str, str, str]
# route, method
DurationKey = tuple[str, str]


@dataclass
class RequestTotals:
    """Everything counted so far: requests by route, method and status; latencies by route and method.

    ``durations`` holds per key a count for each bucket of BUCKETS (not cumulative), then one for longer
    requests, then the sum of all their durations in microseconds.
    """

    requests: dict[RequestKey, int]
    durations: dict[DurationKey, list[int]]


class _Counts:
    # One per process. Several threads of a web process record at once: a lock keeps each increment whole (taken
    # and released in well under a microsecond when no other thread holds it, which is nearly always).

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.requests: dict[RequestKey, int] = {}
        self.durations: dict[DurationKey, list[int]] = {}
        self.flushed_at = -math.inf
        # What was flushed where no shared cache is (local memory, files, the database): this process's figures.
        self.local = RequestTotals(requests={}, durations={})
        self.warned_at = -math.inf

    def take(self) -> RequestTotals:
        with self.lock:
            self.flushed_at = time.monotonic()
            taken = RequestTotals(requests=self.requests, durations=self.durations)
            self.requests, self.durations = {}, {}
        return taken


_counts = _Counts()
_labels: dict[str, str] = {}


def _route(request: HttpRequest, status: int) -> str:
    match = request.resolver_match
    if match is None:
        # Answered before URLs were resolved (a probe, a body too large, a redirect to HTTPS), or no pattern matches:
        # resolved here, except a 404, which no middleware answers before resolving (a scanner's guesses cost no
        # second pass over the patterns).
        path = request.path_info
        if path in PROBE_PATHS:
            return path
        if status == 404:
            return UNMATCHED
        try:
            match = resolve(path, getattr(request, "urlconf", None))
        except Resolver404:
            return UNMATCHED
    route = match.route
    label = _labels.get(route)
    if label is None:
        # Routes are written without their leading slash; with it, the site's root is "/", not an empty value.
        label = _labels[route] = "/" + route
    return label


def request_record(*, request: HttpRequest, response: HttpResponseBase, seconds: float) -> None:
    """Count one request answered in ``seconds``, and flush this process's counts when they are due."""
    status = response.status_code
    method = request.method if request.method in METHODS else OTHER_METHOD
    pair = (_route(request, status), method)
    key = (*pair, str(status))
    bucket = bisect_left(BUCKETS, seconds)
    now = time.monotonic()
    counts = _counts
    with counts.lock:
        counts.requests[key] = counts.requests.get(key, 0) + 1
        row = counts.durations.get(pair)
        if row is None:
            row = counts.durations[pair] = [0] * (len(BUCKETS) + 2)
        row[bucket] += 1
        row[-1] += int(seconds * 1_000_000)
        due = now - counts.flushed_at >= FLUSH_EVERY_S
        if due:
            # Claimed now: another thread finishing meanwhile does not flush too.
            counts.flushed_at = now
    if due:
        request_counts_flush()


def _merge(into: RequestTotals, totals: RequestTotals) -> None:
    for key, count in totals.requests.items():
        into.requests[key] = into.requests.get(key, 0) + count
    for key, row in totals.durations.items():
        mine = into.durations.setdefault(key, [0] * len(row))
        for index, count in enumerate(row):
            mine[index] += count


def _redis_cache() -> RedisCache | None:
    cache = caches[DEFAULT_CACHE_ALIAS]
    return cache if isinstance(cache, RedisCache) else None


def request_counts_flush() -> None:
    """Add what this process counted since its last flush to the shared cache (to its own figures without one)."""
    taken = _counts.take()
    if not taken.requests:
        return
    cache = _redis_cache()
    if cache is None:
        with _counts.lock:
            _merge(_counts.local, taken)
        return
    try:
        pipeline = cache._cache.get_client(write=True).pipeline(transaction=True)
        requests_key, durations_key = cache.make_key(REQUESTS_KEY), cache.make_key(DURATIONS_KEY)
        for key, count in taken.requests.items():
            pipeline.hincrby(requests_key, json.dumps(key), count)
        for key, row in taken.durations.items():
            for index, count in enumerate(row):
                if count:
                    pipeline.hincrby(durations_key, json.dumps([*key, index]), count)
        pipeline.execute()
    except Exception:  # noqa: BLE001 - any cache failure: counting must never fail a request
        # Kept for the next flush: a Redis that is back within minutes loses nothing, and what is kept is bounded
        # by the routes, methods and statuses, not by the requests.
        with _counts.lock:
            _merge(RequestTotals(requests=_counts.requests, durations=_counts.durations), taken)
            warn = time.monotonic() - _counts.warned_at >= WARN_EVERY_S
            if warn:
                _counts.warned_at = time.monotonic()
        if warn:
            logger.warning("request counts kept in this process: the cache is unavailable (repeats within a minute "
                           "not logged)", exc_info=True)


def request_totals_read() -> RequestTotals:
    """Every web process's counts as the shared cache holds them; this process's alone without one.

    Raises what the cache raises when it cannot be reached.
    """
    cache = _redis_cache()
    if cache is None:
        with _counts.lock:
            totals = RequestTotals(requests={}, durations={})
            _merge(totals, _counts.local)
            return totals
    client = cache._cache.get_client(write=True)
    pipeline = client.pipeline(transaction=False)
    pipeline.hgetall(cache.make_key(REQUESTS_KEY))
    pipeline.hgetall(cache.make_key(DURATIONS_KEY))
    requests, durations = pipeline.execute()
    totals = RequestTotals(requests={}, durations={})
    for field, count in requests.items():
        route, method, status = json.loads(field)
        totals.requests[(route, method, status)] = int(count)
    for field, count in durations.items():
        route, method, index = json.loads(field)
        row = totals.durations.setdefault((route, method), [0] * (len(BUCKETS) + 2))
        if 0 <= index < len(row):
            row[index] = int(count)
    return totals


class RequestMetricsMiddleware:
    """Counts every request and how long the site took to answer it, other middleware included.

    First in MIDDLEWARE, so that it times everything the others do and counts the answers they give themselves (the
    probes, the size limit's 411 and 413, the HTTPS redirect). A streamed body (a history export) is timed until its
    first byte is ready, not until its last is sent.
    """

    def __init__(self, get_response) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponseBase:
        start = time.perf_counter()
        response = self.get_response(request)
        request_record(request=request, response=response, seconds=time.perf_counter() - start)
        return response


def _flush_at_exit() -> None:
    try:
        request_counts_flush()
    except Exception:  # noqa: BLE001 - the process is going anyway; its last seconds' counts are what is lost
        logger.warning("request counts lost at exit", exc_info=True)


# A web process stopped as gunicorn stops it (SIGTERM, a redeploy) adds its last counts before it goes.
atexit.register(_flush_at_exit)
