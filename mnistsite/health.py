"""Liveness and readiness endpoints for load balancers and orchestrators."""
import logging
import threading
import time

from django.conf import settings
from django.contrib.auth.decorators import login_not_required
from django.db import connection
from django.http import HttpRequest, JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_safe
from kombu import Connection

from mnistsite.celery import app as celery_app
from mnistsite.metrics import metrics, scraper_authorized
from training.selectors import checkpoint_get_active

logger = logging.getLogger(__name__)


def _failed(check: str, exc: Exception) -> dict:
    # The endpoint is public: the full message (hosts, ports, user names) goes to the log, only its kind out.
    logger.warning("readiness check %s failed", check, exc_info=exc)
    return {"ok": False, "error": type(exc).__name__}


@login_not_required
@require_safe
def healthz(request: HttpRequest) -> JsonResponse:
    """The process is alive and serving requests; checks nothing else."""
    return JsonResponse({"status": "ok"})


def _check_database() -> dict:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        return {"ok": True}
    except Exception as exc:  # any failure means "not ready"
        return _failed("database", exc)


def _check_broker() -> dict:
    # A fresh connection from the current settings, so a broken pooled one cannot hide an outage.
    try:
        with Connection(
            settings.CELERY_BROKER_URL,
            transport_options=settings.CELERY_BROKER_TRANSPORT_OPTIONS,
            connect_timeout=2,
        ) as conn:
            conn.ensure_connection(max_retries=1, timeout=2)
        return {"ok": True}
    except Exception as exc:
        return _failed("broker", exc)


def _check_workers() -> dict:
    try:
        # The first reply is enough: without a limit every call would wait out the whole timeout.
        replies = celery_app.control.ping(timeout=1.0, limit=1) or []
    except Exception as exc:
        return _failed("workers", exc)
    names = sorted(name for reply in replies for name in reply)
    return {"ok": bool(names), "workers": names}


def _check_model() -> dict:
    checkpoint = checkpoint_get_active()
    if checkpoint is None:
        return {"ok": False, "error": "no active checkpoint"}
    return {
        "ok": True,
        "checkpoint": checkpoint.pk,
        "architecture": checkpoint.architecture,
        "test_accuracy": checkpoint.test_accuracy,
    }


def _readiness() -> dict:
    checks = {"database": _check_database(), "broker": _check_broker()}
    checks["workers"] = _check_workers() if checks["broker"]["ok"] else {"ok": False, "error": "broker down"}
    checks["model"] = _check_model() if checks["database"]["ok"] else {"ok": False, "error": "database down"}
    return {"ready": all(check["ok"] for check in checks.values()), "checks": checks}


class _RecentReadiness:
    """The last readiness result of this process, reused for READYZ_CACHE_SECONDS.

    The endpoint is public, and each check opens a broker connection and pings
    every worker, waiting up to a second for a reply: a flood of probes would
    otherwise load the broker and the workers and hold a web thread each. Probes
    arriving while a check runs wait for its result instead of starting their own.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._result: dict | None = None
        self._checked_at = 0.0

    def get(self) -> dict:
        with self._lock:
            if self._result is None or time.monotonic() - self._checked_at >= settings.READYZ_CACHE_SECONDS:
                self._result, self._checked_at = _readiness(), time.monotonic()
            return self._result


_recent = _RecentReadiness()


@login_not_required
@never_cache
@require_safe
def readyz(request: HttpRequest) -> JsonResponse:
    """Database, broker, a worker and an active model: 503 when any is missing.

    Anyone gets each check's verdict; the details (worker names, the active
    checkpoint, what failed) only a scraper with METRICS_TOKEN, or anyone in DEBUG.
    """
    result = _recent.get()
    if not (settings.DEBUG or scraper_authorized(request)):
        result = {"ready": result["ready"], "checks": {name: {"ok": check["ok"]} for name, check in result["checks"].items()}}
    return JsonResponse(result, status=200 if result["ready"] else 503)


class HealthProbeMiddleware:
    """``/healthz``, ``/readyz`` and ``/metrics`` answered before host validation, the HTTPS redirect and sessions.

    Probes (compose's health check, a load balancer's) and metrics scrapers call
    the process directly, by its address and over plain HTTP: with ALLOWED_HOSTS
    naming the real site they would otherwise get 400, and with SECURE_SSL_REDIRECT
    a redirect. ``/metrics`` checks its own bearer token.
    """

    def __init__(self, get_response) -> None:
        self.get_response = get_response
        self.probes = {"/healthz": healthz, "/readyz": readyz, "/metrics": metrics}

    def __call__(self, request: HttpRequest):
        probe = self.probes.get(request.path_info)
        return probe(request) if probe is not None else self.get_response(request)
