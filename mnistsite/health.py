"""Liveness and readiness endpoints for load balancers and orchestrators."""
import logging
import threading
import time
from pathlib import Path

from django.conf import settings
from django.contrib.auth.decorators import login_not_required
from django.db import DatabaseError, connection
from django.http import HttpRequest, JsonResponse
from django.utils.log import log_response
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_safe
from kombu import Connection

from mnistsite.celery import app as celery_app
from mnistsite.metrics import metrics, scraper_authorized
from training.ml.atomic import sha256_file
from training.selectors import checkpoint_file_path, checkpoint_get_active

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


# How long the broker check waits to connect, and then for the broker's answer.
BROKER_CHECK_TIMEOUT_S = 2.0


def _check_broker() -> dict:
    # A fresh connection from the current settings, so a broken pooled one cannot hide an outage. Tried once: a
    # retry came only after Kombu's 2-second pause, which every probe then spent while the broker was down (on a web
    # thread), and the next probe asks again anyway. A broker that accepts the connection and then says nothing
    # fails within the same limit, not the publishers' longer socket timeout (REDIS_SOCKET_TIMEOUT).
    options = {**settings.CELERY_BROKER_TRANSPORT_OPTIONS, "socket_timeout": BROKER_CHECK_TIMEOUT_S}
    try:
        with Connection(
            settings.CELERY_BROKER_URL, transport_options=options, connect_timeout=BROKER_CHECK_TIMEOUT_S
        ) as conn:
            conn.ensure_connection(max_retries=0)
        return {"ok": True}
    except Exception as exc:
        return _failed("broker", exc)


class _InferenceWorkerFound(Exception):
    """Ends the wait for replies at the first worker that takes predictions."""


def _inference_queue() -> str:
    # Where predictions are published to, asked of the same router that publishes them.
    return celery_app.amqp.router.route({}, "classifier.tasks.predictions_execute")["queue"].name


def _check_workers() -> dict:
    # Any worker answers a ping, the trainer too: only one consuming the inference queue makes the site work.
    queue = _inference_queue()
    found = []

    def on_reply(reply: dict) -> None:
        for name, queues in reply.items():
            # A worker whose command failed replies with {"error": ...} instead of its queues.
            if isinstance(queues, list) and any(q.get("name") == queue for q in queues):
                found.append(name)
                raise _InferenceWorkerFound

    try:
        # Replies are read until one names the queue, or until none comes for a second.
        celery_app.control.broadcast("active_queues", reply=True, timeout=1.0, callback=on_reply)
    except _InferenceWorkerFound:
        pass
    except Exception as exc:
        return _failed("workers", exc)
    if not found:
        return {"ok": False, "workers": [], "error": f"no worker consumes the {queue} queue"}
    return {"ok": True, "workers": found}


# The active checkpoint's digest, kept with the file's size and modification time: the file is read again only when
# either changes, not at every probe.
_digest_of: dict[tuple[str, int, int], str] = {}


def _file_digest(path: Path) -> str:
    stat = path.stat()
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    if key not in _digest_of:
        _digest_of.clear()
        _digest_of[key] = sha256_file(path)
    return _digest_of[key]


def _check_model() -> dict:
    # The database answered SELECT 1, yet its tables may not (migrations not run, a restore without them): that is
    # "not ready", not a 500 without the other checks' verdicts.
    try:
        checkpoint = checkpoint_get_active()
    except DatabaseError as exc:
        return _failed("model", exc)
    if checkpoint is None:
        return {"ok": False, "error": "no active checkpoint"}
    # A file gone or changed (a volume not mounted, a damaged copy) is one no freshly started worker can load.
    try:
        matches = _file_digest(checkpoint_file_path(checkpoint=checkpoint)) == checkpoint.sha256
    except (OSError, ValueError) as exc:
        return _failed("model", exc) | {"checkpoint": checkpoint.pk}
    if not matches:
        return {"ok": False, "checkpoint": checkpoint.pk, "error": "its file does not match its recorded sha256"}
    return {
        "ok": True,
        "checkpoint": checkpoint.pk,
        "architecture": checkpoint.architecture,
        "validation_accuracy": checkpoint.validation_accuracy,
        "test_accuracy": checkpoint.test_accuracy,
    }


def _readiness() -> dict:
    checks = {"database": _check_database(), "broker": _check_broker()}
    checks["workers"] = _check_workers() if checks["broker"]["ok"] else {"ok": False, "error": "broker down"}
    checks["model"] = _check_model() if checks["database"]["ok"] else {"ok": False, "error": "database down"}
    return {"ready": all(check["ok"] for check in checks.values()), "checks": checks}


class _RecentReadiness:
    """The last readiness result of this process, reused for READYZ_CACHE_SECONDS.

    The endpoint is public, and each check opens a broker connection and asks
    the workers for their queues, waiting up to a second for a reply: a flood of
    probes would otherwise load the broker and the workers and hold a web thread
    each. Probes arriving while a check runs wait for its result instead of
    starting their own, but for wait_seconds at most: a dependency that hangs
    rather than fails (a database host that drops packets after the connection
    was made) must not hold every probe's thread with it. They answer 503 then.
    """

    def __init__(self, wait_seconds: float = 10.0) -> None:
        self._lock = threading.Lock()
        self._result: dict | None = None
        self._checked_at = 0.0
        self._wait_seconds = wait_seconds
        self._running_since: float | None = None

    def get(self) -> dict:
        running_since = self._running_since
        # Once a check has run for wait_seconds, later probes stop waiting for it at once.
        wait = self._wait_seconds if running_since is None else running_since + self._wait_seconds - time.monotonic()
        if not self._lock.acquire(timeout=max(0.0, wait)):
            error = f"checks still running after {self._wait_seconds:g} s"
            return {"ready": False, "checks": {"readiness": {"ok": False, "error": error}}}
        try:
            if self._result is None or time.monotonic() - self._checked_at >= settings.READYZ_CACHE_SECONDS:
                self._running_since = time.monotonic()
                try:
                    self._result, self._checked_at = _readiness(), time.monotonic()
                finally:
                    self._running_since = None
            return self._result
        finally:
            self._lock.release()


_recent = _RecentReadiness()


@login_not_required
@never_cache
@require_safe
def readyz(request: HttpRequest) -> JsonResponse:
    """Database, broker, an inference worker and an active model: 503 when any is missing.

    Anyone gets each check's verdict; the details (worker names, the active
    checkpoint, what failed) only a scraper with METRICS_TOKEN, or anyone in DEBUG.
    """
    result = _recent.get()
    failing = [name for name, check in result["checks"].items() if not check["ok"]]
    if not (settings.DEBUG or scraper_authorized(request)):
        result = {"ready": result["ready"], "checks": {name: {"ok": check["ok"]} for name, check in result["checks"].items()}}
    response = JsonResponse(result, status=200 if result["ready"] else 503)
    if not result["ready"]:
        # A verdict, not a fault of the server: Django would log every 503 as an error, and a probe that fails while a
        # worker restarts or the first model trains would page someone at each probe. A warning naming the checks
        # that failed, once per probe; the failures themselves are logged with why as they are found.
        log_response("Not ready (%s): %s", ", ".join(failing), request.path, response=response, request=request,
                     level="warning")
    return response


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
