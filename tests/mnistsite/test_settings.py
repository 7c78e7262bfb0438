"""Settings come from the environment and production settings pass Django's deploy checks."""
import os
import re
import subprocess
import sys

import pytest

from tests.processes import REPO


# Where production keeps its state: it names each, having no default for them.
PRODUCTION_STATE = {"DATABASE_URL": "sqlite://:memory:", "MEDIA_ROOT": "/srv/media", "CHECKPOINT_DIR": "/srv/checkpoints"}
IGNORED = {"SECRET_KEY", "DEBUG", "DJANGO_SETTINGS_MODULE", "DJANGO_ALLOW_ASYNC_UNSAFE", *PRODUCTION_STATE}


def _run_manage(*args: str, **env: str) -> subprocess.CompletedProcess:
    # Other tests' process-wide variables (e.g. the browser tests' DJANGO_ALLOW_ASYNC_UNSAFE) must not leak in.
    full_env = {k: v for k, v in os.environ.items() if k not in IGNORED}
    if env.get("DJANGO_SETTINGS_MODULE") == "mnistsite.settings.production":
        full_env.update(PRODUCTION_STATE)
    full_env.update(env)
    return subprocess.run(
        [sys.executable, "manage.py", *args], cwd=REPO, env=full_env, capture_output=True, text=True, timeout=120
    )


def _deploy_check(**env: str) -> subprocess.CompletedProcess:
    return _run_manage(
        "check", "--deploy", "--fail-level", "WARNING",
        DJANGO_SETTINGS_MODULE="mnistsite.settings.production",
        SECRET_KEY="a-long-random-production-key-6c1f4e2b9d8a7f3e5c0b1a2d4e6f8a9b0c",
        ALLOWED_HOSTS="digits.example.com",
        **env,
    )


def test_production_settings_pass_the_deploy_check_at_warning_level():
    result = _deploy_check(CACHE_URL="rediscache://127.0.0.1:6379/1")
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_deploy_check_warns_when_lockouts_and_throttles_would_count_per_process():
    result = _deploy_check(CACHE_URL="locmemcache://")
    assert result.returncode != 0
    assert "accounts.W001" in result.stderr and "CACHE_URL" in result.stderr


def test_production_refuses_the_development_key_even_with_debug_asked_for():
    result = _run_manage("check", DJANGO_SETTINGS_MODULE="mnistsite.settings.production", DEBUG="true")
    assert result.returncode != 0
    assert "development key is public" in result.stderr


