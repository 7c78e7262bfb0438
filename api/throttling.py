"""Per-user throttling of API uploads, counting every image of a request (a large one as several), not just the request."""
from __future__ import annotations

import math

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter
from rest_framework import exceptions
from rest_framework.response import Response
from rest_framework.throttling import BaseThrottle

from classifier.throttling import Allowance, UploadRateError, upload_allowance_spend
from classifier.validation import allowance_weight

UPLOAD_FIELDS = ("image", "images")


def uploaded_weight(request) -> int:
    files = request.FILES
    return allowance_weight([(file, file.name) for name in UPLOAD_FIELDS for file in files.getlist(name)])


class UploadRateThrottle(BaseThrottle):
    """N images per user and period, however they are split into requests, a large picture counting as several.

    The allowance is ``classifier.throttling``'s, which the upload page spends too.
    """

    retry_after: float | None = None

    def allow_request(self, request, view) -> bool:
        if not request.user or not request.user.is_authenticated:
            return True
        try:
            # Kept on the view, which tells the client in its answer's headers (AllowanceHeadersMixin).
            view.upload_allowance = upload_allowance_spend(user_id=request.user.pk, images=uploaded_weight(request))
        except UploadRateError as exc:
            if exc.retry_after is None:
                # No wait would ever let it through, so say so instead of a 429.
                raise exceptions.ValidationError(
                    {"images": [exceptions.ErrorDetail(str(exc), code="too_many_files")]}
                ) from None
            self.retry_after = exc.retry_after
            view.upload_allowance = exc.allowance
            return False
        return True

    def wait(self) -> float | None:
        return self.retry_after


class AllowanceHeadersMixin:
    """For a view that spends the upload allowance: what is left of it, in its answer's headers, to pace uploads by.

    The headers are those of the IETF's rate limit draft (RateLimit-Limit, -Remaining, and -Reset in seconds until
    the allowance is whole again), on every answer to a request that spent from it or that it refused with a 429.
    """

    upload_allowance: Allowance | None = None

    def finalize_response(self, request, response: Response, *args, **kwargs) -> Response:
        response = super().finalize_response(request, response, *args, **kwargs)
        if self.upload_allowance is not None:
            response["RateLimit-Limit"] = str(self.upload_allowance.limit)
            response["RateLimit-Remaining"] = str(self.upload_allowance.remaining)
            response["RateLimit-Reset"] = str(math.ceil(self.upload_allowance.whole_in))
        return response


def allowance_headers(*, statuses: list[int]) -> list[OpenApiParameter]:
    """The schema's word for the headers above, on the answers (``statuses``) of an operation that spends."""
    described = {
        "RateLimit-Limit": "Images the upload allowance holds per period (`UPLOAD_THROTTLE_RATE`).",
        "RateLimit-Remaining": "Images that could be sent at once now.",
        "RateLimit-Reset": "Seconds until the allowance is whole again.",
    }
    return [
        OpenApiParameter(name, OpenApiTypes.INT, OpenApiParameter.HEADER, response=statuses,
                         description=f"{text} Sent when the request spent from the allowance or was refused for it; "
                                     "absent when uploads are not throttled.")
        for name, text in described.items()
    ]


RETRY_AFTER = OpenApiParameter(
    "Retry-After", OpenApiTypes.INT, OpenApiParameter.HEADER, response=[429],
    description="Seconds until the allowance has refilled enough for this request.",
)
