"""Settings for production: DEBUG off, HTTPS only, secure cookies and headers."""
from django.core.checks.security.base import (
    SECRET_KEY_INSECURE_PREFIX,
    SECRET_KEY_MIN_LENGTH,
    SECRET_KEY_MIN_UNIQUE_CHARACTERS,
)
from django.core.exceptions import ImproperlyConfigured

from mnistsite.settings.base import *  # noqa: F403
from mnistsite.settings.base import _DEV_SECRET_KEY, ALLOWED_HOSTS, SECRET_KEY, STORAGES, _setting_or, env

DEBUG = False
# base.py derived these from DEBUG as the environment gave it (a DEBUG=true left in .env): whitenoise would rescan the
# folders at every request and serve the apps' unhashed source files beside the collected ones.
WHITENOISE_USE_FINDERS = False
WHITENOISE_AUTOREFRESH = False

# Every page would answer 400 while the health checks, which skip host validation, still pass.
if not any(host.strip() for host in ALLOWED_HOSTS):
    raise ImproperlyConfigured(
        "ALLOWED_HOSTS is empty: name the host(s) the site is reached by, e.g. ALLOWED_HOSTS=digits.example.com "
        "(unset, it serves localhost only)."
    )

# base.py falls back to the committed key when DEBUG=true is set; production never runs with it.
if SECRET_KEY == _DEV_SECRET_KEY:
    raise ImproperlyConfigured("SECRET_KEY must be set in production; the development key is public.")
# Django's deploy check only warns of a weak key (security.W009), and nothing runs that check at start: sessions,
# reset and confirmation links would be signed with a key that can be guessed. Its own thresholds, kept in step.
if (len(SECRET_KEY) < SECRET_KEY_MIN_LENGTH or len(set(SECRET_KEY)) < SECRET_KEY_MIN_UNIQUE_CHARACTERS
        or SECRET_KEY.startswith(SECRET_KEY_INSECURE_PREFIX)):
    raise ImproperlyConfigured(
        f"SECRET_KEY is too weak for production: use at least {SECRET_KEY_MIN_LENGTH} random characters (e.g. "
        "python3 -c 'import secrets; print(secrets.token_urlsafe(50))'), not one Django generated as insecure. "
        "A new key signs everyone out and voids the links already mailed."
    )

# Their defaults put the database, the uploads and the models inside the checkout, which a redeploy that replaces
# it would take with it. Production names where they live; a deliberate sqlite:// URL is still allowed.
_UNSET_STATE = [name for name in ("DATABASE_URL", "MEDIA_ROOT", "CHECKPOINT_DIR") if not _setting_or(name, "")]
if _UNSET_STATE:
    raise ImproperlyConfigured(
        f"{', '.join(_UNSET_STATE)} must be set in production: the defaults keep the database, uploads and models "
        "inside the code's folder, where a redeploy would lose them."
    )

# Mail from Django's webmaster@localhost is refused or filed as spam by most servers, and a reset link that never
# arrives looks to its reader like a site that sent nothing.
if _setting_or("EMAIL_URL", "") and not _setting_or("DEFAULT_FROM_EMAIL", ""):
    raise ImproperlyConfigured(
        "DEFAULT_FROM_EMAIL must be set in production when EMAIL_URL is: the address reset links are sent from, "
        "e.g. DEFAULT_FROM_EMAIL=digits@example.com."
    )
# Reset links name the site; guessed from ALLOWED_HOSTS (which may list several names, internal ones, a wildcard),
# a wrong guess would show only in mail that nobody can use.
if _setting_or("EMAIL_URL", "") and not _setting_or("SITE_URL", ""):
    raise ImproperlyConfigured(
        "SITE_URL must be set in production when EMAIL_URL is: the address reset links lead to, "
        "e.g. SITE_URL=https://digits.example.com."
    )

SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SECURE_SSL_REDIRECT = env.bool("SECURE_SSL_REDIRECT", default=True)
SECURE_HSTS_SECONDS = env.int("SECURE_HSTS_SECONDS", default=31_536_000, least=0)
# Both bind every subdomain to HTTPS as well: a site on a bare domain with plain-HTTP subdomains turns them off.
SECURE_HSTS_INCLUDE_SUBDOMAINS = env.bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", default=True)
SECURE_HSTS_PRELOAD = env.bool("SECURE_HSTS_PRELOAD", default=True)
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
SESSION_COOKIE_SECURE = True
CSRF_COOKIE_SECURE = True
SESSION_COOKIE_HTTPONLY = True
X_FRAME_OPTIONS = "DENY"
STORAGES = {**STORAGES, "staticfiles": {"BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"}}