def test_production_redirects_plain_http_to_https_but_answers_health_probes_by_address():
    probe = (
        "from django.test import Client; client = Client(); "
        "by_address = dict(HTTP_HOST='127.0.0.1:8000'); by_name = dict(HTTP_HOST='digits.example.com'); "
        "print(client.get('/healthz', **by_address).status_code, client.head('/healthz', **by_address).status_code, "
        "client.get('/accounts/login/', **by_name).headers.get('Location'))"
    )
    result = _run_manage(
        "shell", "-c", probe,
        DJANGO_SETTINGS_MODULE="mnistsite.settings.production",
        SECRET_KEY="a-long-random-production-key-6c1f4e2b9d8a7f3e5c0b1a2d4e6f8a9b0c",
        ALLOWED_HOSTS="digits.example.com",
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.splitlines()[-1].split() == ["200", "200", "https://digits.example.com/accounts/login/"]


def test_production_settings_refuse_to_start_without_a_secret_key():
    result = _run_manage("check", DJANGO_SETTINGS_MODULE="mnistsite.settings.production")
    assert result.returncode != 0
    assert "SECRET_KEY must be set" in result.stderr


@pytest.mark.parametrize("key", ["short-but-set", "ab" * 40, "django-insecure-" + "k3y-gEnerated-by-startproject" * 2])
def test_production_refuses_a_secret_key_that_djangos_deploy_check_calls_weak(key):
    result = _run_manage("check", DJANGO_SETTINGS_MODULE="mnistsite.settings.production", SECRET_KEY=key,
                         ALLOWED_HOSTS="digits.example.com")
    assert result.returncode != 0
    assert "SECRET_KEY is too weak for production" in result.stderr
    assert key not in result.stderr


def test_production_refuses_to_keep_the_database_uploads_or_models_inside_the_code_folder_by_default():
    result = _run_manage(
        "check", DJANGO_SETTINGS_MODULE="mnistsite.settings.production",
        SECRET_KEY="a-long-random-production-key-6c1f4e2b9d8a7f3e5c0b1a2d4e6f8a9b0c",
        DATABASE_URL="", MEDIA_ROOT="", CHECKPOINT_DIR="",
    )
    assert result.returncode != 0
    assert "DATABASE_URL, MEDIA_ROOT, CHECKPOINT_DIR must be set in production" in result.stderr


def test_the_images_collectstatic_step_runs_with_the_production_settings_it_is_given(tmp_path):
    # The image is built without a database or secrets: its RUN line must give what the settings need.
    dockerfile = (REPO / "Dockerfile").read_text()
    image_env = dict(re.findall(r"(\w+)=(\S+)", dockerfile[dockerfile.index("ENV "):dockerfile.index("WORKDIR")]))
    step = [word for word in dockerfile[dockerfile.index("RUN SECRET_KEY="):].split("&&")[0].split()[1:] if word != "\\"]
    command = step.index("python")
    env = {k: v for k, v in os.environ.items() if k not in IGNORED}
    env.update(image_env)
    env.update(dict(word.split("=", 1) for word in step[:command]))
    env.update(STATIC_ROOT=str(tmp_path / "static"), MEDIA_ROOT=str(tmp_path / "media"))
    result = subprocess.run([sys.executable, *step[command + 1:]], cwd=REPO, env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert (tmp_path / "static" / "staticfiles.json").is_file()


def test_dev_settings_start_without_a_secret_key():
    result = _run_manage("check", DJANGO_SETTINGS_MODULE="mnistsite.settings.dev")
    assert result.returncode == 0, result.stderr


def test_an_unknown_torch_device_is_refused():
    result = _run_manage("check", DJANGO_SETTINGS_MODULE="mnistsite.settings.dev", TORCH_DEVICE="tpu")
    assert result.returncode != 0
    assert "TORCH_DEVICE" in result.stderr


def test_an_inference_batch_too_large_for_one_notification_is_refused():
    result = _run_manage("check", DJANGO_SETTINGS_MODULE="mnistsite.settings.dev", INFERENCE_BATCH_SIZE="5000")
    assert result.returncode != 0
    assert "INFERENCE_BATCH_SIZE must be from 1 to 256" in result.stderr


def test_a_short_metrics_token_or_an_unbounded_window_refuses_to_start():
    short = _run_manage("check", METRICS_TOKEN="guessable")
    assert short.returncode != 0 and "METRICS_TOKEN must be at least 32 characters" in short.stderr
    window = _run_manage("check", METRICS_WINDOW_SECONDS="0")
    assert window.returncode != 0 and "METRICS_WINDOW_SECONDS must be between" in window.stderr
    assert _run_manage("check", METRICS_TOKEN=" " + "x" * 32 + " ").returncode == 0


@pytest.mark.parametrize("module", ["mnistsite.wsgi", "mnistsite.asgi", "mnistsite.celery"])
def test_a_server_started_without_a_settings_module_gets_production_settings(module):
    env = {k: v for k, v in os.environ.items() if k not in IGNORED} | PRODUCTION_STATE
    probe = f"import {module}; from django.conf import settings; print(settings.SETTINGS_MODULE, settings.DEBUG)"
    without_key = subprocess.run([sys.executable, "-c", probe], cwd=REPO, env=env, capture_output=True, text=True,
                                 timeout=120)
    assert without_key.returncode != 0 and "SECRET_KEY must be set" in without_key.stderr
    env["SECRET_KEY"] = "a-long-random-production-key-6c1f4e2b9d8a7f3e5c0b1a2d4e6f8a9b0c"
    with_key = subprocess.run([sys.executable, "-c", probe], cwd=REPO, env=env, capture_output=True, text=True,
                              timeout=120)
    assert with_key.stdout.split() == ["mnistsite.settings.production", "False"], with_key.stderr


def test_a_redis_cache_that_stops_answering_fails_a_command_in_seconds_not_for_ever():
    import socket

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)  # accepts, never answers
    try:
        probe = (
            "import time; from django.core.cache import cache; started = time.monotonic()\n"
            "try:\n    cache.get('x')\nexcept Exception as exc:\n    print(type(exc).__name__)\n"
            "print(round(time.monotonic() - started))"
        )
        result = _run_manage(
            "shell", "-c", probe, DJANGO_SETTINGS_MODULE="mnistsite.settings.dev",
            CACHE_URL=f"rediscache://127.0.0.1:{listener.getsockname()[1]}/1", REDIS_SOCKET_TIMEOUT="1",
        )
    finally:
        listener.close()
    assert result.returncode == 0, result.stderr
    error, seconds = result.stdout.split()[-2:]
    # redis-py gives up after 5 s of its own; the setting makes it 1 here.
    assert error == "TimeoutError" and int(seconds) <= 3


def test_a_postgresql_host_that_never_answers_fails_the_connection_in_seconds_not_for_ever():
    import socket

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)  # accepts, never answers: without a connect timeout libpq waits for ever
    try:
        probe = (
            "import time; from django.db import connection; started = time.monotonic()\n"
            "try:\n    connection.ensure_connection()\nexcept Exception as exc:\n    print(type(exc).__name__)\n"
            "print(round(time.monotonic() - started))"
        )
        result = _run_manage(
            "shell", "-c", probe, DJANGO_SETTINGS_MODULE="mnistsite.settings.dev",
            DATABASE_URL=f"postgres://mnistsite@127.0.0.1:{listener.getsockname()[1]}/mnistsite",
            DATABASE_CONNECT_TIMEOUT="2",  # libpq's least
        )
    finally:
        listener.close()
    assert result.returncode == 0, result.stderr
    error, seconds = result.stdout.split()[-2:]
    assert error == "OperationalError" and int(seconds) <= 5


