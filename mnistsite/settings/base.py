"""Settings shared by every environment, read from the environment with django-environ."""
import os
import zoneinfo
from pathlib import Path
from urllib.parse import urlsplit

import environ
from celery.schedules import crontab
from django.core.exceptions import ImproperlyConfigured

from mnistsite.broker import filesystem_transport_options
from mnistsite.env import UNREADABLE_URL, StrictEnv, url_credentials_check, url_scheme_check

BASE_DIR = Path(__file__).resolve().parent.parent.parent


env = StrictEnv()


def _setting_or(name: str, default: str) -> str:
    # An empty value (`NAME=` in .env, `${NAME:-}` in Compose) means the default, not the current directory or
    # a database URL with no engine.
    return env.str(name, default="") or default

# A .env file is optional; real deployments set the variables themselves.
environ.Env.read_env(BASE_DIR / ".env", overwrite=False)

DEBUG = env.bool("DEBUG", default=False)

# The fixed key exists only so a laptop checkout runs without setup; it is never
# accepted with DEBUG off.
_DEV_SECRET_KEY = "dev-only-insecure-key-7d2f0c1e9a4b4f3b8e6a5d1c2b3a4f5e6d7c8b9a"
SECRET_KEY = env.str("SECRET_KEY", default="")
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured("SECRET_KEY must be set when DEBUG is off.")
    SECRET_KEY = _DEV_SECRET_KEY

_LOCAL_HOSTS = ["localhost", "127.0.0.1", "[::1]"]
ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=_LOCAL_HOSTS)
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", default=[])
# A refused form says what happened and what to do in the site's own page, not Django's bare one.
CSRF_FAILURE_VIEW = "accounts.views.csrf_failure"

INSTALLED_APPS = [
    # First, so that its createsuperuser replaces Django's (a management command comes from the first app naming it).
    "accounts",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "classifier",
    "training",
    "api",
]

MIDDLEWARE = [
    # Outermost, so that each request's time includes every other middleware's and the answers they give themselves
    # (the probes', the size limit's, the HTTPS redirect) are counted too.
    "mnistsite.request_metrics.RequestMetricsMiddleware",
    # Next, so that every answer carries its X-Request-ID (the size limit's 411 and 413, the probes') and every
    # line logged while handling it names it.
    "mnistsite.request_id.RequestIdMiddleware",
    # Outside the others but the id's, so that it drops the body they made and keeps the headers they set.
    "mnistsite.head_requests.HeadBodyDropMiddleware",
    "mnistsite.health.HealthProbeMiddleware",
    "mnistsite.middleware.RequestSizeLimitMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "mnistsite.content_security.ContentSecurityPolicyMiddleware",
    "django.contrib.auth.middleware.LoginRequiredMiddleware",
]
# Scripts from the site itself only. Inline style attributes stay allowed (the result page's bars); pictures may
# be data: and blob: URLs (previews of files about to be uploaded). Empty: no header.
CONTENT_SECURITY_POLICY = env.str(
    "CONTENT_SECURITY_POLICY",
    default="default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data: blob:; "
    "connect-src 'self'; object-src 'none'; base-uri 'self'; form-action 'self'; frame-ancestors 'none'",
)

ROOT_URLCONF = "mnistsite.urls"
WSGI_APPLICATION = "mnistsite.wsgi.application"
ASGI_APPLICATION = "mnistsite.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "accounts.context_processors.signup",
            ],
        },
    },
]

_DATABASE_URL = _setting_or("DATABASE_URL", f"sqlite:///{BASE_DIR / 'db.sqlite3'}")
# django-environ would warn with the whole URL it read, password included, and Django fail on a bare KeyError.
url_scheme_check(name="DATABASE_URL", url=_DATABASE_URL, schemes=environ.Env.DB_SCHEMES,
                 example="postgres://user:password@host:5432/mnistsite")
url_credentials_check(name="DATABASE_URL", url=_DATABASE_URL)
try:
    DATABASES = {"default": env.db_url_config(_DATABASE_URL)}
except ValueError:
    # Such as a port that is no number: its message would quote it, which may be a piece of the password.
    raise ImproperlyConfigured(UNREADABLE_URL.format(name="DATABASE_URL")) from None
