"""Gunicorn settings for `make run`, the container and the benchmarks; each one can be overridden from the environment."""
import os

# Chosen by `make bench-concurrency` on a 2-core machine that also runs PostgreSQL, Redis and the inference
# worker (numbers in the README): the request path is mostly waiting on PostgreSQL, Redis and the worker, so
# threads overlap those waits, and a single process leaves both cores to the worker and the database.
# On a machine of its own, raise GUNICORN_WORKERS towards the number of cores.
workers = int(os.environ.get("GUNICORN_WORKERS", "1"))
threads = int(os.environ.get("GUNICORN_THREADS", "8"))
bind = os.environ.get("GUNICORN_BIND", "0.0.0.0:8000")
# `?wait` holds a request for up to 30 seconds; the timeout is only for a process that stopped answering at all.
timeout = int(os.environ.get("GUNICORN_TIMEOUT", "120"))
accesslog = os.environ.get("GUNICORN_ACCESS_LOG") or None
