"""Per-user caps on requests held open at once (uploads waiting for their digits, history exports), across processes.

Each such request holds a web thread, of which a server has few (8 by default): without a cap one user could hold
them all. The cache keeps one sorted set per user and kind: a member per request held, scored with the time it
lapses, so that a process killed while holding one gives it back by itself.
"""
from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Iterable, Iterator

from django.core.cache import DEFAULT_CACHE_ALIAS, caches
from django.core.cache.backends.redis import RedisCache

from mnistsite.cache_scripts import cache_script

logger = logging.getLogger(__name__)

# Redis's own clock, so that web hosts whose clocks differ agree on when a hold lapses.
_TAKE_LUA = """
local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local limit, hold_ms = tonumber(ARGV[1]), tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now_ms)
if redis.call('ZSCORE', KEYS[1], ARGV[3]) or redis.call('ZCARD', KEYS[1]) < limit then
  redis.call('ZADD', KEYS[1], now_ms + hold_ms, ARGV[3])
  redis.call('PEXPIRE', KEYS[1], hold_ms)
  return 1
end
return 0
"""
_GIVE_BACK_LUA = "return redis.call('ZREM', KEYS[1], ARGV[1])"


def user_slot_take(*, kind: str, user_id: int, limit: int, hold_s: float, token: str | None = None) -> str | None:
    """Take one of the user's ``limit`` slots of ``kind`` for ``hold_s`` seconds; its token, or None when all are held.

    Given the token of a slot still held, it is held ``hold_s`` seconds more. A limit of 0 means no cap, and a cache
    out of reach takes nothing from anyone: neither should refuse a request the server can answer.
    """
    token = token or secrets.token_hex(8)
    if limit <= 0:
        return token
    try:
        taken = _take(key=f"slots_{kind}_{user_id}", limit=limit, hold_ms=max(1, round(hold_s * 1000)), token=token)
    except Exception:  # noqa: BLE001 - any cache failure: the cap guards threads, requests must not fail for it
        logger.warning("%s slot not counted: the cache is unavailable", kind, exc_info=True)
        return token
    return token if taken else None


def user_slot_give_back(*, kind: str, user_id: int, token: str) -> None:
    try:
        _give_back(key=f"slots_{kind}_{user_id}", token=token)
    except Exception:  # noqa: BLE001 - the hold lapses by itself
        logger.warning("%s slot not given back: the cache is unavailable", kind, exc_info=True)


class UserSlotStream:
    """Chunks streamed while a slot is held: kept held while they last, given back once the response is closed.

    A class, not a generator, so that a response closed before its first chunk (a HEAD, a client gone at once)
    gives the slot back too: closing a generator that never started runs none of its code.
    """

    def __init__(self, chunks: Iterable[bytes], *, kind: str, user_id: int, limit: int, hold_s: float,
                 token: str) -> None:
        self._chunks = iter(chunks)
        self._slot = {"kind": kind, "user_id": user_id, "limit": limit, "hold_s": hold_s, "token": token}
        self._renew_at = time.monotonic() + hold_s / 3
        self._closed = False

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        if time.monotonic() >= self._renew_at:
            # Refused (the hold lapsed while one chunk took that long, and other requests took the slots): the
            # stream goes on all the same; it only counts for one fewer.
            user_slot_take(**self._slot)
            self._renew_at = time.monotonic() + self._slot["hold_s"] / 3
        return next(self._chunks)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            if hasattr(self._chunks, "close"):
                self._chunks.close()
        finally:
            user_slot_give_back(kind=self._slot["kind"], user_id=self._slot["user_id"], token=self._slot["token"])


def _take(*, key: str, limit: int, hold_ms: int, token: str) -> bool:
    cache = caches[DEFAULT_CACHE_ALIAS]
    if isinstance(cache, RedisCache):
        script = cache_script(cache, _TAKE_LUA)
        return bool(script(keys=[cache.make_and_validate_key(key)], args=[limit, hold_ms, token]))
    # Any other cache: a read and a write, so two processes may both take the last slot.
    now_ms = time.time() * 1000
    held = {member: lapses for member, lapses in cache.get(key, {}).items() if lapses > now_ms}
    if token not in held and len(held) >= limit:
        return False
    held[token] = now_ms + hold_ms
    cache.set(key, held, max(held.values()) / 1000 - now_ms / 1000)
    return True


def _give_back(*, key: str, token: str) -> None:
    cache = caches[DEFAULT_CACHE_ALIAS]
    if isinstance(cache, RedisCache):
        cache_script(cache, _GIVE_BACK_LUA)(keys=[cache.make_and_validate_key(key)], args=[token])
        return
    held = cache.get(key, {})
    if held.pop(token, None) is None:
        return
    if held:
        cache.set(key, held, max(held.values()) / 1000 - time.time())
    else:
        cache.delete(key)