DATABASES["default"]["ATOMIC_REQUESTS"] = False
DATABASES["default"].setdefault("CONN_MAX_AGE", env.int("DATABASE_CONN_MAX_AGE", default=60, least=0))
# A persistent connection is pinged once per request (or task) before reuse, so a restarted server costs no error.
DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
if DATABASES["default"]["ENGINE"] in {"django.db.backends.postgresql", "django.contrib.gis.db.backends.postgis"}:
    # Without it libpq waits for a host that drops packets as long as the kernel retries (about two minutes), and
    # for one that accepts but never answers for ever, holding the request, the task or /readyz meanwhile. A
    # connect_timeout in DATABASE_URL's query string wins. libpq reads 0 or less as "wait for ever", so a dead database
    # would hang every request and task: refused. It waits at least 2 s whatever it is given.
    DATABASES["default"].setdefault("OPTIONS", {}).setdefault(
        "connect_timeout", env.int("DATABASE_CONNECT_TIMEOUT", default=5, least=1)
    )
    try:
        _connect_timeout = int(DATABASES["default"]["OPTIONS"]["connect_timeout"])
    except (TypeError, ValueError):
        _connect_timeout = None  # no number: libpq refuses it itself, naming it
    if _connect_timeout is not None and _connect_timeout < 1:
        raise ImproperlyConfigured(f"DATABASE_URL's connect_timeout must be 1 or more (it is {_connect_timeout}).")
    # A server that goes silent on a connection already open (a failover, a cut network) is noticed within about a
    # minute, instead of when the kernel gives up (some fifteen minutes): probes while a reply is awaited, and a
    # limit on data sent but never acknowledged. A long query is unaffected: the server's kernel answers probes.
    for option, value in {"keepalives": 1, "keepalives_idle": 30, "keepalives_interval": 10, "keepalives_count": 3,
                          "tcp_user_timeout": 60_000}.items():
        DATABASES["default"]["OPTIONS"].setdefault(option, value)
    # The hot path's hand-written statements (mnistsite.bound_statements) are prepared from a connection's sixth run
    # of each, so the server stops parsing and planning them. Django turns psycopg's preparing off, as a pooler in
    # transaction mode would hand the prepared statements of one client's connection to another (PgBouncer before
    # 1.22, or without max_prepared_statements): false behind one of those.
    if env.bool("DATABASE_PREPARED_STATEMENTS", default=True):
        DATABASES["default"]["OPTIONS"].setdefault("prepare_threshold", 5)
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # SQLite cannot hold connections open across threads the way PostgreSQL can,
    # and WAL lets the web process read while a worker writes.
    DATABASES["default"]["CONN_MAX_AGE"] = 0
    DATABASES["default"].setdefault("OPTIONS", {}).update(
        {"transaction_mode": "IMMEDIATE", "timeout": 20, "init_command": "PRAGMA journal_mode=WAL;"}
    )
    # A file, not memory, so that worker processes started by the tests share the test database; one per test run,
    # so that two runs in one checkout do not delete each other's tables.
    (BASE_DIR / "var").mkdir(exist_ok=True)
    DATABASES["default"]["TEST"] = {"NAME": str(BASE_DIR / "var" / f"test-db-{os.getpid()}.sqlite3")}

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "classifier:upload"
LOGOUT_REDIRECT_URL = "login"

LANGUAGE_CODE = "en-us"
TIME_ZONE = _setting_or("TIME_ZONE", "UTC")
try:
    zoneinfo.ZoneInfo(TIME_ZONE)
except (ValueError, OSError, zoneinfo.ZoneInfoNotFoundError):
    # Django's own refusal ("Incorrect timezone setting") names neither the variable nor what it takes. With no tz
    # database here to judge by, it is left to Django, as before.
    if zoneinfo.available_timezones():
        raise ImproperlyConfigured(
            f"TIME_ZONE={TIME_ZONE!r} is not a time zone: use a name of the tz database as written there "
            "(UTC, Europe/Paris, America/New_York)."
        ) from None
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = Path(_setting_or("STATIC_ROOT", str(BASE_DIR / "staticfiles")))
STATICFILES_DIRS = [BASE_DIR / "static"]
# Without collectstatic (a laptop, DEBUG on), whitenoise serves straight from the app folders.
WHITENOISE_USE_FINDERS = DEBUG
WHITENOISE_AUTOREFRESH = DEBUG

