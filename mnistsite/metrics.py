"""``/metrics``: the service's state in Prometheus's text format, for a scraper holding ``METRICS_TOKEN``."""
from __future__ import annotations

import datetime as dt
import hmac
import logging
import math
import time
from collections.abc import Iterable

from django.conf import settings
from django.core.files.storage import default_storage
from django.db import connection
from django.http import HttpRequest, HttpResponse, HttpResponseNotFound
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_safe

from accounts.selectors import email_owed_stats
from classifier.selectors import prediction_feedback_stats, prediction_queue_stats
from mnistsite.request_metrics import BUCKETS, RequestTotals, request_counts_flush, request_totals_read
from training.selectors import (
    checkpoint_get_active, training_run_counts, training_run_oldest_queued_seconds, training_runs_running,
)

logger = logging.getLogger(__name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_PLAIN = "text/plain; charset=utf-8"

Sample = tuple[dict[str, str], float | None]


def _value(value: float | None) -> str:
    if value is None or math.isnan(value):
        return "NaN"
    return repr(value) if isinstance(value, float) else str(value)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _labels(labels: dict[str, str]) -> str:
    return "{" + ",".join(f'{name}="{_escape(value)}"' for name, value in labels.items()) + "}" if labels else ""


def _seconds(milliseconds: dict[float, float | None]) -> list[Sample]:
    return [({"quantile": str(q)}, ms / 1000 if ms is not None else None) for q, ms in milliseconds.items()]


def _family(name: str, help_text: str, samples: Iterable[Sample], *, kind: str = "gauge") -> list[str]:
    lines = [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]
    lines += [f"{name}{_labels(labels)} {_value(value)}" for labels, value in samples]
    return lines


def _histogram(name: str, help_text: str, rows: Iterable[tuple[dict[str, str], list[int]]]) -> list[str]:
    # Each row: a count per bucket of BUCKETS (not cumulative), one for longer ones, then the sum in microseconds.
    lines = [f"# HELP {name} {help_text}", f"# TYPE {name} histogram"]
    for labels, row in rows:
        cumulative = 0
        for bound, count in zip((*BUCKETS, math.inf), row[:-1], strict=True):
            cumulative += count
            le = "+Inf" if bound == math.inf else repr(bound)
            lines.append(f"{name}_bucket{_labels({**labels, 'le': le})} {cumulative}")
        lines.append(f"{name}_sum{_labels(labels)} {_value(row[-1] / 1_000_000)}")
        lines.append(f"{name}_count{_labels(labels)} {cumulative}")
    return lines


def _http_families(totals: RequestTotals) -> list[str]:
    return [
        *_family("mnistsite_http_requests_total",
                 "Requests answered by the web, by URL pattern (unmatched for a path none matches), method and status.",
                 [({"route": route, "method": method, "status": status}, count)
                  for (route, method, status), count in sorted(totals.requests.items())], kind="counter"),
        *_histogram("mnistsite_http_request_duration_seconds",
                    "Time the web took to answer, middleware included, by URL pattern and method.",
                    [({"route": route, "method": method}, row)
                     for (route, method), row in sorted(totals.durations.items())]),
    ]


def _http_totals() -> RequestTotals | None:
    try:
        return request_totals_read()
    except Exception:  # noqa: BLE001 - the figures from the database are still worth answering with
        logger.warning("request counts left out of the metrics: the cache is unavailable", exc_info=True)
        return None


def metrics_text(*, now: dt.datetime) -> str:
    """Every figure, read from the database and the shared cache at this moment: all web processes answer alike.

    Without a shared cache (Redis) the request counts are the answering process's own.
    """
    window = dt.timedelta(seconds=settings.METRICS_WINDOW_SECONDS)
    queue = prediction_queue_stats(now=now, window=window)
    feedback = prediction_feedback_stats(now=now, window=window)
    owed = email_owed_stats(now=now)
    active = checkpoint_get_active()
    lines = [
        *_family("mnistsite_predictions_waiting", "Predictions not finished yet, by status.",
                 [({"status": status}, count) for status, count in queue.waiting.items()]),
        *_family("mnistsite_prediction_oldest_pending_seconds",
                 "Age of the oldest pending prediction; 0 when none is pending.",
                 [({}, queue.oldest_pending_seconds)]),
        *_family("mnistsite_metrics_window_seconds",
                 "The window of the recent figures below: predictions created this long ago or since.",
                 [({}, window.total_seconds())]),
        *_family("mnistsite_predictions_recent", "Predictions created within the window, by their status now.",
                 [({"status": status}, count) for status, count in queue.recent.items()]),
        *_family("mnistsite_prediction_queue_seconds",
                 "From upload to a worker taking it up, for done predictions created within the window; those still "
                 "waiting count only in mnistsite_predictions_recent and mnistsite_prediction_oldest_pending_seconds.",
                 _seconds(queue.queue_ms), kind="summary"),
        *_family("mnistsite_prediction_compute_seconds",
                 "Preprocessing and the model's forward pass, for done predictions created within the window.",
                 _seconds(queue.compute_ms), kind="summary"),
        *_family("mnistsite_prediction_feedback_recent",
                 "Images whose newest done prediction was created within the window and has feedback (the digit its "
                 "owner says it shows), by verdict: confirmed when the model gave that digit, else corrected.",
                 [({"verdict": verdict}, count) for verdict, count in feedback.items()]),
        *_family("mnistsite_training_runs", "Training runs by status.",
                 [({"status": status}, count) for status, count in training_run_counts().items()]),
        *_family("mnistsite_training_run_oldest_queued_seconds",
                 "How long the oldest queued training run has waited since it was last queued; 0 when none is "
                 "queued. It grows while no trainer is up, or while one is busy with a long run.",
                 [({}, training_run_oldest_queued_seconds())]),
        *_family("mnistsite_training_run_progress", "Progress (0 to 1) of each running training run.",
                 [({"run": str(run.pk)}, run.progress) for run in training_runs_running()]),
        *_family("mnistsite_active_checkpoint_info", "The checkpoint predictions use; absent when none is active.",
                 [({"checkpoint": str(active.pk), "architecture": active.architecture}, 1)] if active else []),
        *_family("mnistsite_active_checkpoint_validation_accuracy",
                 "Accuracy of the active checkpoint on the 5,000 validation images held out of training; absent "
                 "when none is active or it predates the validation split.",
                 [({}, active.validation_accuracy)] if active and active.validation_accuracy is not None else []),
        *_family("mnistsite_active_checkpoint_test_accuracy",
                 "MNIST test accuracy of the active checkpoint; absent when none is active.",
                 [({}, active.test_accuracy)] if active and active.test_accuracy is not None else []),
        *_family("mnistsite_media_free_bytes",
                 "Free space on the uploads' volume; uploads are refused below mnistsite_media_min_free_bytes. "
                 "Absent when the volume cannot tell.",
                 [({}, free)] if (free := _media_free("free_bytes")) is not None else []),
        *_family("mnistsite_media_min_free_bytes", "UPLOAD_MIN_FREE_MB, in bytes.",
                 [({}, settings.UPLOAD_MIN_FREE_MB * 2**20)]),
        *_family("mnistsite_media_free_files",
                 "Files that may still be created on the uploads' volume (one per upload); uploads are refused below "
                 "mnistsite_media_min_free_files. Absent when the volume cannot tell or sets no limit.",
                 [({}, free)] if (free := _media_free("free_files")) is not None else []),
        *_family("mnistsite_media_min_free_files", "UPLOAD_MIN_FREE_FILES.", [({}, settings.UPLOAD_MIN_FREE_FILES)]),
        *_family("mnistsite_email_owed",
                 "Mail owed now, not yet taken by the mail server: confirmation links (confirmation_link) and notices "
                 "to a replaced or removed address (change_notice).",
                 [({"kind": kind}, figures.count) for kind, figures in owed.items()]),
        *_family("mnistsite_email_oldest_owed_seconds",
                 "How long the oldest mail owed has been owed (a link since first asked for, a notice since the "
                 "change); 0 when none is.",
                 [({"kind": kind}, figures.oldest_seconds) for kind, figures in owed.items()]),
    ]
    if (totals := _http_totals()) is not None:
        lines += _http_families(totals)
    return "\n".join(lines) + "\n"


def _database_now() -> dt.datetime:
    # The scrape's "now" from the one clock all web processes share: by their own clocks, hosts a few minutes apart
    # would report ages and windows minutes apart, and an alert on the oldest pending prediction would flap with
    # whichever process the scrape reached.
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute("SELECT STATEMENT_TIMESTAMP()")
            return cursor.fetchone()[0]
        cursor.execute("SELECT STRFTIME('%Y-%m-%d %H:%M:%f', 'now')")
        return dt.datetime.fromisoformat(cursor.fetchone()[0]).replace(tzinfo=dt.UTC)


def _media_free(measure: str) -> int | None:
    try:
        return getattr(default_storage, measure)() if hasattr(default_storage, measure) else None
    except OSError:
        logger.warning("could not read the media volume's free space", exc_info=True)
        return None


# At most one warning a minute for refused scrapes: the endpoint answers before host validation, and anyone who can
# reach it could otherwise fill the log.
REFUSAL_LOG_EVERY_S = 60.0
_last_refusal_logged = [-math.inf]


def _refusal_reason(request: HttpRequest) -> str:
    # Why, for the operator of a scraper set up wrongly; never the token sent, which may be a near miss of the real one.
    header = request.META.get("HTTP_AUTHORIZATION", "")
    if not header.strip():
        return "no Authorization header"
    scheme = header.strip().partition(" ")[0]
    if scheme.lower() != "bearer":
        return "an Authorization header of another scheme than Bearer"
    return "a wrong bearer token"


def _refusal_log(request: HttpRequest) -> None:
    now = time.monotonic()
    if now - _last_refusal_logged[0] >= REFUSAL_LOG_EVERY_S:
        _last_refusal_logged[0] = now
        logger.warning("refused a metrics scrape with %s (repeats within a minute not logged)", _refusal_reason(request))


def scraper_authorized(request: HttpRequest) -> bool:
    """Whether the request carries ``Authorization: Bearer <METRICS_TOKEN>`` (never, while it is unset)."""
    scheme, _, token = request.META.get("HTTP_AUTHORIZATION", "").partition(" ")
    expected = settings.METRICS_TOKEN
    return bool(expected) and scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), expected.encode())


@never_cache
@require_safe
def metrics(request: HttpRequest) -> HttpResponse:
    """404 while ``METRICS_TOKEN`` is unset; 401 without ``Authorization: Bearer <METRICS_TOKEN>``."""
    if not settings.METRICS_TOKEN:
        return HttpResponseNotFound("Metrics are off: set METRICS_TOKEN to turn them on.\n", content_type=_PLAIN)
    if not scraper_authorized(request):
        _refusal_log(request)
        return HttpResponse("A bearer token is required.\n", status=401, content_type=_PLAIN,
                            headers={"WWW-Authenticate": 'Bearer realm="metrics"'})
    # This process's latest counts first, so that a scrape reaching it sees them all (this scrape itself counts in the
    # next one: it is timed once answered).
    request_counts_flush()
    return HttpResponse(metrics_text(now=_database_now()), content_type=CONTENT_TYPE)
