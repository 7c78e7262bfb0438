"""Per-user throttling of prediction uploads, counting every image of a request, not just the request."""
from __future__ import annotations

import math

from rest_framework.settings import api_settings
from rest_framework.throttling import UserRateThrottle

UPLOAD_FIELDS = ("image", "images")


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
        now = self.timer()
        # A request without files still costs one: it was an attempt to upload.
        cost = max(1, uploaded_file_count(request))
        refilled_at = max(self.cache.get(self.key, now), now) + cost * self.duration / self.num_requests
        self.retry_after = refilled_at - now - self.duration
        # The tolerance absorbs float rounding: 600 steps of a tenth of a second must still fit in 60.
        if self.retry_after > 1e-6:
            return False
        self.cache.set(self.key, refilled_at, math.ceil(refilled_at - now))
        return True

    def wait(self) -> float:
        return self.retry_after