MEDIA_ROOT = Path(_setting_or("MEDIA_ROOT", str(BASE_DIR / "media")))
# Uploaded images are served only through an authenticated view, never at a
# public URL, so MEDIA_URL is deliberately not routed anywhere.
MEDIA_URL = "/media-not-served/"
# Each uploaded file (and its folder) is flushed to disk before its row commits, so a crash right after an upload
# cannot leave a row naming a file that is not there. A request's files are flushed together: a few percent of
# bench-serve's single-image throughput on this machine's disk, nothing that shows for batches. Off only where the
# storage itself guarantees durability (battery-backed caches, some network volumes).
UPLOAD_FSYNC = env.bool("UPLOAD_FSYNC", default=True)
# Uploads are refused (nothing stored) while storing them would leave less than this free on the media volume:
# PostgreSQL, often on the same disk, stops for good when it cannot write its log, so it keeps room to work.
UPLOAD_MIN_FREE_MB = env.int("UPLOAD_MIN_FREE_MB", default=1024, least=0)
UPLOAD_MIN_FREE_FILES = env.int("UPLOAD_MIN_FREE_FILES", default=10_000, least=0)
# Each user's uploads may take this much of the media volume (0: no limit); past it, uploads are refused (403).
UPLOAD_QUOTA_MB = env.int("UPLOAD_QUOTA_MB", default=1024, least=0)
# Days the orphan sweep keeps what it set aside (MEDIA_ROOT/orphaned/) before deleting it.
ORPHANED_FILES_KEEP_DAYS = env.int("ORPHANED_FILES_KEEP_DAYS", default=30, least=0)
STORAGES = {
    "default": {"BACKEND": "mnistsite.storage.MediaStorage"},
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
}
DATA_DIR = Path(_setting_or("DATA_DIR", str(BASE_DIR / "data")))
CHECKPOINT_DIR = Path(_setting_or("CHECKPOINT_DIR", str(BASE_DIR / "checkpoints")))
TORCH_DEVICE = env.str("TORCH_DEVICE", default="auto")
if TORCH_DEVICE not in {"auto", "cpu", "cuda"}:
    raise ImproperlyConfigured("TORCH_DEVICE must be one of auto, cpu, cuda.")
TORCH_NUM_THREADS = env.int("TORCH_NUM_THREADS", default=1, least=1)

# Upload limits and prediction display. Each 0 would refuse every upload.
UPLOAD_MAX_BYTES = env.int("UPLOAD_MAX_BYTES", default=5 * 1024 * 1024, least=1)
UPLOAD_MAX_FILES = env.int("UPLOAD_MAX_FILES", default=32, least=1)
UPLOAD_MAX_PIXELS = env.int("UPLOAD_MAX_PIXELS", default=40_000_000, least=1)
DATA_UPLOAD_MAX_NUMBER_FILES = UPLOAD_MAX_FILES
# Room for the largest multi-file request; each file is still checked on its own.
DATA_UPLOAD_MAX_MEMORY_SIZE = 2_621_440
FILE_UPLOAD_MAX_MEMORY_SIZE = 2_621_440
# Most predictions one worker process runs through the model in one forward pass.
INFERENCE_BATCH_SIZE = env.int("INFERENCE_BATCH_SIZE", default=32)
# A batch's finished ids travel in one PostgreSQL notification, whose payload must stay under 8000 bytes.
MAX_INFERENCE_BATCH_SIZE = 256  # 20 characters an id at most (a bigint and its comma)
if not 1 <= INFERENCE_BATCH_SIZE <= MAX_INFERENCE_BATCH_SIZE:
    raise ImproperlyConfigured(f"INFERENCE_BATCH_SIZE must be from 1 to {MAX_INFERENCE_BATCH_SIZE}.")
LOW_CONFIDENCE_THRESHOLD = env.float("LOW_CONFIDENCE_THRESHOLD", default=0.7, least=0, most=1)
# Pending predictions older than this are re-published by the sweeper.
PREDICTION_REPUBLISH_AFTER_SECONDS = env.int("PREDICTION_REPUBLISH_AFTER_SECONDS", default=60, least=0)
# A prediction "running" for longer than this lost its worker: the sweeper re-publishes it and a
# redelivered message may claim it again. Keep it above the longest prediction.
PREDICTION_RUNNING_STALE_AFTER_SECONDS = env.int("PREDICTION_RUNNING_STALE_AFTER_SECONDS", default=120, least=1)
# A ?wait upload stops waiting (202) once a prediction has been pending this long and no worker has started one
# since: the queue is stalled.
PREDICTION_WAIT_STALLED_AFTER_SECONDS = env.int("PREDICTION_WAIT_STALLED_AFTER_SECONDS", default=10, least=0)
# Uploads of one user that may go on waiting for their digits (?wait) past their first second at once, and history
# exports one user may stream at once: each holds a web thread while it lasts. Beyond it a wait stops after its first
# second (202), an export is refused (429). 0: no cap.
PREDICTION_WAITS_PER_USER = env.int("PREDICTION_WAITS_PER_USER", default=4, least=0)
HISTORY_EXPORTS_PER_USER = env.int("HISTORY_EXPORTS_PER_USER", default=2, least=0)
# A prediction whose worker was lost this many times is failed by the sweeper rather than run again; so is one
# handed back this many times by workers that could not load the model (counted apart: no worker was lost on it).
PREDICTION_MAX_ATTEMPTS = env.int("PREDICTION_MAX_ATTEMPTS", default=3, least=1)
# A worker process that failed to load the active model claims nothing for this long unless the model loads by
# then: it would only hand the claims back, counting hand-backs against predictions a healthy worker can compute.
MODEL_LOAD_RETRY_AFTER_SECONDS = env.int("MODEL_LOAD_RETRY_AFTER_SECONDS", default=60, least=0)
# /metrics answers only a scraper sending "Authorization: Bearer <METRICS_TOKEN>"; unset, it is off (404).
# It skips host validation and the HTTPS redirect, so the token is all that guards it: a guessable one is refused.
METRICS_TOKEN = env.str("METRICS_TOKEN", default="").strip()
if METRICS_TOKEN and len(METRICS_TOKEN) < 32:
    raise ImproperlyConfigured("METRICS_TOKEN must be at least 32 characters (e.g. `openssl rand -hex 32`).")
