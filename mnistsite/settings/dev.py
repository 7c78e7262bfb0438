"""Settings for a developer's laptop: DEBUG on unless the environment says otherwise."""
import os

os.environ.setdefault("DEBUG", "true")

from mnistsite.settings.base import *  # noqa: E402,F403
from mnistsite.settings.base import _LOCAL_HOSTS, ALLOWED_HOSTS, EMAIL_URL  # noqa: E402

# `make run` serves these whatever a .env written for a deployment names (ALLOWED_HOSTS=digits.example.com).
ALLOWED_HOSTS = [*ALLOWED_HOSTS, *(host for host in _LOCAL_HOSTS if host not in ALLOWED_HOSTS)]

# Without a mail server, mail (a password reset link) is written to the console the server runs in.
if not EMAIL_URL:
    EMAIL_BACKEND = "django.core.mail.backends.console.EmailBackend"
