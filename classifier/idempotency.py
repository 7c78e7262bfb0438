"""Idempotency keys of API uploads: which keys are valid, what makes two uploads the same request, and their errors."""
from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import IO

from django.conf import settings
from django.utils import timezone

KEY_MAX_LENGTH = 255
# Printable ASCII, without a space at either end: a proxy may trim those, and the repeat would then differ.
_KEY = re.compile(r"[\x21-\x7e](?:[\x20-\x7e]{0,%d}[\x21-\x7e])?" % (KEY_MAX_LENGTH - 2))
_CHUNK = 1 << 16


class IdempotencyKeyInvalidError(ValueError):
    """The key is empty, too long, or holds something other than printable ASCII."""


class IdempotencyKeyReusedError(Exception):
    """The key was sent before with another request (other files, names or fields); nothing was stored or spent."""


class IdempotencyKeyInUseError(Exception):
    """Another request with the key stored its uploads while this one was under way; this one stored nothing."""


class IdempotentUploadsDeletedError(Exception):
    """Some of the uploads the key's first request stored were deleted since; nothing is stored or made again."""


@dataclass(frozen=True)
class IdempotentUpload:
    """An upload request sent with an idempotency key: the key, and the fingerprint a repeat must match."""

    key: str
    fingerprint: str


def idempotency_key_validate(key: str) -> str:
    if not _KEY.fullmatch(key):
        raise IdempotencyKeyInvalidError(
            f"An Idempotency-Key is 1 to {KEY_MAX_LENGTH} printable ASCII characters, without a space at either end."
        )
    return key


def upload_fingerprint(files: Iterable[tuple[str, IO[bytes], str | None]]) -> str:
    """What makes two uploads the same request: each file's bytes and name, and the field it came in, in order.

    ``files``: (field, file, the client's file name). The query (``?wait``) is
    left out: a repeat may wait longer or not at all, for the same uploads.
    """
    parts = []
    for field, file, name in files:
        digest = hashlib.sha256()
        file.seek(0)
        while chunk := file.read(_CHUNK):
            digest.update(chunk)
        file.seek(0)
        parts.append([field, name or "", digest.hexdigest()])
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()


def idempotency_keys_live_after(*, now: dt.datetime | None = None) -> dt.datetime:
    """Keys stored at or before this moment have expired: a request with one of them is new."""
    return (now or timezone.now()) - dt.timedelta(hours=settings.IDEMPOTENCY_KEY_TTL_HOURS)
