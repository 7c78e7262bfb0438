"""Per-user throttling of prediction uploads, counting every image of a request, not just the request."""
from __future__ import annotations

import math

from django.core.cache import DEFAULT_CACHE_ALIAS, caches
from django.core.cache.backends.redis import RedisCache
from rest_framework import exceptions
from rest_framework.settings import api_settings
from rest_framework.throttling import UserRateThrottle

UPLOAD_FIELDS = ("image", "images")
# Absorbs float rounding: 600 steps of a tenth of a second must still fit in 60.
TOLERANCE_S = 1e-6

# The same step as ``_take_generic`` in one atomic round trip. Two web processes can then never both spend the
# last of an allowance, and the request pays one Redis command instead of a read and a write.
_TAKE_LUA = """
local now, cost, period, tolerance = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local refilled_at = math.max(tonumber(redis.call('GET', KEYS[1]) or '') or now, now) + cost
local retry_after = refilled_at - now - period
if retry_after <= tolerance then
  redis.call('SET', KEYS[1], string.format('%.17g', refilled_at), 'PX', math.ceil((refilled_at - now) * 1000))
end
return string.format('%.17g', retry_after)
"""


def uploaded_file_count(request) -> int:
    files = request.FILES
    return sum(len(files.getlist(name)) for name in UPLOAD_FIELDS)


class UploadRateThrottle(UserRateThrottle):
    """Scope "uploads": N images per period and user at once, refilled at N per period, however they are split.

    The generic cell rate algorithm: the cache holds one number per user, the
    time at which the user's allowance would be whole again. DRF's own throttle
    keeps a timestamp per request and rewrites the whole list on every request,
    which grows with the rate (tens of thousands of entries at a high limit).
    """

    scope = "uploads"

    def get_rate(self) -> str | None:
        # Read on each request rather than at import, so a changed setting (a test's override) takes effect.
        return api_settings.DEFAULT_THROTTLE_RATES.get(self.scope)

    def allow_request(self, request, view) -> bool:
        if self.rate is None:
            return True
        self.key = self.get_cache_key(request, view)
        if self.key is None:
            return True
        # A request without files still costs one: it was an attempt to upload.
        images = max(1, uploaded_file_count(request))
        if images > self.num_requests:
            # More than a whole period's allowance: no wait would ever let it through, so say so instead of 429.
            raise exceptions.ValidationError({"images": [exceptions.ErrorDetail(
                f"At most {self.num_requests} images per request at this site's upload rate "
                f"({self.num_requests} per {self.duration:g} seconds); send them in smaller requests.",
                code="too_many_files",
            )]})
        cost = images * self.duration / self.num_requests
        self.retry_after = allowance_take(key=self.key, now=self.timer(), cost=cost, period=self.duration)
        return self.retry_after <= TOLERANCE_S

    def wait(self) -> float:
        return self.retry_after


def allowance_take(*, key: str, now: float, cost: float, period: float) -> float:
    """Spend ``cost`` seconds of the allowance stored under ``key`` if it is there.

    Returns how many seconds too early the request is: at most TOLERANCE_S when
    it was allowed (and spent), more when it was refused (and nothing changed).
    """
    cache = caches[DEFAULT_CACHE_ALIAS]
    if isinstance(cache, RedisCache):
        full_key = cache.make_and_validate_key(key)
        # Django's Redis cache has no public way to run a script; its client is the one it uses itself.
        client = cache._cache.get_client(full_key, write=True)
        return float(client.eval(_TAKE_LUA, 1, full_key, repr(now), repr(cost), repr(period), repr(TOLERANCE_S)))
    return _take_generic(cache, key=key, now=now, cost=cost, period=period)


def _take_generic(cache, *, key: str, now: float, cost: float, period: float) -> float:
    # Any other cache: a read and a write, so concurrent requests of one user in several processes may race.
    refilled_at = max(cache.get(key, now), now) + cost
    retry_after = refilled_at - now - period
    if retry_after <= TOLERANCE_S:
        cache.set(key, refilled_at, math.ceil(refilled_at - now))
    return retry_after
