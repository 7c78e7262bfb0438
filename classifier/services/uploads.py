"""Storing uploads: one image, or a batch with its predictions under the quota and an Idempotency-Key."""
from __future__ import annotations

import datetime as dt
import logging
from typing import IO

from django.core.exceptions import PermissionDenied
from django.db import DatabaseError, IntegrityError, connection, transaction
from django.template.defaultfilters import filesizeformat
from django.utils import timezone

from classifier import selectors, statements
from classifier.idempotency import (
    IdempotencyKeyInUseError,
    IdempotentUpload,
    IdempotentUploadsDeletedError,
    idempotency_keys_live_after,
)
from classifier.instances import instances_new
from classifier.models import IdempotencyKey, Prediction, Upload
from classifier.services.files import files_delete, upload_files_write
from classifier.services.lost_connections import backend_ended, backend_pid
from classifier.services.predictions import predictions_send, published_now, upload_read
from classifier.validation import validate_image, validate_images
from mnistsite.database_connections import is_transient

logger = logging.getLogger(__name__)


# No limit is a limit no one reaches: the statements stay the same, and the owners' bytes are still counted.
NO_QUOTA = 2**62


class UploadOutcomeUnknownError(Exception):
    """The database stopped answering as the uploads were inserted, and could not say after whether it stored them
    (or, once it had said so, which predictions they have, or they were deleted before it could).

    Their files are kept: the orphan sweep sets them aside if no row names them
    an hour later, and the sweeper sends their predictions if rows do.
    """


# Said to the user in place of "nothing was stored", which may be untrue here.
UPLOAD_OUTCOME_UNKNOWN = (
    "The database stopped answering while your images were being stored, so whether they were is not known. "
    "Look in your history in a minute or two before you send them again."
)


class UploadQuotaError(Exception):
    """Storing the images would take their owner's uploads past UPLOAD_QUOTA_MB; nothing was stored."""


class UploadOwnerDeletedError(PermissionDenied):
    """The owner's account was deleted while their images were being stored; nothing was stored."""


# Said to whoever sent the images: the account their session or token names is gone.
UPLOAD_OWNER_DELETED = "Your account was deleted while these images were being stored, so nothing was stored."


def upload_update(*, upload: Upload, fields: dict) -> bool:
    """Write ``fields`` (name to value) to ``upload``'s row; False, with nothing written, when it was deleted meanwhile.

    Only those fields: a save of the whole row would insert one deleted since it was read again, without the image
    file the deletion removed and outside its owner's stored bytes.
    """
    return bool(Upload.objects.filter(pk=upload.pk).update(**fields))


def upload_create(
    *,
    owner,
    file: IO[bytes],
    source: str,
    name: str | None = None,
    sample_set: str = "",
    label: int | None = None,
) -> Upload:
    """Validate one image and store it (as a clean PNG); raises ValidationError without storing anything."""
    image = validate_image(file, name=name)
    uploads = upload_files_write(owner=owner, images=[image], source=source, sample_set=sample_set, label=label)
    return _uploads_insert(uploads=uploads)[0]


def _uploads_insert(*, uploads: list[Upload]) -> list[Upload]:
    backend = backend_pid()
    try:
        # Rows are inserted only once every file is on disk: a half-written batch never shows up.
        with transaction.atomic():
            # Its owner's key (a lock on the account) is checked only at commit, Django's foreign keys being
            # deferred: after the count's row lock, the order an account's deletion takes them in (users_delete).
            created = Upload.objects.bulk_create(uploads)
            # Counted like every upload, though no quota holds back the sample sets and the command line.
            (owner_id,) = {upload.owner_id for upload in uploads}
            needed = sum(upload.stored_bytes for upload in uploads)
            statements.storage_use_grow(owner_id=owner_id, by=needed, quota_bytes=NO_QUOTA)
        return created
    except BaseException as exc:
        _files_delete_unless_stored(names=[upload.image.name for upload in uploads], error=exc, backend=backend)
        if isinstance(exc, IntegrityError) and _owner_deleted(owner_id=uploads[0].owner_id):
            raise UploadOwnerDeletedError(UPLOAD_OWNER_DELETED) from exc
        raise