# The recent figures in /metrics cover predictions created this many seconds ago or since.
METRICS_WINDOW_SECONDS = env.int("METRICS_WINDOW_SECONDS", default=300)
if not 10 <= METRICS_WINDOW_SECONDS <= 86400:
    raise ImproperlyConfigured("METRICS_WINDOW_SECONDS must be between 10 and 86400.")
# Training runs whose heartbeat is older than this are considered dead.
TRAINING_STALE_AFTER_SECONDS = env.int("TRAINING_STALE_AFTER_SECONDS", default=120, least=1)
# A queued run whose message was sent this long ago, while no run is running, lost its message: it is sent again.
TRAINING_REPUBLISH_AFTER_SECONDS = env.int("TRAINING_REPUBLISH_AFTER_SECONDS", default=600, least=0)

# Celery: JSON only, late acknowledgement, one message at a time per process.
# Set empty, Celery would fall back to its own default, RabbitMQ on localhost, which nothing here runs.
CELERY_BROKER_URL = _setting_or("CELERY_BROKER_URL", "redis://127.0.0.1:6379/0")
# Several URLs separated by ";" are Kombu's failover list.
for _broker_url in CELERY_BROKER_URL.split(";"):
    url_credentials_check(name="CELERY_BROKER_URL", url=_broker_url.strip())
CELERY_BROKER_FILESYSTEM_DIR = Path(_setting_or("CELERY_BROKER_FILESYSTEM_DIR", str(BASE_DIR / "var" / "broker")))
CELERY_VISIBILITY_TIMEOUT = env.int("CELERY_VISIBILITY_TIMEOUT", default=3600, least=1)
# An upload must not hang while the broker is down: the sweeper re-publishes
# whatever could not be sent.
CELERY_BROKER_CONNECTION_TIMEOUT = 2
# How long a command to Redis (the broker, or the cache) may wait for its answer.
REDIS_SOCKET_TIMEOUT = env.float("REDIS_SOCKET_TIMEOUT", default=env.float("CELERY_BROKER_SOCKET_TIMEOUT", default=5.0))
if REDIS_SOCKET_TIMEOUT <= 0:
    # redis-py takes 0 as a socket that never waits: every command would fail.
    raise ImproperlyConfigured(f"REDIS_SOCKET_TIMEOUT must be more than 0 seconds (it is {REDIS_SOCKET_TIMEOUT}).")
if CELERY_BROKER_URL.startswith("filesystem://"):
    CELERY_BROKER_TRANSPORT_OPTIONS = filesystem_transport_options(CELERY_BROKER_FILESYSTEM_DIR)