@pytest.mark.parametrize("timeout", ["0", "-3"])
def test_a_connect_timeout_that_libpq_reads_as_wait_for_ever_is_refused_at_start_by_its_name(timeout):
    result = _run_manage("check", DATABASE_URL="postgres://mnistsite@db.example/mnistsite",
                         DATABASE_CONNECT_TIMEOUT=timeout)
    assert result.returncode != 0
    assert f"DATABASE_CONNECT_TIMEOUT must be 1 or more (it is {timeout})." in result.stderr


def test_a_connect_timeout_of_zero_in_the_database_url_is_refused_without_quoting_the_url():
    result = _run_manage("check", DATABASE_URL="postgres://mnistsite:s3cret@db.example/mnistsite?connect_timeout=0")
    assert result.returncode != 0
    assert "DATABASE_URL's connect_timeout must be 1 or more (it is 0)" in result.stderr
    assert "s3cret" not in result.stderr


def test_only_postgresql_gets_a_connect_timeout_and_one_in_the_url_wins():
    show = (
        "from django.conf import settings; "
        "print(settings.DATABASES['default'].get('OPTIONS', {}).get('connect_timeout'))"
    )
    url = "postgres://mnistsite@db.example/mnistsite"
    default = _run_manage("shell", "-c", show, DATABASE_URL=url)
    from_url = _run_manage("shell", "-c", show, DATABASE_URL=f"{url}?connect_timeout=9", DATABASE_CONNECT_TIMEOUT="3")
    sqlite = _run_manage("shell", "-c", show, DATABASE_URL="sqlite:///var/unused.sqlite3")
    assert [r.stdout.split()[-1] for r in (default, from_url, sqlite)] == ["5", "9", "None"], (
        default.stderr + from_url.stderr + sqlite.stderr)


def test_postgresql_connections_prepare_repeated_statements_unless_turned_off(monkeypatch):
    monkeypatch.delenv("DATABASE_PREPARED_STATEMENTS", raising=False)
    show = (
        "from django.conf import settings; "
        "print(settings.DATABASES['default'].get('OPTIONS', {}).get('prepare_threshold'))"
    )
    url = "postgres://mnistsite@db.example/mnistsite"
    results = [
        _run_manage("shell", "-c", show, DATABASE_URL=url),
        _run_manage("shell", "-c", show, DATABASE_URL=url, DATABASE_PREPARED_STATEMENTS="false"),
    ]
    assert [r.stdout.split()[-1] for r in results] == ["5", "None"], "".join(r.stderr for r in results)


@pytest.mark.django_db
def test_postgresql_connections_probe_a_silent_server_instead_of_waiting_on_it_for_minutes():
    from django.db import connection

    if connection.vendor != "postgresql":
        pytest.skip("libpq's keepalives are PostgreSQL's")
    connection.ensure_connection()
    # What libpq itself was given for the connection the test runs on.
    dsn = dict(part.split("=", 1) for part in connection.connection.info.dsn.split())
    assert {key: dsn.get(key) for key in ("keepalives", "keepalives_idle", "keepalives_interval", "keepalives_count",
                                           "tcp_user_timeout")} == {
        "keepalives": "1", "keepalives_idle": "30", "keepalives_interval": "10", "keepalives_count": "3",
        "tcp_user_timeout": "60000"}


def _settings_probe(*names: str, **env: str) -> list[str]:
    probe = f"from django.conf import settings; print(*(repr(getattr(settings, n)) for n in {names!r}), sep='\\n')"
    result = _run_manage("shell", "-c", probe, **env)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout.splitlines()[-len(names):]


def test_email_url_gives_the_mail_server_its_port_encryption_and_percent_encoded_credentials():
    names = ("EMAIL_BACKEND", "EMAIL_HOST", "EMAIL_PORT", "EMAIL_USE_TLS", "EMAIL_USE_SSL", "EMAIL_HOST_USER",
             "EMAIL_HOST_PASSWORD", "DEFAULT_FROM_EMAIL", "EMAIL_TIMEOUT")
    starttls = _settings_probe(*names, DJANGO_SETTINGS_MODULE="mnistsite.settings.dev", DEFAULT_FROM_EMAIL="d@x.org",
                               EMAIL_URL="smtp+tls://digits%40example.com:p%2Fss%3Aword@mail.example.com:587")
    assert starttls == ["'django.core.mail.backends.smtp.EmailBackend'", "'mail.example.com'", "587", "True", "False",
                        "'digits@example.com'", "'p/ss:word'", "'d@x.org'", "10"]
    # What the URL leaves out keeps Django's defaults.
    plain = _settings_probe("EMAIL_PORT", "EMAIL_HOST_USER", "EMAIL_USE_SSL",
                            DJANGO_SETTINGS_MODULE="mnistsite.settings.dev", EMAIL_URL="smtp+ssl://mail.example.com")
    assert plain == ["25", "''", "True"]


def test_an_email_url_it_cannot_read_is_refused_without_quoting_any_of_its_password():
    result = _run_manage("check", DJANGO_SETTINGS_MODULE="mnistsite.settings.dev",
                         EMAIL_URL="smtp://mailer:s3cr/et@mail.example.com:587")
    assert result.returncode != 0
    assert "percent-encode" in result.stderr and "s3cr" not in result.stdout + result.stderr