def _owner_deleted(*, owner_id: int) -> bool:
    """Whether the uploads' owner is gone: their account deleted while the rows went in, which refused them."""
    from django.contrib.auth import get_user_model

    return not get_user_model().objects.filter(pk=owner_id).exists()


def _files_delete_unless_stored(*, names: list[str], error: BaseException, backend: int | None) -> set[str] | None:
    """After a failed insert, delete its files if nothing can have been stored; returns the names stored.

    A lost connection raises whether or not the server committed, and the server
    process ``backend`` goes on with a statement whose client is gone: it may
    commit after a fresh connection asked. So after a connection error, outside a
    transaction (inside one nothing can have been stored), a fresh connection
    waits for that process to end and then asks, and the files of rows not
    stored are deleted: that process can no longer store them. When it cannot
    be told, the files stay, for the orphan sweep, which sets aside only what no
    row names an hour later; None says that what was stored is not known.
    """
    if not is_transient(error) or connection.in_atomic_block:
        files_delete(names)
        return set()
    try:
        connection.close()
        if backend is not None and not backend_ended(pid=backend):
            logger.warning("the server process of uploads %s's insert did not end; the orphan sweep will decide", names)
            return None
        stored = set(Upload.objects.filter(image__in=names).values_list("image", flat=True))
    except DatabaseError:
        logger.warning("could not tell whether uploads %s were stored; the orphan sweep will decide", names)
        return None
    files_delete([name for name in names if name not in stored])
    return stored


def predictions_submit(
    *,
    owner,
    files: list[tuple[IO[bytes], str | None]],
    source: str,
    idempotency: IdempotentUpload | None = None,
) -> list[Prediction]:
    """Validate every file first, then store all of them and their pending predictions atomically.

    Returns the predictions in the order of ``files``. Their tasks are published
    after commit; if the broker is down the rows stay (pending, "queued" for the
    user) and ``predictions_sweep`` publishes them later.

    With ``idempotency`` its key is stored with them, atomically, naming the
    predictions (the caller has made sure the key is new: see
    ``idempotent_upload_replay``). When another request
    stored the same key meanwhile, nothing is stored and
    IdempotencyKeyInUseError is raised.
    """
    images = validate_images(files)
    key = None if idempotency is None else _idempotency_key_claim(owner=owner, idempotency=idempotency)
    uploads = upload_files_write(owner=owner, images=images, source=source)
    names = [upload.image.name for upload in uploads]
    backend = backend_pid()
    try:
        published = published_now()
        predictions = instances_new(Prediction, rows=[{"upload": upload} for upload in uploads], common=published)
        # Rows are inserted only once every file is on disk.
        if not statements.uploads_with_predictions_insert(
            uploads=uploads, predictions=predictions, quota_bytes=selectors.storage_quota() or NO_QUOTA,
            idempotency_key=key,
        ):
            raise UploadQuotaError(_quota_refusal(owner=owner, needed=sum(upload.stored_bytes for upload in uploads)))
    except BaseException as exc:
        stored = _files_delete_unless_stored(names=names, error=exc, backend=backend)
        if stored is None:
            raise UploadOutcomeUnknownError("Whether the uploads were stored is not known.") from exc
        if stored != set(names):
            if isinstance(exc, IntegrityError) and _owner_deleted(owner_id=owner.pk):
                raise UploadOwnerDeletedError(UPLOAD_OWNER_DELETED) from exc
            if key is not None and isinstance(exc, IntegrityError) and selectors.idempotency_key_get_for_user(
                user=owner, key=key.key
            ):
                raise IdempotencyKeyInUseError("Another request with this key stored its uploads first.") from exc
            raise
        # The connection was lost after the server committed: the upload is stored, and answering "nothing was
        # stored" would invite the same images again.
        logger.warning("uploads %s were stored though their insert reported %r", names, exc)
        try:
            predictions = selectors.predictions_of_new_uploads(names=names)
        except DatabaseError as read_exc:
            # Lost again: stored, but which predictions they are cannot be said. The sweeper sends them.
            raise UploadOutcomeUnknownError("The uploads were stored, but could not be read back.") from read_exc
        if len(predictions) < len(names):
            # Deleted in the moments before they were read back (by their owner in another tab, or by staff):
            # answering with the rest would pass over them, and "nothing was stored" would be untrue. The user is
            # sent to their history, which shows what is left; the predictions still there are sent.
            logger.warning("%s of uploads %s were deleted before they were read back", len(names) - len(predictions),
                           names)
            predictions_send(prediction_ids=[prediction.pk for prediction in predictions])
            raise UploadOutcomeUnknownError(
                f"The uploads were stored, but {len(names) - len(predictions)} of them were deleted before they could "
                "be read back."
            ) from exc
    ids = [prediction.pk for prediction in predictions]
    transaction.on_commit(lambda: predictions_send(prediction_ids=ids))
    return predictions


