"""Settings for a developer's laptop: DEBUG on unless the environment says otherwise."""
import os

os.environ.setdefault("DEBUG", "true")

from mnistsite.settings.base import *  # noqa: E402,F403
from mnistsite.settings.base import EMAIL_URL  # noqa: E402

# Without a mail server, mail (a password reset link) is written to the console the server runs in.
if not EMAIL_URL:
    EMAIL_BACKEND = "django.core.mail.backends.console.EmailBackend"
