"""The suite's caches: local memory, and the real Redis under a key prefix of the test process's own."""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit

import pytest
from django.conf import settings
from django.core.cache import cache

# Shown to a test that needs a cache whose every command fails as Redis out of reach does.
UNREACHABLE_REDIS_CACHE = {
    "BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": "redis://127.0.0.1:1/0",
}


def redis_cache_config(*, key_prefix: str) -> dict:
    """A Redis cache in the broker's own database, so that test runs given different databases never share keys.

    The prefix keeps its keys apart from the queues; ``redis_cache_keys_delete`` deletes only those (a cache's
    clear() would flush the broker's database).
    """
    broker = urlsplit(settings.CELERY_BROKER_URL)
    if broker.scheme != "redis":
        pytest.skip("the Redis cache is tested where the broker is Redis")
    return {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": broker.geturl(),
            "KEY_PREFIX": key_prefix}


def redis_cache_keys_delete(*, key_prefix: str) -> None:
    client = cache._cache.get_client(write=True)
    for key in client.scan_iter(match=f"{key_prefix}:*"):
        client.delete(key)


@contextmanager
def cache_backend(backend: str, settings, *, key_prefix: str) -> Iterator[None]:
    """The default cache as ``backend`` ("locmem" or "redis"), without this test's keys before and after it.

    For modules that test both: they replace the suite's clearing of the whole cache (a fixture named
    ``fresh_cache``), which would flush the broker's database.
    """
    if backend == "redis":
        settings.CACHES = {"default": redis_cache_config(key_prefix=key_prefix)}
    _cache_clear(backend, key_prefix=key_prefix)
    yield
    _cache_clear(backend, key_prefix=key_prefix)


def _cache_clear(backend: str, *, key_prefix: str) -> None:
    if backend == "locmem":
        cache.clear()
    else:
        redis_cache_keys_delete(key_prefix=key_prefix)
