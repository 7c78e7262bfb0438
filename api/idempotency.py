"""The `Idempotency-Key` header of API uploads: read from the request, answered in the API's errors, documented."""
from __future__ import annotations

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter
from rest_framework import exceptions, status
from rest_framework.request import Request

from api import responses
from api.errors import Conflict
from api.throttling import UPLOAD_FIELDS
from classifier import services as classifier_services
from classifier.idempotency import (
    KEY_MAX_LENGTH,
    IdempotencyKeyInvalidError,
    IdempotencyKeyReusedError,
    IdempotentUpload,
    IdempotentUploadsDeletedError,
    idempotency_key_validate,
    upload_fingerprint,
)
from classifier.models import Prediction

HEADER = "Idempotency-Key"
REPLAYED_HEADER = "Idempotent-Replayed"


class IdempotencyKeyReused(exceptions.APIException):
    status_code = status.HTTP_422_UNPROCESSABLE_ENTITY
    default_detail = "This Idempotency-Key came with another request; use a new key."
    default_code = "idempotency_key_reused"


def idempotent_upload_read(request: Request) -> IdempotentUpload | None:
    """The upload's key and fingerprint, or None when it came without a key (nothing else is looked at then)."""
    key = request.META.get("HTTP_IDEMPOTENCY_KEY")
    if key is None:
        return None
    try:
        idempotency_key_validate(key)
    except IdempotencyKeyInvalidError as exc:
        raise exceptions.ValidationError(
            {HEADER: [exceptions.ErrorDetail(str(exc), code="idempotency_key_invalid")]}
        ) from None
    files = request.FILES
    fingerprint = upload_fingerprint((name, file, file.name) for name in UPLOAD_FIELDS for file in files.getlist(name))
    return IdempotentUpload(key=key, fingerprint=fingerprint)


def predictions_replayed(*, request: Request, idempotency: IdempotentUpload) -> list[Prediction] | None:
    """What an earlier upload with this key stored, as it is now, for a repeat to answer with; None: it is new."""
    try:
        return classifier_services.idempotent_upload_replay(user=request.user, idempotency=idempotency)
    except IdempotencyKeyReusedError as exc:
        raise IdempotencyKeyReused(str(exc)) from None
    except IdempotentUploadsDeletedError as exc:
        # The code predates the uploads' own deletion being the only cause: kept, as clients match on it.
        raise Conflict(str(exc), code="idempotency_key_predictions_deleted") from None


def key_in_use() -> Conflict:
    # Another request stored the key while this one was under way, and its record was gone again when looked for:
    # sent again, the request is answered from that record or, if there is none, stored.
    return Conflict(
        "Another request with this Idempotency-Key was being stored at the same time; nothing was stored for this "
        "one. Send it again.",
        code="idempotency_key_in_use",
    )


KEY_PARAMETER = OpenApiParameter(
    HEADER, OpenApiTypes.STR, OpenApiParameter.HEADER, required=False,
    pattern=r"^[\x21-\x7e]([\x20-\x7e]{0,%d}[\x21-\x7e])?$" % (KEY_MAX_LENGTH - 2),
    description=(
        f"Makes the upload safe to send again (1 to {KEY_MAX_LENGTH} printable ASCII characters, per user, e.g. a "
        "UUID). The first request with a key stores it with its uploads, atomically; sent again with the same files, "
        "file names, each under the same field (`image` or `images`; other fields are not read), within "
        "`IDEMPOTENCY_KEY_TTL_HOURS` (24), it stores and counts nothing and answers "
        "with the same predictions as they are now (`?wait` honoured), with `Idempotent-Replayed: true`; an upload "
        "whose predictions were deleted while it stayed answers with its newest prediction, or a new one when it "
        "has none. A request that failed stored no key: sent again, it is processed anew."
    ),
)
REPLAYED_RESPONSE_HEADER = OpenApiParameter(
    REPLAYED_HEADER, OpenApiTypes.STR, OpenApiParameter.HEADER, enum=["true"], response=[200, 202],
    description="`true` when the answer is a repeat's: the predictions were stored by an earlier request with the "
                "same `Idempotency-Key`.",
)
CONFLICT = responses.error(
    "Uploads an earlier request with this `Idempotency-Key` stored were deleted since "
    "(`idempotency_key_predictions_deleted`, naming how many; nothing is stored or made again: use a new key), or "
    "another request with it "
    "was being stored at the same moment (`idempotency_key_in_use`; send it again).",
    code="idempotency_key_predictions_deleted",
)
REUSED = responses.error(
    "This `Idempotency-Key` came with another request (other files, file names or fields) within "
    "`IDEMPOTENCY_KEY_TTL_HOURS`; nothing was stored or counted.",
    code="idempotency_key_reused",
)