else:
    # A message whose worker died is delivered again after this many seconds. Kombu looks for such
    # messages only every interval x throttle seconds (100 s by default); scanning every few seconds
    # keeps the redelivery close to the visibility timeout, at the cost of one small Redis query.
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "visibility_timeout": CELERY_VISIBILITY_TIMEOUT,
        "unacked_restore_interval": env.int(
            "CELERY_UNACKED_RESTORE_INTERVAL", default=max(1, min(10, CELERY_VISIBILITY_TIMEOUT // 5)), least=0
        ),
        "unacked_restore_throttle": 1,
        # Without these a broker that stops answering without closing the connection (a hung host, a failover,
        # a NAT timeout) holds every publish, and the web thread of the upload behind it, for ever. The
        # worker's blocking reads last brpop_timeout (1 s), well inside the limit.
        "socket_timeout": REDIS_SOCKET_TIMEOUT,
        "socket_connect_timeout": CELERY_BROKER_CONNECTION_TIMEOUT,
    }
    # A worker takes a message only when one of its processes is free: a trainer acknowledges a run's message as
    # the run starts (training.tasks), and would otherwise hold the next run's through a run of hours while another
    # trainer idles. Kombu's filesystem transport ignores it, and warns.
    CELERY_WORKER_DISABLE_PREFETCH = True
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_TASK_PUBLISH_RETRY = False
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_EVENT_SERIALIZER = "json"
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
# Celery's Django fixup closes every database connection around every task unless this is set; a
# fresh PostgreSQL backend per prediction cost more than the prediction. mnistsite.celery instead
# applies CONN_MAX_AGE and the health check before each task, as Django does per request.
CELERY_DB_REUSE_MAX = 1_000_000
# A lost broker connection must not kill the tasks running: a training run would lose its epoch and one of its
# attempts to every Redis restart. Their messages come back after the visibility timeout, and the run's or the
# predictions' claim turns that second delivery into a no-op.
CELERY_WORKER_CANCEL_LONG_RUNNING_TASKS_ON_CONNECTION_LOSS = False
CELERY_TASK_ALWAYS_EAGER = env.bool("CELERY_TASK_ALWAYS_EAGER", default=False)
CELERY_TASK_EAGER_PROPAGATES = True
CELERY_TASK_DEFAULT_QUEUE = "inference"
CELERY_TASK_ROUTES = {
    # The reaper is quick bookkeeping: on the training queue a trainer busy for hours would hold it back.
    "training.tasks.training_runs_reap": {"queue": "inference"},
    "training.tasks.*": {"queue": "training"},
    "classifier.tasks.*": {"queue": "inference"},
    # Reset mail, one message a request: a second or two of a working mail server's; one that stalls holds a pool
    # process for the task's time limit at most (60 s a try, accounts.tasks), and a retry waits off the pool. With
    # the housekeeping that shares the inference worker: every deployment runs one, and the trainer may be busy for
    # hours.
    "accounts.tasks.*": {"queue": "inference"},
}
# Each message expires when the next is due, so none pile up while no worker takes them.
CELERY_BEAT_SCHEDULE = {
    "sweep-pending-predictions": {
        "task": "classifier.tasks.predictions_sweep", "schedule": 30.0, "options": {"expires": 30.0},
    },
    # Notices to a replaced or removed email address whose task was lost
    # (accounts.services.email_change_notices_requeue).
    "requeue-email-change-notices": {
        "task": "accounts.tasks.email_change_notices_sweep", "schedule": 300.0, "options": {"expires": 300.0},
    },
    # Email confirmation links owed: those whose address's allowance has refilled, or whose task was lost
    # (accounts.services.email_confirmations_sweep). Its interval bounds the wait the Account page tells of.
    "send-owed-email-confirmations": {
        "task": "accounts.tasks.email_confirmations_sweep", "schedule": 60.0, "options": {"expires": 60.0},
    },
    "delete-orphaned-upload-files": {
        "task": "classifier.tasks.upload_files_orphaned_delete", "schedule": 3600.0, "options": {"expires": 3600.0},
    },
    # Once a day, every folder: files whose upload was deleted but whose own deletion failed. At a time of day, not
    # every 24 hours: beat counts those from its own start, and a beat restarted daily would never get there.
    "delete-all-orphaned-upload-files": {
        "task": "classifier.tasks.upload_files_orphaned_delete", "schedule": crontab(hour=3, minute=17),
        "kwargs": {"everything": True}, "options": {"expires": 86400.0},
    },
    # The quota's per-owner counts, from the uploads themselves (see classifier.services.storage_use_recount).
    "recount-storage-use": {
        "task": "classifier.tasks.storage_use_recount", "schedule": crontab(hour=3, minute=47),
        "options": {"expires": 86400.0},
    },
    # Idempotency keys past IDEMPOTENCY_KEY_TTL_HOURS already count as never sent; this only frees their rows.
    "delete-expired-idempotency-keys": {
        "task": "classifier.tasks.idempotency_keys_expired_delete", "schedule": 3600.0, "options": {"expires": 3600.0},
    },
    "delete-expired-sessions": {
        "task": "accounts.tasks.sessions_expired_delete", "schedule": crontab(hour=4, minute=7),
        "options": {"expires": 86400.0},
    },
    "reap-stale-training-runs": {
        "task": "training.tasks.training_runs_reap", "schedule": 60.0, "options": {"expires": 60.0},
    },
}
CELERY_TIMEZONE = "UTC"
# A file that each worker's main process, and beat, touch every CELERY_HEARTBEAT_INTERVAL seconds while they are
# connected to the broker and their loop runs, for health checks that only look at its age (docker-compose.yml);
# empty: none. One file per process.
CELERY_HEARTBEAT_FILE = env.str("CELERY_HEARTBEAT_FILE", default="")
CELERY_HEARTBEAT_INTERVAL = env.int("CELERY_HEARTBEAT_INTERVAL", default=10)
if CELERY_HEARTBEAT_INTERVAL < 1:
    raise ImproperlyConfigured("CELERY_HEARTBEAT_INTERVAL must be a number of seconds, 1 or more.")
# Celery's default scheduler, which also touches that file.
CELERY_BEAT_SCHEDULER = "mnistsite.heartbeat:HeartbeatScheduler"

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "api.authentication.TokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    # Views that name their own permissions list TokenScopeAllows too (a test walks every route).
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated", "api.permissions.TokenScopeAllows"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    # DRF's own, but with a JSON parser that answers a too deeply nested document with 400, not 500.
    "DEFAULT_PARSER_CLASSES": [
        "api.parsers.JSONParser",
        "rest_framework.parsers.FormParser",
        "rest_framework.parsers.MultiPartParser",
    ],
    # DRF's page numbers, with `page_size` (up to api.pagination.MAX_PAGE_SIZE) for the client to choose.
    "DEFAULT_PAGINATION_CLASS": "api.pagination.Pagination",
    "PAGE_SIZE": 50,
    # DRF's, but an unknown `?format=` is a 406 like an Accept header nothing satisfies, not a 404.
    "DEFAULT_CONTENT_NEGOTIATION_CLASS": "api.negotiation.ContentNegotiation",
    # How many proxies in front of the site append to X-Forwarded-For. With 0 the header is ignored, so a
    # client cannot pick the address that log-in lockouts and anonymous throttles count against.
    "NUM_PROXIES": env.int("NUM_PROXIES", default=0, least=0),
    "EXCEPTION_HANDLER": "api.errors.exception_handler",
}
# Days an API token works after it was made; 0: until it is replaced or revoked. Applies to tokens made before
# a change too, since it is counted from each token's creation. A century at most, which 0 covers anyway: far more
# runs past the last date Python holds (9999-12-31), and every request carrying a token would fail on its expiry.
API_TOKEN_MAX_AGE_DAYS = env.int("API_TOKEN_MAX_AGE_DAYS", default=365)
if not 0 <= API_TOKEN_MAX_AGE_DAYS <= 36500:
    raise ImproperlyConfigured(
        f"API_TOKEN_MAX_AGE_DAYS must be a number of days from 1 to 36500, or 0 for no expiry "
        f"(it is {API_TOKEN_MAX_AGE_DAYS})."
    )
