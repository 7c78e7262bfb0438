"""Lua scripts run on Django's Redis cache, each bound once to a Redis client kept for it."""
from __future__ import annotations

import weakref

from django.core.cache.backends.redis import RedisCache
from redis.commands.core import Script

# Per cache client (Django keeps one per thread) and script text. Django's Redis cache builds a new Redis client for
# every command, and redis-py fills a table of some 170 reply handlers for each (80 us here, more than a script's
# round trip); a script sent by its hash also spares Redis re-reading its text.
_scripts: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def cache_script(cache: RedisCache, text: str) -> Script:
    backend = cache._cache
    scripts = _scripts.setdefault(backend, {})
    script = scripts.get(text)
    if script is None:
        # Django's Redis cache has no public way to run a script; its client is the one it uses itself (writes
        # always go to the first server, whatever the key).
        script = scripts[text] = backend.get_client(write=True).register_script(text)
    return script
