"""Per-user throttling of prediction uploads, counting every image of a request, not just the request."""
from __future__ import annotations

from rest_framework.settings import api_settings
from rest_framework.throttling import UserRateThrottle

UPLOAD_FIELDS = ("image", "images")


def uploaded_file_count(request) -> int:
    files = request.FILES
    return sum(len(files.getlist(name)) for name in UPLOAD_FIELDS)


class UploadRateThrottle(UserRateThrottle):
    """Scope "uploads": at most N images per period and user, however they are split into requests."""

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
        self.history = self.cache.get(self.key, [])
        self.now = self.timer()
        while self.history and self.history[-1] <= self.now - self.duration:
            self.history.pop()
        # A request without files still costs one: it was an attempt to upload.
        self.cost = max(1, uploaded_file_count(request))
        if len(self.history) + self.cost > self.num_requests:
            return self.throttle_failure()
        self.history[:0] = [self.now] * self.cost
        self.cache.set(self.key, self.history, self.duration)
        return True