SPECTACULAR_SETTINGS = {
    "TITLE": "mnistsite API",
    "DESCRIPTION": (
        "Handwritten digit recognition: uploads, predictions and training. A method a path does not take is "
        "answered 405, with the methods it does take in the `Allow` header."
    ),
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    # Multipart uploads are described as binary files only when requests and responses get separate components.
    "COMPONENT_SPLIT_REQUEST": True,
    # The API validates a PATCH body whole (feedback needs its field), so it is described with its required fields,
    # not as a "Patched" component where every field is optional.
    "COMPONENT_SPLIT_PATCH": False,
    # Swagger UI is served from our own static files (drf-spectacular-sidecar), never from a CDN.
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    # JavaScript, not JSON (drf-spectacular passes a string as it is). Swagger UI ticks "Send empty value" for
    # every optional field of a form body, so Try it out on an upload would send the file field left untouched
    # as text (`image=`), which the API refuses as a client mistake; unticked, an untouched field is left out as a
    # browser's own form leaves out an empty file input. Presets are plugins; this keeps drf-spectacular's own.
    "SWAGGER_UI_SETTINGS": """{
  deepLinking: true,
  presets: [SwaggerUIBundle.presets.apis, () => ({wrapComponents: {
    ParameterIncludeEmpty: (Original, system) => (props) => system.React.createElement(
      Original, {...props, isIncludedOptions: {...props.isIncludedOptions, defaultValue: false}}),
  }})],
}""",
    # The statuses DRF and the request size limit answer before a view runs (406, 411, 413, 415), declared for
    # every operation that can get them.
    "POSTPROCESSING_HOOKS": ["drf_spectacular.hooks.postprocess_schema_enums", "api.responses.declare_protocol_errors"],
}

# Shared by every web process, so throttles and log-in lockouts hold across them.
_CACHE_URL = _setting_or("CACHE_URL", "locmemcache://")
# Read as written, a password with an unencoded / or # turns the Redis URL into a socket path.
url_credentials_check(name="CACHE_URL", url=_CACHE_URL)
try:
    CACHES = {"default": env.cache_url_config(_CACHE_URL)}