def idempotent_upload_replay(*, user, idempotency: IdempotentUpload) -> list[Prediction] | None:
    """What an earlier upload with this key stored, as it is now, for a repeat to answer with; None: it is new.

    Each file answers with the prediction the first request made; when staff
    deleted that one while the upload stayed, with the upload's newest, or a
    new one if it has none (as reading it makes). Raises
    IdempotencyKeyReusedError when the key came with another request, and
    IdempotentUploadsDeletedError, making nothing, when any of its uploads
    was deleted since: answering for the rest would pass over it.
    """
    stored = selectors.idempotent_upload_stored_get(user=user, idempotency=idempotency)
    if stored is None:
        return None
    gone = stored.count(None)
    with transaction.atomic():
        answers = []
        for item in [] if gone else stored:
            if isinstance(item, Upload):
                try:
                    item = upload_read(upload=item)
                except Upload.DoesNotExist:
                    gone += 1  # deleted since it was looked up
                    continue
            answers.append(item)
        if gone:
            # Raised inside the transaction: a prediction made meanwhile for another of the uploads goes with it.
            raise IdempotentUploadsDeletedError(
                f"{gone} of the {len(stored)} images the first request with this Idempotency-Key stored "
                f"{'was' if gone == 1 else 'were'} deleted since; nothing was stored or made again. To upload the "
                "images again, send them with a new key."
            )
    return answers


def _idempotency_key_claim(*, owner, idempotency: IdempotentUpload) -> IdempotencyKey:
    """The key's row to insert with the uploads; an expired row of the key (it counts as never sent) goes first."""
    # The hourly sweep may not have come to it yet, and its unique constraint would refuse the new row.
    now = timezone.now()
    IdempotencyKey.objects.filter(
        owner=owner, key=idempotency.key, created_at__lte=idempotency_keys_live_after(now=now)
    ).delete()
    return IdempotencyKey(
        owner=owner, key=idempotency.key, fingerprint=idempotency.fingerprint, prediction_ids=[], created_at=now
    )


def idempotency_keys_expired_delete(*, now: dt.datetime | None = None) -> int:
    """Delete the idempotency keys older than IDEMPOTENCY_KEY_TTL_HOURS, which count as never sent; returns how many."""
    deleted, _ = IdempotencyKey.objects.filter(created_at__lte=idempotency_keys_live_after(now=now)).delete()
    return deleted


def _quota_refusal(*, owner, needed: int) -> str:
    usage = selectors.storage_usage_for_user(user=owner)
    return (
        f"Nothing was stored: these images ({filesizeformat(needed)} as stored) would take your uploads past your "
        f"allowance of {filesizeformat(usage.quota)}, of which {filesizeformat(usage.used)} is in use. "
        "Delete some uploads in your history to make room."
    )
