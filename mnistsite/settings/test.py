"""Settings for the test suite: the real database and broker from the environment."""
import os
from urllib.parse import urlsplit

os.environ.setdefault("DEBUG", "false")
# Short enough that a killed worker's message comes back within a test.
os.environ.setdefault("CELERY_VISIBILITY_TIMEOUT", "10")
# The same results on every machine; the GPU tests ask for CUDA themselves.
os.environ.setdefault("TORCH_DEVICE", "cpu")
# Each test sees the state it set up; the reuse has a test of its own.
os.environ.setdefault("READYZ_CACHE_SECONDS", "0")
# A database of Redis apart from the broker `make run` uses (0; its cache, in 1, shares this one): the tests purge only
# the queues they use.
os.environ.setdefault("CELERY_BROKER_URL", "redis://127.0.0.1:6379/1")
# Uploads are not refused for this machine's free disk space or files; the tests of those refusals set their own floor.
os.environ.setdefault("UPLOAD_MIN_FREE_MB", "0")
os.environ.setdefault("UPLOAD_MIN_FREE_FILES", "0")
# A model that failed to load in one test must not keep the next test's worker from claiming; the test of that
# pause sets its own.
os.environ.setdefault("MODEL_LOAD_RETRY_AFTER_SECONDS", "0")
os.environ.setdefault("SECRET_KEY", "test-only-key-not-secret-0123456789abcdefghijklmnopqrstuvwxyz")

from mnistsite.settings.base import *  # noqa: E402,F403
from mnistsite.settings.base import env  # noqa: E402

# `make test` runs the suite in several processes (pytest-xdist); each takes a Redis database of its own, counted on
# from the given one (gw0 the given, gw1 the next), since the tests purge the queues they use and delete the broker's
# sets of unacknowledged messages. Celery reads the broker from the environment before any setting, and the workers a
# test starts inherit it: both get the process's URL, which is worked out once per process.
_XDIST_PROCESS = os.environ.get("PYTEST_XDIST_WORKER", "")
_BROKER = urlsplit(CELERY_BROKER_URL)  # noqa: F405
if _XDIST_PROCESS and _BROKER.scheme == "redis" and os.environ.get("TEST_BROKER_PROCESS") != _XDIST_PROCESS:
    _database = int(_BROKER.path.strip("/") or 0) + int(_XDIST_PROCESS.removeprefix("gw"))
    CELERY_BROKER_URL = os.environ["CELERY_BROKER_URL"] = _BROKER._replace(path=f"/{_database}").geturl()
    os.environ["TEST_BROKER_PROCESS"] = _XDIST_PROCESS

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
# Mail is kept in django.core.mail.outbox, whatever EMAIL_URL says; the test of a site without mail sets its own. A
# worker process that a test starts is told to send through EMAIL_URL, to a mail server the test runs, instead.
EMAIL_BACKEND = env.str("TEST_EMAIL_BACKEND", default="django.core.mail.backends.locmem.EmailBackend")
