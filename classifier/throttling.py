"""Per-user upload allowances, counted in images over a period, shared by every web process through the cache.

A large picture counts as several images (``classifier.validation.allowance_weight``).

The generic cell rate algorithm: the cache holds one number per key, the time at
which the allowance would be whole again. The API's throttle and the upload page
spend the same allowance.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass

from django.conf import settings
from django.core.cache import DEFAULT_CACHE_ALIAS, caches
from django.core.cache.backends.redis import RedisCache

from mnistsite.cache_scripts import cache_script
from mnistsite.env import rate_parse

logger = logging.getLogger(__name__)

# Absorbs float rounding: 600 steps of a tenth of a second must still fit in 60.
TOLERANCE_S = 1e-6

# The same step as ``_take_generic`` in one atomic round trip. Two web processes can then never both spend the
# last of an allowance, and the request pays one Redis command instead of a read and a write.
_TAKE_LUA = """
local now, cost, period, tolerance = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local refilled_at = math.max(tonumber(redis.call('GET', KEYS[1]) or '') or now, now) + cost
local retry_after = refilled_at - now - period
if retry_after <= tolerance then
  redis.call('SET', KEYS[1], string.format('%.17g', refilled_at), 'PX', math.max(1, math.ceil((refilled_at - now) * 1000)))
end
return string.format('%.17g', retry_after)
"""


@dataclass(frozen=True)
class Allowance:
    """A user's upload allowance once a request has spent from it, or was refused by it."""

    limit: int  # images per period, and at once
    remaining: int  # images that could be sent at once now
    whole_in: float  # seconds until the allowance is whole again


class UploadRateError(Exception):
    """Refused by the upload rate. ``retry_after`` is the wait in seconds, or None when no wait would help.

    ``allowance``: what is left of it (None when no wait would help: it was not looked at).
    """

    def __init__(self, message: str, *, retry_after: float | None, allowance: Allowance | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self.allowance = allowance


def upload_rate() -> tuple[int, float] | None:
    """``UPLOAD_THROTTLE_RATE`` as (images, seconds), or None when uploads are not throttled."""
    return rate_parse(settings.UPLOAD_THROTTLE_RATE)


def upload_allowance_spend(*, user_id: int, images: int) -> Allowance | None:
    """Spend ``images`` of the user's upload allowance and say what is left, or raise UploadRateError and spend nothing.

    A request without images still costs one: it was an attempt to upload. None:
    uploads are not throttled, or the cache that holds the allowance is out of reach.
    """
    rate = upload_rate()
    if rate is None:
        return None
    count, period = rate
    if images > count:
        raise UploadRateError(
            f"At most {count} images per upload at this site's upload rate ({count} per {period:g} seconds), "
            f"and these count as {images}{_large_pictures_note()}; send them in smaller batches.",
            retry_after=None,
        )
    cost = max(1, images) * period / count
    try:
        retry_after = allowance_take(key=f"throttle_uploads_{user_id}", now=time.time(), cost=cost, period=period)
    except Exception:  # noqa: BLE001 - any cache failure: the throttle guards CPU, uploads must not fail for it
        logger.warning("upload throttle skipped: the cache is unavailable", exc_info=True)
        return None
    refused = retry_after > TOLERANCE_S
    # The allowance is whole again ``period + retry_after`` seconds from now with this request's cost spent, that
    # much sooner without it; what the period has left beyond that, in images, can be sent at once.
    whole_in = max(0.0, period + retry_after - (cost if refused else 0.0))
    remaining = min(count, math.floor((period - whole_in + TOLERANCE_S) * count / period))
    allowance = Allowance(limit=count, remaining=remaining, whole_in=whole_in)
    if refused:
        raise UploadRateError(
            f"Too many uploads: try again in {math.ceil(retry_after)} seconds.",
            retry_after=retry_after,
            allowance=allowance,
        )
    return allowance


def upload_allowance_give_back(*, user_id: int, images: int) -> None:
    """Give back what ``upload_allowance_spend`` took for ``images``, from a request that stored nothing after all.

    Such as an upload whose Idempotency-Key another request stored first: it is answered as a repeat, which spends
    nothing.
    """
    rate = upload_rate()
    if rate is None:
        return
    count, period = rate
    try:
        allowance_take(key=f"throttle_uploads_{user_id}", now=time.time(), cost=-max(1, images) * period / count,
                       period=period)
    except Exception:  # noqa: BLE001 - as when spending: the cache being out of reach must not fail the upload
        logger.warning("upload allowance not given back: the cache is unavailable", exc_info=True)


def _large_pictures_note() -> str:
    unit = settings.UPLOAD_PIXELS_PER_IMAGE
    return f" (a picture counts one for each {unit:,} pixels it has, or part of them)" if unit > 0 else ""


def allowance_take(*, key: str, now: float, cost: float, period: float) -> float:
    """Spend ``cost`` seconds of the allowance stored under ``key`` if it is there.

    Returns how many seconds too early the request is: at most TOLERANCE_S when
    it was allowed (and spent), more when it was refused (and nothing changed).
    A negative ``cost`` gives that much back.
    """
    cache = caches[DEFAULT_CACHE_ALIAS]
    if isinstance(cache, RedisCache):
        full_key = cache.make_and_validate_key(key)
        args = [repr(now), repr(cost), repr(period), repr(TOLERANCE_S)]
        return float(cache_script(cache, _TAKE_LUA)(keys=[full_key], args=args))
    return _take_generic(cache, key=key, now=now, cost=cost, period=period)


def _take_generic(cache, *, key: str, now: float, cost: float, period: float) -> float:
    # Any other cache: a read and a write, so concurrent requests of one user in several processes may race.
    refilled_at = max(cache.get(key, now), now) + cost
    retry_after = refilled_at - now - period
    if retry_after <= TOLERANCE_S:
        cache.set(key, refilled_at, math.ceil(refilled_at - now))
    return retry_after