except ImproperlyConfigured:
    raise ImproperlyConfigured(
        f"CACHE_URL has an unknown scheme {_CACHE_URL.partition(':')[0]!r}; use one of "
        f"{', '.join(f'{scheme}://' for scheme in environ.Env.CACHE_SCHEMES)}."
    ) from None
if CACHES["default"]["BACKEND"] == "django.core.cache.backends.redis.RedisCache":
    # The same limit as the broker's, so one setting says how long a Redis that stops answering may hold a
    # request (the log-in form, an upload's throttle); redis-py's own default would be 5 s whatever it says.
    CACHES["default"].setdefault("OPTIONS", {})
    CACHES["default"]["OPTIONS"].setdefault("socket_timeout", REDIS_SOCKET_TIMEOUT)
    CACHES["default"]["OPTIONS"].setdefault("socket_connect_timeout", CELERY_BROKER_CONNECTION_TIMEOUT)
# Images a user may upload per period, through the pages and the API together ("600/minute"; empty: no limit).
# API_UPLOAD_THROTTLE_RATE is its earlier name.
UPLOAD_THROTTLE_RATE = env.rate("UPLOAD_THROTTLE_RATE",
                                default=env.rate("API_UPLOAD_THROTTLE_RATE", default="600/minute"))
# A larger picture counts as one image of that rate per started this many pixels (0: every picture counts one).
UPLOAD_PIXELS_PER_IMAGE = env.int("UPLOAD_PIXELS_PER_IMAGE", default=1_000_000, least=0)
# Hours an API upload's Idempotency-Key is remembered: a repeat within them is answered, not stored again.
IDEMPOTENCY_KEY_TTL_HOURS = env.int("IDEMPOTENCY_KEY_TTL_HOURS", default=24)
if IDEMPOTENCY_KEY_TTL_HOURS < 1:
    raise ImproperlyConfigured("IDEMPOTENCY_KEY_TTL_HOURS must be a number of hours, 1 or more.")
# Whether anyone may create an account; off, only administrators add users.
SIGNUP_ENABLED = env.bool("SIGNUP_ENABLED", default=True)
# How long a web process reuses its last /readyz result (the endpoint is public and its checks are not free).
READYZ_CACHE_SECONDS = env.float("READYZ_CACHE_SECONDS", default=5.0, least=0)
# Accounts that one client address may create per period ("10/hour"; empty: no limit).
SIGNUP_THROTTLE_RATE = env.rate("SIGNUP_THROTTLE_RATE", default="10/hour")
# Every log-in form (the admin's too) goes through the lockout.
AUTHENTICATION_BACKENDS = ["accounts.backends.LockoutModelBackend"]
# 0 failures would lock everyone out at once; a lockout of 0 seconds would never hold.
LOGIN_FAILURE_LIMIT = env.int("LOGIN_FAILURE_LIMIT", default=5, least=1)
LOGIN_LOCKOUT_SECONDS = env.int("LOGIN_LOCKOUT_SECONDS", default=300, least=1)

# Outgoing email, for password reset links: smtp://user:password@host:25, smtp+tls://...:587 (STARTTLS),
# smtp+ssl://...:465, consolemail://, filemail:///path, ... Unset: the site sends no email, and its reset page
# says so instead of offering a form that would send nothing.
EMAIL_URL = env.str("EMAIL_URL", default="")
EMAIL_BACKEND = "django.core.mail.backends.dummy.EmailBackend"
if EMAIL_URL:
    url_credentials_check(name="EMAIL_URL", url=EMAIL_URL)
    try:
        _email_config = env.email_url_config(EMAIL_URL)
    except ImproperlyConfigured:
        # Named by its scheme only: the URL holds the mail server's password.
        raise ImproperlyConfigured(
            f"EMAIL_URL has an unknown scheme {EMAIL_URL.partition(':')[0]!r}; use one of "
            f"{', '.join(f'{scheme}://' for scheme in environ.Env.EMAIL_SCHEMES)}."
        ) from None
    except ValueError:
        # Such as a password with a "/" read as the end of the host and port: the error would quote part of it.
        raise ImproperlyConfigured(UNREADABLE_URL.format(name="EMAIL_URL")) from None
    if "EMAIL_FILE_PATH" in _email_config:
        # django-environ drops the leading slash of filemail:///var/mail: the folder is the URL's path as written.
        _email_config["EMAIL_FILE_PATH"] = urlsplit(EMAIL_URL).path
    # Parts the URL leaves out (a port, a user) keep Django's defaults rather than becoming None.
    globals().update({name: value for name, value in _email_config.items() if value not in (None, "")})
