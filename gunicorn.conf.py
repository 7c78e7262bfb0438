"""Gunicorn settings for `make run`, the container and the benchmarks; each one can be overridden from the environment."""
import os
import re
from pathlib import Path

import environ
from gunicorn.glogging import Logger

# Gunicorn reads this file before Django reads .env, so GUNICORN_* set there would apply to Django alone. Variables
# already in the environment win over the file, as in the settings.
environ.Env.read_env(Path(__file__).resolve().parent / ".env", overwrite=False)


def _whole_number(name: str, default: int, *, least: int) -> int:
    # As the settings read theirs (mnistsite.env), without importing the project into the master process: a value
    # gunicorn cannot use stops it naming the variable, rather than as a bare ValueError, or, for 0 processes or
    # threads, as a server that listens and never answers.
    raw = os.environ.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        empty = "; unset it for the default" if not raw.strip() else ""
        raise SystemExit(f"{name}={raw!r} is not a whole number{empty}.") from None
    if value < least:
        raise SystemExit(f"{name} must be {least} or more (it is {value}).")
    return value


# Chosen by `make bench-concurrency` on a 2-core machine that also runs PostgreSQL, Redis and two inference
# processes (numbers in the README): threads overlap a request's waits on the database, the broker and the
# worker; a second process lets the web tier use both cores when uploads are large. In the ninth round's three
# runs 2 x 4 was the fastest layout for batches of 32 each time; for single images one process with 8 threads
# made about 10% more, within the machine's drift across earlier rounds.
workers = _whole_number("GUNICORN_WORKERS", 2, least=1)
threads = _whole_number("GUNICORN_THREADS", 4, least=1)
# The loopback unless told otherwise: behind the reverse proxy, whoever reached the port around it could write their
# own X-Forwarded-For and pass for a new address each request (the lockouts and throttles count by it). The image
# listens on every interface of its container (Dockerfile). Empty (`GUNICORN_BIND=` in .env), gunicorn would listen
# on no address at all.
bind = os.environ.get("GUNICORN_BIND", "").strip() or "127.0.0.1:8000"
# `?wait` holds a request for up to 30 seconds; the timeout is only for a process that stopped answering at all
# (0: never, as gunicorn reads it).
timeout = _whole_number("GUNICORN_TIMEOUT", 120, least=0)
# On SIGTERM (a redeploy) each process finishes the requests it holds, a 30-second `?wait` among them, for this
# long before it is killed; compose's stop_grace_period for web is longer still.
graceful_timeout = _whole_number("GUNICORN_GRACEFUL_TIMEOUT", 35, least=0)
accesslog = os.environ.get("GUNICORN_ACCESS_LOG") or None
# Gunicorn's default line, then the X-Forwarded-For the request came with (behind a proxy the peer address is the
# proxy's; "-" without one), and last the X-Request-ID the site answered with (mnistsite.request_id; "-" for an
# answer gunicorn gave itself), which every log line of the request and of the tasks it published names too. Read
# from the request and the response, so the master never imports the project.
access_log_format = (
    '%(h)s %(l)s %(u)s %(t)s "%(r)s" %(s)s %(b)s "%(f)s" "%(a)s" "%({x-forwarded-for}i)s" %({x-request-id}o)s'
)

# The secret parts of the links mailed to people: a password reset link's token (a link works until it is used or
# expires) and an email confirmation's. The access log would keep them, in the request line and, for the pages
# such a link opens, in the Referer of what those pages load. The pattern of mnistsite.log_secrets, which masks them
# in the site's own log: the master does not import the project.
_SECRET_IN_PATH = re.compile(r"(/accounts/(?:password/reset/[^/?#\s]+|email/confirm))/(?!set-password/)[^/?#\s]+")


class AccessLogger(Logger):
    """Gunicorn's logger, writing the secret parts of mailed links to the access log as ***."""

    def atoms(self, resp, req, environ, request_time):
        atoms = super().atoms(resp, req, environ, request_time)
        return {key: _SECRET_IN_PATH.sub(r"\1/***", value) if isinstance(value, str) else value
                for key, value in atoms.items()}


logger_class = AccessLogger