def test_a_filemail_url_writes_mail_to_the_absolute_folder_it_names():
    written = _settings_probe("EMAIL_BACKEND", "EMAIL_FILE_PATH", DJANGO_SETTINGS_MODULE="mnistsite.settings.dev",
                              EMAIL_URL="filemail:///var/mail/mnistsite")
    assert written == ["'django.core.mail.backends.filebased.EmailBackend'", "'/var/mail/mnistsite'"]


def test_without_email_url_development_prints_mail_and_production_sends_none():
    backend = ("EMAIL_BACKEND",)
    assert _settings_probe(*backend, DJANGO_SETTINGS_MODULE="mnistsite.settings.dev", EMAIL_URL="") == [
        "'django.core.mail.backends.console.EmailBackend'"]
    assert _settings_probe(*backend, DJANGO_SETTINGS_MODULE="mnistsite.settings.dev", EMAIL_URL="smtp://m.example.com"
                           ) == ["'django.core.mail.backends.smtp.EmailBackend'"]
    assert _settings_probe(*backend, DJANGO_SETTINGS_MODULE="mnistsite.settings.production", EMAIL_URL="",
                           SECRET_KEY="a-long-random-production-key-6c1f4e2b9d8a7f3e5c0b1a2d4e6f8a9b0c") == [
        "'django.core.mail.backends.dummy.EmailBackend'"]