DEFAULT_FROM_EMAIL = env.str("DEFAULT_FROM_EMAIL", default="webmaster@localhost")
# A mail server that stops answering must not hold the worker sending a reset link for ever (0 would be a socket
# that never waits, failing every message).
EMAIL_TIMEOUT = env.int("EMAIL_TIMEOUT", default=10, least=1)
# The site's address as people reach it, scheme and host only (https://digits.example.com): reset links are built
# from it, never from a request's Host header, which the asker chooses. The default is what `make run` serves;
# production sets it whenever it sends mail (production.py).
SITE_URL = env.str("SITE_URL", default="").strip() or "http://127.0.0.1:8000"
try:
    _site = urlsplit(SITE_URL)
    _site.port  # noqa: B018 - raises for a port that is no number
except ValueError:
    _site = None
if (_site is None or _site.scheme not in ("http", "https") or not _site.hostname or _site.username is not None
        or _site.path not in ("", "/") or _site.query or _site.fragment):
    raise ImproperlyConfigured(
        "SITE_URL must be the site's address, scheme and host only (no path, user or password), "
        "e.g. https://digits.example.com."
    )
SITE_URL = f"{_site.scheme}://{_site.netloc}"
# Seconds a password reset link works (and only until it is used, or the password changes another way).
PASSWORD_RESET_TIMEOUT = env.int("PASSWORD_RESET_TIMEOUT", default=3600)
if PASSWORD_RESET_TIMEOUT < 60:
    raise ImproperlyConfigured("PASSWORD_RESET_TIMEOUT must be a number of seconds, 60 or more.")
# Reset links one client address may ask for per period, and that may be sent to one email address per period
# (whoever asks), so the form cannot fill someone's inbox ("10/hour"; empty: no limit).
PASSWORD_RESET_THROTTLE_RATE = env.rate("PASSWORD_RESET_THROTTLE_RATE", default="10/hour")
PASSWORD_RESET_EMAIL_THROTTLE_RATE = env.rate("PASSWORD_RESET_EMAIL_THROTTLE_RATE", default="3/hour")
# Seconds a link confirming an account's email address works (60 or more); reset links go only to a confirmed one.
EMAIL_CONFIRMATION_TIMEOUT = env.int("EMAIL_CONFIRMATION_TIMEOUT", default=3 * 24 * 3600)
if EMAIL_CONFIRMATION_TIMEOUT < 60:
    raise ImproperlyConfigured("EMAIL_CONFIRMATION_TIMEOUT must be a number of seconds, 60 or more.")
# Confirmation links that may be mailed per period for one account, and to one email address whichever accounts
# name it (anyone may sign up with someone's address), so that nobody can fill an inbox ("3/hour"; empty: no limit).
EMAIL_CONFIRMATION_THROTTLE_RATE = env.rate("EMAIL_CONFIRMATION_THROTTLE_RATE", default="3/hour")

# Any case; an unknown name would stop the start anyway, as "Unable to configure root logger", naming neither.
LOG_LEVEL = env.str("LOG_LEVEL", default="INFO").strip().upper()
# The five names the README gives, not Python's aliases besides them (WARN, FATAL, NOTSET).
if LOG_LEVEL not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
    raise ImproperlyConfigured(
        f"LOG_LEVEL={env.str('LOG_LEVEL')!r} is not a log level: use DEBUG, INFO, WARNING, ERROR or CRITICAL."
    )
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    # Each line names the request it was logged for (its X-Request-ID, also sent on with the tasks it publishes), or
    # "-" outside any.
    "filters": {
        "request_id": {"()": "mnistsite.request_id.RequestIdFilter"},
        "warning_without_traceback": {"()": "mnistsite.log_levels.WarningWithoutTraceback"},
        "secrets_masked": {"()": "mnistsite.log_secrets.SecretsInPathsMasked"},
    },
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s [%(request_id)s] %(name)s %(message)s"}},
    # The handler's level too: records of loggers with a level of their own (Django's are at INFO) reach the root's
    # handlers whatever the root's level is.
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "formatter": "plain",
            "filters": ["request_id", "secrets_masked"],
            "level": LOG_LEVEL,
        }
    },
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": {
        # Without Django's own handlers: with DEBUG on its console handler printed each record a second time, plainly,
        # beside the root's; its mail handler mails nobody, as ADMINS is empty.
        "django": {"handlers": []},
        # A request for a Host the site does not serve: a scanner's, as a rule (see the filter).
        "django.security.DisallowedHost": {"filters": ["warning_without_traceback"]},
    },
}
