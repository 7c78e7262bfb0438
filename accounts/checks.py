"""Deploy checks for the counters behind log-in lockouts and throttles."""
from django.conf import settings
from django.core.checks import Tags, Warning, register

_PER_PROCESS_CACHES = ("django.core.cache.backends.locmem.LocMemCache", "django.core.cache.backends.dummy.DummyCache")


@register(Tags.security, deploy=True)
def shared_cache_check(app_configs, **kwargs) -> list[Warning]:
    if settings.CACHES["default"]["BACKEND"] not in _PER_PROCESS_CACHES:
        return []
    return [
        Warning(
            "The default cache is per process, so log-in lockouts and the sign-up and upload throttles count "
            "separately in each web process (gunicorn runs two by default).",
            hint="Set CACHE_URL to a cache all web processes share, e.g. rediscache://redis:6379/1.",
            id="accounts.W001",
        )
    ]
