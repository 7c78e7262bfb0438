"""Gunicorn settings for `make run`, the container and the benchmarks; each one can be overridden from the environment."""
import os
from pathlib import Path

import environ

# Gunicorn reads this file before Django reads .env, so GUNICORN_* set there would apply to Django alone. Variables
# already in the environment win over the file, as in the settings.
environ.Env.read_env(Path(__file__).resolve().parent / ".env", overwrite=False)

# Chosen by `make bench-concurrency` on a 2-core machine that also runs PostgreSQL, Redis and two inference
# processes (numbers in the README): threads overlap a request's waits on the database, the broker and the
# worker; a second process lets the web tier use both cores when uploads are large. In the ninth round's three
# runs 2 x 4 was the fastest layout for batches of 32 each time; for single images one process with 8 threads
# made about 10% more, within the machine's drift across earlier rounds.
workers = int(os.environ.get("GUNICORN_WORKERS", "2"))
threads = int(os.environ.get("GUNICORN_THREADS", "4"))
bind = os.environ.get("GUNICORN_BIND", "0.0.0.0:8000")
# `?wait` holds a request for up to 30 seconds; the timeout is only for a process that stopped answering at all.
timeout = int(os.environ.get("GUNICORN_TIMEOUT", "120"))
# On SIGTERM (a redeploy) each process finishes the requests it holds, a 30-second `?wait` among them, for this
# long before it is killed; compose's stop_grace_period for web is longer still.
graceful_timeout = int(os.environ.get("GUNICORN_GRACEFUL_TIMEOUT", "35"))
accesslog = os.environ.get("GUNICORN_ACCESS_LOG") or None