def test_production_without_email_says_on_the_reset_page_that_reset_by_email_is_not_available():
    probe = (
        "from django.conf import settings; from django.test import Client, override_settings\n"
        # The page's stylesheet, not what is tested: production's manifest needs a collectstatic first.
        "override_settings(STORAGES={**settings.STORAGES, 'staticfiles': {'BACKEND': "
        "'django.contrib.staticfiles.storage.StaticFilesStorage'}}).enable()\n"
        "client = Client(HTTP_HOST='digits.example.com')\n"
        "page = client.get('/accounts/password/reset/', secure=True); "
        "sent = client.post('/accounts/password/reset/', {'email': 'a@example.com'}, secure=True); "
        "print(page.status_code, 'not available on this site' in page.content.decode(), "
        "'name=\"email\"' in page.content.decode(), sent.status_code)"
    )
    result = _run_manage(
        "shell", "-c", probe,
        DJANGO_SETTINGS_MODULE="mnistsite.settings.production", EMAIL_URL="",
        SECRET_KEY="a-long-random-production-key-6c1f4e2b9d8a7f3e5c0b1a2d4e6f8a9b0c",
        ALLOWED_HOSTS="digits.example.com",
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.splitlines()[-1].split() == ["200", "True", "False", "503"]


def test_an_email_url_of_unknown_scheme_is_refused_without_showing_its_password():
    result = _run_manage("check", DJANGO_SETTINGS_MODULE="mnistsite.settings.dev",
                         EMAIL_URL="smtps+starttls://digits:hunter2secret@mail.example.com:587")
    assert result.returncode != 0
    assert "EMAIL_URL has an unknown scheme 'smtps+starttls'" in result.stderr and "smtp+tls://" in result.stderr
    assert "hunter2secret" not in result.stdout + result.stderr


def test_production_with_email_needs_the_address_it_is_sent_from():
    env = dict(DJANGO_SETTINGS_MODULE="mnistsite.settings.production", EMAIL_URL="smtp://mail.example.com:25",
               SECRET_KEY="a-long-random-production-key-6c1f4e2b9d8a7f3e5c0b1a2d4e6f8a9b0c",
               SITE_URL="https://digits.example.com")
    refused = _run_manage("check", DEFAULT_FROM_EMAIL="", **env)
    assert refused.returncode != 0 and "DEFAULT_FROM_EMAIL must be set in production when EMAIL_URL is" in refused.stderr
    assert _run_manage("check", DEFAULT_FROM_EMAIL="digits@example.com", **env).returncode == 0


def test_production_with_email_needs_the_site_url_reset_links_lead_to():
    env = dict(DJANGO_SETTINGS_MODULE="mnistsite.settings.production", EMAIL_URL="smtp://mail.example.com:25",
               SECRET_KEY="a-long-random-production-key-6c1f4e2b9d8a7f3e5c0b1a2d4e6f8a9b0c",
               DEFAULT_FROM_EMAIL="digits@example.com", ALLOWED_HOSTS="digits.example.com")
    refused = _run_manage("check", SITE_URL="", **env)
    assert refused.returncode != 0 and "SITE_URL must be set in production when EMAIL_URL is" in refused.stderr
    assert _run_manage("check", SITE_URL="https://digits.example.com", **env).returncode == 0
    # Without mail, nothing needs it.
    assert _run_manage("check", SITE_URL="", **{**env, "EMAIL_URL": ""}).returncode == 0


def test_site_url_is_a_scheme_and_host_only_and_defaults_to_what_make_run_serves():
    dev = {"DJANGO_SETTINGS_MODULE": "mnistsite.settings.dev"}
    assert _settings_probe("SITE_URL", SITE_URL="", **dev) == ["'http://127.0.0.1:8000'"]
    assert _settings_probe("SITE_URL", SITE_URL="https://Digits.example.com:8443/", **dev) == [
        "'https://Digits.example.com:8443'"]
    for wrong in ("digits.example.com", "ftp://digits.example.com", "https://digits.example.com/app",
                  "https://user:pw@digits.example.com", "https://digits.example.com/?next=x", "https://:443",
                  "https://digits.example.com:port"):
        result = _run_manage("check", SITE_URL=wrong, **dev)
        assert result.returncode != 0, wrong
        assert "SITE_URL must be the site's address, scheme and host only" in result.stderr, wrong
        assert "user:pw" not in result.stdout + result.stderr


def test_reset_links_last_an_hour_unless_configured_and_never_less_than_a_minute():
    dev = {"DJANGO_SETTINGS_MODULE": "mnistsite.settings.dev"}
    assert _settings_probe("PASSWORD_RESET_TIMEOUT", **dev) == ["3600"]
    assert _settings_probe("PASSWORD_RESET_TIMEOUT", PASSWORD_RESET_TIMEOUT="86400", **dev) == ["86400"]
    short = _run_manage("check", PASSWORD_RESET_TIMEOUT="0", **dev)
    assert short.returncode != 0 and "PASSWORD_RESET_TIMEOUT must be a number of seconds, 60 or more" in short.stderr


PRODUCTION_KEY = "a-long-random-production-key-6c1f4e2b9d8a7f3e5c0b1a2d4e6f8a9b0c"
# Loads a settings module once per case in one process (the settings alone, without Django's apps: what every
# process does first) and prints, per case, the setting asked for or the refusal.
_EACH_CASE = """
import importlib, json, os, sys
from django.core.exceptions import ImproperlyConfigured
module, cases = sys.argv[1], json.loads(sys.argv[2])
for overrides, name in cases:
    saved = {key: os.environ.get(key) for key in overrides}
    os.environ.update(overrides)
    for loaded in [m for m in sys.modules if m.startswith("mnistsite.settings")]:
        del sys.modules[loaded]
    try:
        print(json.dumps(repr(getattr(importlib.import_module(module), name))))
    except ImproperlyConfigured as exc:
        print(json.dumps(f"refused: {exc}"))
    for key, value in saved.items():
        if value is None:
            del os.environ[key]
        else:
            os.environ[key] = value
"""


def _settings_each(cases: list[tuple[dict[str, str], str]], module: str = "mnistsite.settings.dev",
                   **env: str) -> list[str]:
    """For each (environment, setting name): the setting's repr, or "refused: <why>"."""
    import json

    full_env = {k: v for k, v in os.environ.items() if k not in IGNORED}
    if module == "mnistsite.settings.production":
        full_env.update(PRODUCTION_STATE, SECRET_KEY=PRODUCTION_KEY)
    full_env.update(env)
    result = subprocess.run([sys.executable, "-c", _EACH_CASE, module, json.dumps(cases)], cwd=REPO, env=full_env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    return [json.loads(line) for line in result.stdout.splitlines()[-len(cases):]]


RATE_SETTINGS = [
    "UPLOAD_THROTTLE_RATE", "API_UPLOAD_THROTTLE_RATE", "SIGNUP_THROTTLE_RATE", "PASSWORD_RESET_THROTTLE_RATE",
    "PASSWORD_RESET_EMAIL_THROTTLE_RATE", "EMAIL_CONFIRMATION_THROTTLE_RATE",
]


def test_a_malformed_rate_refuses_to_start_naming_the_variable_and_the_form_it_takes():
    bad = ["600/week", "10 per hour", "0/minute"]
    cases = [({name: rate}, "UPLOAD_THROTTLE_RATE") for name in RATE_SETTINGS for rate in bad]
    for (overrides, _), outcome in zip(cases, _settings_each(cases), strict=True):
        [(name, rate)] = overrides.items()
        assert outcome.startswith(f"refused: {name}={rate!r} is not a rate"), outcome
        assert "e.g. 10/hour" in outcome, outcome
    # Empty still means no limit, and the earlier name still counts.
    assert _settings_each([({"UPLOAD_THROTTLE_RATE": ""}, "UPLOAD_THROTTLE_RATE"),
                           ({"API_UPLOAD_THROTTLE_RATE": "5/s"}, "UPLOAD_THROTTLE_RATE")]) == ["''", "'5/s'"]


def test_the_deploy_check_fails_on_a_rate_the_throttles_could_not_read():
    result = _deploy_check(CACHE_URL="rediscache://127.0.0.1:6379/1", SIGNUP_THROTTLE_RATE="10 per hour")
    assert result.returncode != 0
    assert "SIGNUP_THROTTLE_RATE='10 per hour' is not a rate" in result.stderr


def _numeric_settings() -> list[tuple[str, str]]:
    source = "".join((REPO / "mnistsite" / "settings" / f"{name}.py").read_text() for name in ("base", "production"))
    return re.findall(r'env\.(int|float|bool)\(\s*"(\w+)"', source)


def test_every_malformed_number_or_switch_refuses_to_start_naming_the_variable_and_its_value():
    read = _numeric_settings()
    assert len(read) > 35
    bad = {"int": "5MB", "float": "5s", "bool": "flase"}
    cases = [({name: bad[kind]}, "DEBUG") for kind, name in read] + [({name: ""}, "DEBUG") for kind, name in read]
    outcomes = _settings_each(cases, module="mnistsite.settings.production",
                              # Read only for PostgreSQL, and for a Redis broker.
                              DATABASE_URL="postgres://mnistsite@db.example/mnistsite",
                              CELERY_BROKER_URL="redis://127.0.0.1:6379/1", ALLOWED_HOSTS="digits.example.com")
    for (overrides, _), outcome in zip(cases, outcomes, strict=True):
        [(name, value)] = overrides.items()
        assert outcome.startswith(f"refused: {name}={value!r} is not "), (name, outcome)


def test_switches_take_the_usual_words_in_any_case_and_nothing_else():
    words = {"true": "True", "TRUE": "True", "Yes": "True", "on": "True", "1": "True", " false ": "False",
             "no": "False", "OFF": "False", "0": "False"}
    cases = [({"SIGNUP_ENABLED": word}, "SIGNUP_ENABLED") for word in [*words, "flase", "2", "enabled"]]
    outcomes = _settings_each(cases)
    assert outcomes[:len(words)] == list(words.values())
    for outcome in outcomes[len(words):]:
        assert outcome.startswith("refused: SIGNUP_ENABLED=") and "true or false" in outcome, outcome


def test_a_switch_set_wrong_in_production_refuses_to_start_rather_than_turning_https_off():
    result = _run_manage("check", DJANGO_SETTINGS_MODULE="mnistsite.settings.production", SECRET_KEY=PRODUCTION_KEY,
                         ALLOWED_HOSTS="digits.example.com", SECURE_SSL_REDIRECT="flase")
    assert result.returncode != 0
    assert "SECURE_SSL_REDIRECT='flase' is not true or false" in result.stderr


def test_numbers_outside_the_range_that_makes_sense_refuse_to_start():
    refused = {"UPLOAD_MAX_FILES": "0", "UPLOAD_MAX_BYTES": "0", "UPLOAD_MAX_PIXELS": "0",
               "LOW_CONFIDENCE_THRESHOLD": "70", "TORCH_NUM_THREADS": "0", "PREDICTION_MAX_ATTEMPTS": "0",
               "LOGIN_FAILURE_LIMIT": "0", "LOGIN_LOCKOUT_SECONDS": "0", "EMAIL_TIMEOUT": "0",
               "CELERY_VISIBILITY_TIMEOUT": "0", "REDIS_SOCKET_TIMEOUT": "0", "READYZ_CACHE_SECONDS": "-1",
               "DATABASE_CONN_MAX_AGE": "-1", "NUM_PROXIES": "-1", "UPLOAD_QUOTA_MB": "-1",
               "PREDICTION_RUNNING_STALE_AFTER_SECONDS": "0", "TRAINING_STALE_AFTER_SECONDS": "0",
               "SECURE_HSTS_SECONDS": "-1"}
    accepted = {"LOW_CONFIDENCE_THRESHOLD": ["0", "1", "0.55"], "UPLOAD_QUOTA_MB": ["0"],
                "UPLOAD_MIN_FREE_MB": ["0"], "PREDICTION_REPUBLISH_AFTER_SECONDS": ["0"], "SECURE_HSTS_SECONDS": ["0"]}
    cases = [({name: value}, name) for name, value in refused.items()]
    cases += [({name: value}, name) for name, values in accepted.items() for value in values]
    outcomes = _settings_each(cases, module="mnistsite.settings.production", ALLOWED_HOSTS="digits.example.com")
    for (_, name), outcome in zip(cases[:len(refused)], outcomes[:len(refused)], strict=True):
        assert outcome.startswith(f"refused: {name} must be ") and "(it is " in outcome, (name, outcome)
    assert outcomes[len(refused):] == ["0.0", "1.0", "0.55", "0", "0", "0", "0"]


def test_an_unknown_log_level_is_refused_and_a_known_one_taken_in_any_case():
    outcomes = _settings_each([({"LOG_LEVEL": level}, "LOGGING") for level in ("verbose", "warn", "warning")])
    assert outcomes[0].startswith("refused: LOG_LEVEL='verbose' is not a log level"), outcomes[0]
    assert "DEBUG, INFO, WARNING, ERROR or CRITICAL" in outcomes[0]
    # Python's aliases are not among the five the README names.
    assert outcomes[1].startswith("refused: LOG_LEVEL='warn' is not a log level"), outcomes[1]
    assert "'level': 'WARNING'" in outcomes[2]


@pytest.mark.parametrize("password", ["s3cr/et", "s3cr#et", "s3cr?et", "s3cr@et", "12/s3cret"])
def test_a_database_url_with_an_unencoded_character_in_its_password_is_refused_without_quoting_it(password):
    outcome, = _settings_each([({"DATABASE_URL": f"postgres://digits:{password}@db.example:5432/digits"}, "DATABASES")])
    assert outcome.startswith("refused: DATABASE_URL could not be read: percent-encode"), outcome
    assert "s3c" not in outcome


def test_a_database_url_that_fails_to_parse_shows_no_part_of_its_password_at_startup():
    result = _run_manage("check", DATABASE_URL="postgres://digits:s3cr/et@db.example:5432/digits")
    assert result.returncode != 0
    assert "DATABASE_URL could not be read: percent-encode" in result.stderr
    assert "s3cr" not in result.stdout + result.stderr


def test_a_database_url_with_a_percent_encoded_password_or_a_file_path_is_read_as_written():
    show = "DATABASES"
    encoded, sqlite, socket = _settings_each([
        ({"DATABASE_URL": "postgres://digits:s3%2Fc%40r%23e%3Ft@db.example:5432/digits?sslmode=require"}, show),
        ({"DATABASE_URL": "sqlite:////srv/state@2/db.sqlite3"}, show),
        ({"DATABASE_URL": "postgres://%2Fvar%2Frun%2Fpostgresql/digits"}, show),
    ])
    assert "'PASSWORD': 's3/c@r#e?t'" in encoded and "'HOST': 'db.example'" in encoded
    assert "'NAME': '/srv/state@2/db.sqlite3'" in sqlite
    assert "'NAME': 'digits'" in socket


def test_an_email_url_whose_password_would_be_silently_misread_is_refused():
    outcome, = _settings_each([({"EMAIL_URL": "smtp://mailer:25/s3cret@mail.example.com"}, "EMAIL_HOST")])
    assert outcome.startswith("refused: EMAIL_URL could not be read: percent-encode"), outcome
    assert "s3cret" not in outcome


def test_development_always_serves_the_local_addresses_that_make_run_prints():
    dev, production = _settings_each([({"ALLOWED_HOSTS": "digits.example.com"}, "ALLOWED_HOSTS")]), _settings_each(
        [({"ALLOWED_HOSTS": "digits.example.com"}, "ALLOWED_HOSTS")], module="mnistsite.settings.production")
    assert dev == ["['digits.example.com', 'localhost', '127.0.0.1', '[::1]']"]
    assert production == ["['digits.example.com']"]


def test_production_refuses_an_empty_allowed_hosts_that_would_answer_every_page_400():
    outcomes = _settings_each([({"ALLOWED_HOSTS": ""}, "ALLOWED_HOSTS"), ({"ALLOWED_HOSTS": " , "}, "ALLOWED_HOSTS")],
                              module="mnistsite.settings.production")
    for outcome in outcomes:
        assert outcome.startswith("refused: ALLOWED_HOSTS is empty"), outcome


@pytest.mark.parametrize("name", ["CELERY_BROKER_URL", "CACHE_URL"])
@pytest.mark.parametrize("password", ["s3cr/et", "s3cr#et", "s3cr?et", "s3cr@et"])
def test_a_broker_or_cache_url_with_an_unencoded_character_in_its_password_is_refused_without_quoting_it(
    name, password
):
    # Read as written, such a URL names another host or a socket path (the cache), or fails at the first connection
    # with a message quoting a piece of the password (the broker).
    outcome, = _settings_each([({name: f"redis://:{password}@redis.example:6379/2"}, "CACHES")])
    assert outcome.startswith(f"refused: {name} could not be read: percent-encode"), outcome
    assert "s3c" not in outcome


def test_a_failover_broker_list_an_encoded_password_and_a_cache_folder_are_read_as_written():
    broker, cache, folder = _settings_each([
        ({"CELERY_BROKER_URL": "redis://:s3%2Fc@h1:6379/0;redis://:s3%2Fc@h2:6379/0"}, "CELERY_BROKER_URL"),
        ({"CACHE_URL": "rediscache://:s3%2Fc%40r@redis.example:6379/1"}, "CACHES"),
        ({"CACHE_URL": "filecache:///srv/cache@2"}, "CACHES"),
    ])
    assert broker == repr("redis://:s3%2Fc@h1:6379/0;redis://:s3%2Fc@h2:6379/0")
    assert "redis.example:6379/1" in cache
    assert "'LOCATION': '/srv/cache@2'" in folder


def test_a_cache_url_set_empty_means_the_default_and_an_unknown_scheme_is_refused_naming_the_variable():
    empty, unknown = _settings_each([({"CACHE_URL": ""}, "CACHES"), ({"CACHE_URL": "memcached://h:11211"}, "CACHES")])
    assert "LocMemCache" in empty
    assert unknown.startswith("refused: CACHE_URL has an unknown scheme 'memcached'; use one of"), unknown


def test_an_unknown_time_zone_is_refused_naming_the_variable_and_an_empty_one_is_utc():
    unknown, lower, empty = _settings_each(
        [({"TIME_ZONE": "Mars/Olympus"}, "TIME_ZONE"), ({"TIME_ZONE": "utc"}, "TIME_ZONE"), ({"TIME_ZONE": ""}, "TIME_ZONE")]
    )
    assert unknown.startswith("refused: TIME_ZONE='Mars/Olympus' is not a time zone"), unknown
    assert lower.startswith("refused: TIME_ZONE='utc' is not a time zone"), lower
    assert empty == "'UTC'"


def test_folder_settings_set_empty_mean_their_defaults_not_the_working_directory():
    static, broker = _settings_each([({"STATIC_ROOT": ""}, "STATIC_ROOT"),
                                     ({"CELERY_BROKER_FILESYSTEM_DIR": ""}, "CELERY_BROKER_FILESYSTEM_DIR")])
    assert static == repr(REPO / "staticfiles")
    assert broker == repr(REPO / "var" / "broker")


def test_hosts_and_origins_listed_with_spaces_after_the_commas_are_each_read_as_written():
    # Read with the spaces, " b.example.com" matched no Host header (every page there answered 400), and
    # " https://b.example.com" no Origin (every form posted from there failed its CSRF check).
    hosts, origins = _settings_each(
        [({"ALLOWED_HOSTS": "a.example.com, b.example.com ,"}, "ALLOWED_HOSTS"),
         ({"CSRF_TRUSTED_ORIGINS": "https://a.example.com,  https://b.example.com"}, "CSRF_TRUSTED_ORIGINS")],
        module="mnistsite.settings.production",
    )
    assert hosts == "['a.example.com', 'b.example.com']"
    assert origins == "['https://a.example.com', 'https://b.example.com']"


@pytest.mark.parametrize("url", [
    "//digits:s3cret@db.example:5432/digits", "digits:s3cret@db.example:5432/digits", "db.example",
    "postgress://digits:s3cret@db.example:5432/digits",
])
def test_a_database_url_without_a_known_scheme_is_refused_naming_the_variable_and_quoting_no_password(url):
    # django-environ warned with the whole parsed URL, password included, then the start failed on a bare KeyError.
    result = _run_manage("check", DATABASE_URL=url)
    assert result.returncode != 0
    assert "ImproperlyConfigured: DATABASE_URL" in result.stderr, result.stderr
    assert "postgres://" in result.stderr.splitlines()[-1]
    assert "s3cret" not in result.stdout + result.stderr


def test_a_broker_url_set_empty_means_the_local_redis_not_celerys_own_rabbitmq_default():
    # Empty, Celery fell back to amqp://guest@localhost:5672, where workers retried for ever without a word of why.
    empty, = _settings_each([({"CELERY_BROKER_URL": ""}, "CELERY_BROKER_URL")])
    assert empty == repr("redis://127.0.0.1:6379/0")


def test_production_serves_collected_static_files_only_even_with_debug_left_on_in_the_environment():
    # DEBUG=true left in .env from `make run`: production turns DEBUG off, and must not keep what base.py derived
    # from it, whitenoise rescanning the folders at every request and serving the unhashed source files.
    finders, refresh = _settings_each([({"DEBUG": "true"}, "WHITENOISE_USE_FINDERS"),
                                       ({"DEBUG": "true"}, "WHITENOISE_AUTOREFRESH")],
                                      module="mnistsite.settings.production")
    assert (finders, refresh) == ("False", "False")


def test_a_token_lifetime_longer_than_dates_can_hold_refuses_to_start_naming_the_variable():
    # timedelta holds at most 999,999,999 days and a date ends at 9999-12-31: past either, making or checking a
    # token would fail every request that carries one.
    refused = ["99999999999", "1000000000", "3000000", "36501", "-1"]
    accepted = ["0", "1", "365", "36500"]
    cases = [({"API_TOKEN_MAX_AGE_DAYS": value}, "API_TOKEN_MAX_AGE_DAYS") for value in [*refused, *accepted]]
    outcomes = _settings_each(cases)
    for value, outcome in zip(refused, outcomes[:len(refused)], strict=True):
        assert outcome.startswith("refused: API_TOKEN_MAX_AGE_DAYS must be ") and f"(it is {value})" in outcome, outcome
        assert "0 for no expiry" in outcome, outcome
    assert outcomes[len(refused):] == accepted


def test_each_test_process_gets_a_redis_database_of_its_own_which_the_workers_it_starts_share():
    # As pytest-xdist starts its processes; a child (a worker a test starts) inherits the environment, worker id too.
    probe = (
        "import os, subprocess, sys; from django.conf import settings; url = settings.CELERY_BROKER_URL; "
        "child = subprocess.run([sys.executable, '-c', 'from django.conf import settings; "
        "print(settings.CELERY_BROKER_URL)'], capture_output=True, text=True, check=True); "
        "print(url, os.environ['CELERY_BROKER_URL'], child.stdout.strip())"
    )
    env = {key: value for key, value in os.environ.items()
           if key not in {"PYTEST_XDIST_WORKER", "TEST_BROKER_PROCESS"}}
    env.update(DJANGO_SETTINGS_MODULE="mnistsite.settings.test", CELERY_BROKER_URL="redis://127.0.0.1:6379/3?x=1")
    seen = {}
    for process in ("", "gw0", "gw1"):
        result = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=60,
                                env={**env, "PYTEST_XDIST_WORKER": process} if process else env)
        assert result.returncode == 0, result.stderr
        seen[process] = result.stdout.split()
    assert seen[""] == seen["gw0"] == ["redis://127.0.0.1:6379/3?x=1"] * 3
    assert seen["gw1"] == ["redis://127.0.0.1:6379/4?x=1"] * 3
