"""Writes for uploads and predictions: storing images, publishing, executing, feedback, deletion."""
from __future__ import annotations

import datetime as dt
import io
import logging
import math
import os
import time
import uuid
from collections.abc import Collection, Iterator
from typing import IO

from celery.exceptions import SoftTimeLimitExceeded

from django.conf import settings
from django.core.exceptions import PermissionDenied
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.db import DatabaseError, IntegrityError, connection, transaction
from django.db.models import F, Q, QuerySet, Sum
from django.db.models.functions import Greatest, Now
from django.template.defaultfilters import filesizeformat
from django.utils import timezone
from PIL import Image

from classifier import completion, selectors, statements
from classifier.idempotency import (
    IdempotencyKeyInUseError,
    IdempotentUpload,
    IdempotentUploadsDeletedError,
    idempotency_keys_live_after,
)
from classifier.models import UPLOAD_STORED_BYTES, IdempotencyKey, Prediction, StorageUse, Upload, upload_image_path
from classifier.validation import ValidatedImage, validate_image, validate_images

logger = logging.getLogger(__name__)


# An uploaded file no row names this long after it was written is an orphan (rows follow their files in seconds).
ORPHANED_AFTER = dt.timedelta(hours=1)
# Where the orphan sweep moves what it finds, under the same relative names, for ORPHANED_FILES_KEEP_DAYS.
ORPHANED_FOLDER = "orphaned"
# A sweep that finds this many at once more likely runs against the wrong database than after killed processes.
ORPHANED_MANY = 100
# No limit is a limit no one reaches: the statements stay the same, and the owners' bytes are still counted.
NO_QUOTA = 2**62
# Model inputs were files here until classifier/0003 moved them into their rows; nothing reads them since.
RETIRED_FOLDER = "derived"


def _running_stale_after() -> dt.timedelta:
    """A prediction "running" for longer than this, on the database's clock, lost its worker; it may be claimed again."""
    return dt.timedelta(seconds=settings.PREDICTION_RUNNING_STALE_AFTER_SECONDS)


class UploadStorageError(Exception):
    """The image files could not be written (a full disk, an unmounted volume); nothing was stored."""


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


class StorageFullError(UploadStorageError):
    """Storing the images would leave less than UPLOAD_MIN_FREE_MB free on the media volume; nothing was stored."""


PREPARE_FAILED_ERROR = "The image could not be prepared for the model. Try another picture."


class ModelUnavailableError(Exception):
    """This worker cannot load the active checkpoint; the predictions it claimed were handed back."""


class CheckpointDeletedError(Exception):
    """The checkpoint a batch was claimed with was deleted (after another was activated) before its results were
    stored: the batch is taken again with the active one."""


class PredictionFeedbackError(ValueError):
    """Feedback must be a digit from 0 to 9 (the digit the image really shows, whatever the prediction's state)."""


# --- uploads -----------------------------------------------------------------------------------------------------


def _upload_build(
    *, owner, image: ValidatedImage, source: str, sample_set: str = "", label: int | None = None
) -> Upload:
    upload = Upload(
        owner=owner,
        original_name=image.original_name,
        format=image.format,
        size=image.size,
        stored_size=len(image.content),
        width=image.width,
        height=image.height,
        sha256=image.sha256,
        source=source,
        sample_set=sample_set,
        label=label,
        created_at=timezone.now(),
    )
    # Written under a generated name; the client's name is kept only as text.
    upload.image.name = upload_image_path(upload, "upload.png")
    return upload


def _files_delete(names: list[str]) -> None:
    for name in names:
        if name:
            try:
                default_storage.delete(name)
            except OSError:
                logger.warning("could not delete stored file %s", name, exc_info=True)


def upload_create(
    *,
    owner,
    file: IO[bytes],
    source: str,
    name: str | None = None,
    sample_set: str = "",
    label: int | None = None,
) -> Upload:
    """Validate one image and store it (re-encoded as PNG); raises ValidationError without storing anything."""
    image = validate_image(file, name=name)
    uploads = _upload_files_write(owner=owner, images=[image], source=source, sample_set=sample_set, label=label)
    return _uploads_insert(uploads=uploads)[0]


def _upload_files_write(
    *,
    owner,
    images: list[ValidatedImage],
    source: str,
    sample_set: str = "",
    label: int | None = None,
) -> list[Upload]:
    """Unsaved uploads whose files are written (and durable); if one cannot be written, none stays on disk."""
    _storage_headroom_check(needed=sum(len(image.content) for image in images))
    uploads = [
        _upload_build(owner=owner, image=image, source=source, sample_set=sample_set, label=label) for image in images
    ]
    try:
        names = _files_save([(upload.image.name, image.content) for upload, image in zip(uploads, images, strict=True)])
    except OSError as exc:
        logger.error("could not write uploaded images", exc_info=True)
        raise UploadStorageError("The images could not be stored.") from exc
    for upload, name in zip(uploads, names, strict=True):
        upload.image.name = name
    return uploads


def _files_save(files: list[tuple[str, bytes]]) -> list[str]:
    """Write new files; each is on disk on return, or none is left."""
    if hasattr(default_storage, "save_many"):
        return default_storage.save_many(files)
    names: list[str] = []
    try:
        for name, content in files:
            names.append(default_storage.save(name, ContentFile(content)))
    except BaseException:
        _files_delete(names)
        raise
    return names


# A full disk refuses every upload until someone makes room: said in the log once a minute, not once an upload.
STORAGE_FULL_LOG_EVERY_S = 60.0
_storage_full_logged = [-math.inf]


def _storage_headroom_check(*, needed: int) -> None:
    free_bytes = getattr(default_storage, "free_bytes", None)
    if free_bytes is None:
        return
    try:
        left = free_bytes() - needed
    except OSError as exc:
        # A volume that cannot say how full it is (a stale network mount) would not take the files either.
        logger.error("could not read the media volume's free space", exc_info=True)
        raise UploadStorageError("The images could not be stored.") from exc
    if left >= settings.UPLOAD_MIN_FREE_MB * 1024 * 1024:
        return
    if time.monotonic() - _storage_full_logged[0] >= STORAGE_FULL_LOG_EVERY_S:
        _storage_full_logged[0] = time.monotonic()
        logger.error(
            "uploads refused: storing them would leave %.0f MB free on the media volume, under UPLOAD_MIN_FREE_MB=%s",
            left / 2**20, settings.UPLOAD_MIN_FREE_MB,
        )
    raise StorageFullError("The server is short of storage space.")


def _uploads_insert(*, uploads: list[Upload]) -> list[Upload]:
    backend = _backend_pid()
    try:
        # Rows are inserted only once every file is on disk: a half-written batch never shows up.
        with transaction.atomic():
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


# How long a request whose connection was lost during its insert waits for the server process that ran it to end
# before it asks what was stored.
LOST_INSERT_WAIT_S = 5.0


def _backend_pid() -> int | None:
    """The PostgreSQL server process of this connection, watched for if the connection is lost mid-insert."""
    if connection.vendor != "postgresql" or connection.connection is None:
        return None
    return connection.connection.info.backend_pid


def _backend_ended(*, pid: int) -> bool:
    """Whether the server process of a lost connection has ended: until it has, it may still commit its insert."""
    deadline = time.monotonic() + LOST_INSERT_WAIT_S
    with connection.cursor() as cursor:
        while True:
            cursor.execute("SELECT 1 FROM pg_stat_activity WHERE pid = %s", [pid])
            if cursor.fetchone() is None:
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)


def _files_delete_unless_stored(*, names: list[str], error: BaseException, backend: int | None) -> set[str] | None:
    """After a failed insert, delete its files if nothing can have been stored; returns the names stored.

    A lost connection raises whether or not the server committed, and the server
    process ``backend`` goes on with a statement whose client is gone: it may
    commit after a fresh connection asked. So after a connection error, outside a
    transaction (inside one nothing can have been stored), a fresh connection
    waits for that process to end and then asks; the files stay, for the orphan
    sweep, which sets aside only what no row names an hour later. None says that
    what was stored is not known.
    """
    if not _is_transient(error) or connection.in_atomic_block:
        _files_delete(names)
        return set()
    try:
        connection.close()
        if backend is not None and not _backend_ended(pid=backend):
            logger.warning("the server process of uploads %s's insert did not end; the orphan sweep will decide", names)
            return None
        return set(Upload.objects.filter(image__in=names).values_list("image", flat=True))
    except DatabaseError:
        logger.warning("could not tell whether uploads %s were stored; the orphan sweep will decide", names)
        return None


def upload_files_orphaned_delete(*, now: dt.datetime | None = None, everything: bool = False) -> int:
    """Set aside uploaded files that no row names, written ORPHANED_AFTER to ORPHANED_AFTER x 4 ago; returns how many.

    They come from a process killed between writing an upload's files and
    inserting its rows, or from an insert whose connection was lost.
    Run every ORPHANED_AFTER, the sweep sees each file about three times, and
    only the folders of those hours (``uploads/<day>``) are listed.

    ``everything``: every folder, one at a time, and files of any age over
    ORPHANED_AFTER. A deleted upload's file whose removal failed (a volume gone
    read-only, a process killed while deleting an account's files) is found
    only this way. It also deletes the files set aside ORPHANED_FILES_KEEP_DAYS
    ago or more, and sets aside the files of RETIRED_FOLDER.

    The files are moved under ORPHANED_FOLDER rather than deleted: against a
    database restored from an older backup, or an empty one, every newer file
    looks orphaned, and moving them back is the way out.
    """
    now = now or timezone.now()
    newest, oldest = now - ORPHANED_AFTER, now - ORPHANED_AFTER * 4
    if everything:
        folders, oldest = _upload_folders(), None
    else:
        folders = sorted({f"uploads/{moment:%Y/%m/%d}" for moment in (oldest, newest)})
    set_aside = []
    for folder in folders:
        set_aside += _files_set_aside(_orphans_in(folder=folder, oldest=oldest, newest=newest))
    if len(set_aside) >= ORPHANED_MANY:
        logger.error(
            "moved %s uploaded files that no upload names to %s/ in MEDIA_ROOT; if the database was restored from an "
            "older backup, or replaced, move them back to where they were", len(set_aside), ORPHANED_FOLDER,
        )
    elif set_aside:
        logger.warning("moved %s uploaded files that no upload names to %s/: %s", len(set_aside), ORPHANED_FOLDER,
                       set_aside[:20])
    if everything:
        _files_set_aside_expired_delete(before=now - dt.timedelta(days=settings.ORPHANED_FILES_KEEP_DAYS))
        retired = _files_set_aside(_files_under(RETIRED_FOLDER)) if _model_inputs_moved_into_rows() else []
        if retired:
            logger.info("moved %s model input files of the release before classifier/0003 to %s/",
                        len(retired), ORPHANED_FOLDER)
    return len(set_aside)


def _model_inputs_moved_into_rows() -> bool:
    """Whether classifier/0003 ran: before it, the files under RETIRED_FOLDER are the only copy of the model inputs."""
    from django.db.migrations.recorder import MigrationRecorder

    return MigrationRecorder(connection).migration_qs.filter(app="classifier", name__startswith="0003_").exists()


def _files_under(folder: str) -> list[str]:
    """Every file under ``folder`` of the media storage, by storage name."""
    root = default_storage.path(folder)
    return [
        os.path.relpath(os.path.join(path, file), default_storage.path("")).replace(os.sep, "/")
        for path, _, files in os.walk(root)
        for file in files
    ]


def _files_set_aside(names: list[str]) -> list[str]:
    """Move ``names`` to the same names under ORPHANED_FOLDER, dated now; returns those moved."""
    moved = []
    for name in names:
        target = default_storage.path(f"{ORPHANED_FOLDER}/{name}")
        try:
            os.makedirs(os.path.dirname(target), exist_ok=True)
            os.replace(default_storage.path(name), target)
            # The keep period counts from the move, not from the upload.
            os.utime(target)
        except FileNotFoundError:
            continue  # deleted meanwhile
        except OSError:
            logger.warning("could not set aside orphaned file %s", name, exc_info=True)
            continue
        moved.append(name)
    return moved


def _files_set_aside_expired_delete(*, before: dt.datetime) -> None:
    cutoff = before.timestamp()
    for folder, _, files in os.walk(default_storage.path(ORPHANED_FOLDER)):
        for file in files:
            path = os.path.join(folder, file)
            try:
                if os.stat(path).st_mtime < cutoff:
                    os.remove(path)
            except FileNotFoundError:
                continue
            except OSError:
                logger.warning("could not delete orphaned file %s", path, exc_info=True)


def _orphans_in(*, folder: str, oldest: dt.datetime | None, newest: dt.datetime) -> list[str]:
    """The files of ``folder`` last written between ``oldest`` (None: any time) and ``newest`` that no upload names."""
    try:
        _, files = default_storage.listdir(folder)
    except FileNotFoundError:
        return []
    written: dict[str, dt.datetime] = {}
    for file in files:
        name = f"{folder}/{file}"
        try:
            modified = default_storage.get_modified_time(name)
        except FileNotFoundError:
            continue  # deleted meanwhile
        if (oldest is None or oldest <= modified) and modified < newest:
            written[name] = modified
    if not written:
        return []
    # A file is written just after its row's created_at is set: one range of the created_at index rules out nearly
    # every stored name at once. The rest, few, are looked up by name, which has no index of its own.
    earliest, latest = min(written.values()), max(written.values())
    stored = set(
        Upload.objects.filter(created_at__gte=earliest - ORPHANED_AFTER, created_at__lt=latest + ORPHANED_AFTER)
        .values_list("image", flat=True)
    )
    unknown = [name for name in written if name not in stored]
    for start in range(0, len(unknown), 1000):
        chunk = unknown[start : start + 1000]
        stored |= set(Upload.objects.filter(image__in=chunk).values_list("image", flat=True))
    return [name for name in unknown if name not in stored]


def _upload_folders() -> list[str]:
    """Every day folder of uploads (``uploads/<year>/<month>/<day>``)."""
    folders = ["uploads"]
    for _ in range(3):
        deeper = []
        for folder in folders:
            try:
                names, _ = default_storage.listdir(folder)
            except FileNotFoundError:
                continue
            deeper += [f"{folder}/{name}" for name in sorted(names)]
        folders = deeper
    return folders


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
    uploads = _upload_files_write(owner=owner, images=images, source=source)
    names = [upload.image.name for upload in uploads]
    backend = _backend_pid()
    try:
        published = _published_now()
        predictions = [Prediction(upload=upload, **published) for upload in uploads]
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
            _predictions_send(prediction_ids=[prediction.pk for prediction in predictions])
            raise UploadOutcomeUnknownError(
                f"The uploads were stored, but {len(names) - len(predictions)} of them were deleted before they could "
                "be read back."
            ) from exc
    ids = [prediction.pk for prediction in predictions]
    transaction.on_commit(lambda: _predictions_send(prediction_ids=ids))
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


def upload_delete(*, upload: Upload) -> None:
    """Delete an upload, its predictions and (once committed, by ``classifier.signals``) its image file.

    Deleted meanwhile by another request (a double click, a retried API call), it is gone already, its bytes given
    back there. The same path as a deletion of many: both take their locks in one order, so neither waits on the other.
    """
    _uploads_delete_batch(owner_id=upload.owner_id, uploads=Upload.objects.filter(pk=upload.pk))


# Uploads each transaction of a deletion by filters locks and deletes, with their predictions, and their files once
# it commits: under a tenth of a second on PostgreSQL (20,000 uploads took 3.4 s on two cores), however many match.
UPLOADS_DELETE_BATCH = 500
# The most uploads a deletion by ids takes, all in one transaction, as one batch (a page of history is 20). Their ids
# and the form's other fields stay within Django's DATA_UPLOAD_MAX_NUMBER_FIELDS (1,000).
UPLOADS_DELETE_MAX_SELECTED = UPLOADS_DELETE_BATCH


class UploadsDeleteError(ValueError):
    """A deletion named more uploads than UPLOADS_DELETE_MAX_SELECTED; nothing was deleted."""


class UploadsDeleteInterruptedError(Exception):
    """The database stopped answering during a deletion by filters after ``deleted`` uploads had gone for good."""

    def __init__(self, *, deleted: int):
        super().__init__(f"the database stopped answering after {deleted} uploads were deleted")
        self.deleted = deleted


def uploads_delete(
    *,
    owner,
    upload_ids: Collection[int] | None = None,
    filters: selectors.UploadFilters | None = None,
    newest_id: int | None = None,
    limit: int | None = None,
    deadline: float | None = None,
    batch_size: int | None = None,
) -> int:
    """Delete the owner's uploads named by ``upload_ids``, or every one that matches ``filters``; returns how many.

    Their predictions go with them, their bytes back to the owner's StorageUse,
    and (once committed, by ``classifier.signals``) their image files. Ids of
    uploads that are someone else's, or already gone, are passed over.

    ``upload_ids``: all of them or none, in one transaction; at most
    UPLOADS_DELETE_MAX_SELECTED, else UploadsDeleteError. ``filters`` (called
    outside a transaction): in transactions of ``batch_size`` (by default
    UPLOADS_DELETE_BATCH) uploads each, newest first, so that no lock is held
    for long and no more than a batch is in memory; a deletion stopped midway
    (a lost connection, a killed process) leaves its committed batches deleted
    and counted and the rest as they were, to be deleted again. ``newest_id``
    leaves out uploads stored after the deletion was confirmed, and ``limit``
    deletes no more than that many (the number confirmed), newest first, though
    more came to match meanwhile. When the database stops answering after a
    batch committed, UploadsDeleteInterruptedError says how many went. ``deadline``
    (``time.monotonic()``) starts no batch after it, so that a request ends in
    time on slow storage; one batch at least.
    """
    if (upload_ids is None) == (filters is None):
        raise TypeError("uploads_delete takes either upload_ids or filters")
    if upload_ids is not None:
        upload_ids = sorted(set(upload_ids))
        if len(upload_ids) > UPLOADS_DELETE_MAX_SELECTED:
            raise UploadsDeleteError(f"At most {UPLOADS_DELETE_MAX_SELECTED} uploads can be deleted at once.")
        if not upload_ids:
            return 0
        return _uploads_delete_batch(owner_id=owner.pk, uploads=Upload.objects.filter(owner=owner, pk__in=upload_ids))
    batch_size = batch_size or UPLOADS_DELETE_BATCH
    matching = selectors.upload_list_for_user(user=owner, filters=filters)
    if newest_id is not None:
        matching = matching.filter(pk__lte=newest_id)
    deleted, after = 0, None
    try:
        while (after is None or deadline is None or time.monotonic() < deadline) and (limit is None or deleted < limit):
            batch = matching
            if after is not None:
                # On from the last batch's end (the history's order): each row is looked at once, however many batches.
                batch = batch.filter(Q(created_at__lt=after[0]) | Q(created_at=after[0], pk__lt=after[1]))
            size = batch_size if limit is None else min(batch_size, limit - deleted)
            found = list(batch.values_list("created_at", "pk")[:size])
            if not found:
                break
            # Filtered again under the lock: an upload whose newest prediction changed meanwhile may no longer match.
            deleted += _uploads_delete_batch(owner_id=owner.pk, uploads=matching.filter(pk__in=[pk for _, pk in found]))
            after = found[-1]
            if len(found) < size:
                break
    except Exception as exc:
        if deleted and _is_transient(exc):
            raise UploadsDeleteInterruptedError(deleted=deleted) from exc
        raise
    return deleted


def uploads_lock_for_owner(*, owner) -> None:
    """Lock every upload of ``owner`` as a deletion of uploads does, then their count, in the caller's transaction.

    For a deletion of the owner: Django's cascade would delete their predictions first and the uploads after, the
    reverse of ``_uploads_delete_batch``, and the two would deadlock. Every upload's insert takes the count's row
    lock: held here, none of the owner's uploads commits until the deletion ends (then it fails, its owner gone).
    Otherwise one committed after the cascade read the uploads would outlive it, and fail the deletion at commit.
    """
    list(Upload.objects.filter(owner=owner).select_for_update().order_by("pk").values_list("pk", flat=True))
    # Made if missing (an owner's first upload may be under way): an upload's insert then waits on this row too.
    StorageUse.objects.bulk_create([StorageUse(owner=owner)], ignore_conflicts=True)
    list(StorageUse.objects.filter(owner=owner).select_for_update().values_list("pk", flat=True))


def _uploads_delete_batch(*, owner_id: int, uploads: QuerySet[Upload]) -> int:
    """Delete these uploads of one owner and give their bytes back, in one transaction; returns how many went."""
    with transaction.atomic():
        # Locked before their predictions and the owner's count, and by id, so two deletions of the same uploads
        # (every deletion comes here; an account's deletion locks them alike first, by uploads_lock_for_owner) wait
        # for each other instead of deadlocking. Under the lock no one else can
        # delete them: the bytes given back are exactly those of the rows this deletes.
        locked = list(uploads.select_for_update().order_by("pk").values_list("pk", UPLOAD_STORED_BYTES))
        if not locked:
            return 0
        _, deleted = Upload.objects.filter(pk__in=[pk for pk, _ in locked]).delete()
        # In the deletion's transaction, this UPDATE takes the row lock on the count that storage_use_recount takes.
        StorageUse.objects.filter(owner_id=owner_id).update(
            bytes=Greatest(F("bytes") - sum(stored for _, stored in locked), 0)
        )
    return deleted.get(Upload._meta.label, 0)


def storage_use_recount() -> int:
    """Count every owner's upload bytes afresh; returns how many owners' counts were wrong.

    Counts drift only through uploads a release from before the quota stored
    while the migration that added it ran, or rows deleted by hand. Owner by
    owner, each under its count's row lock, which every upload and deletion of
    theirs takes too: the sum, read after the lock, misses none of them.
    """
    owners = set(Upload.objects.order_by().values_list("owner_id", flat=True).distinct())
    StorageUse.objects.bulk_create([StorageUse(owner_id=owner) for owner in owners], batch_size=1000,
                                   ignore_conflicts=True)
    corrected = 0
    for owner_id in StorageUse.objects.order_by("owner_id").values_list("owner_id", flat=True).iterator():
        with transaction.atomic():
            counted = StorageUse.objects.select_for_update().filter(owner_id=owner_id).values_list("bytes", flat=True)
            if not counted:
                continue  # the owner was deleted meanwhile
            actual = Upload.objects.filter(owner_id=owner_id).aggregate(total=Sum(UPLOAD_STORED_BYTES))["total"] or 0
            if counted[0] != actual:
                StorageUse.objects.filter(owner_id=owner_id).update(bytes=actual)
                corrected += 1
    return corrected


def upload_files_delete_on_commit(*, names: list[str], using: str | None = None) -> None:
    """Delete these stored files once the current transaction commits: only when their rows are gone for good."""
    transaction.on_commit(lambda: _files_delete(names), using=using)


# --- predictions -------------------------------------------------------------------------------------------------


def prediction_create(*, upload: Upload) -> Prediction:
    """A pending prediction for ``upload``, its task published once the transaction commits."""
    return predictions_create(uploads=[upload])[0]


def predictions_create(
    *, uploads: list[Upload], publish: bool = True, feedback: dict[int, int] | None = None
) -> list[Prediction]:
    """Pending predictions in bulk; ``publish=False`` leaves them for the caller to execute in-process.

    ``feedback`` maps upload ids to the digit their new prediction starts with.
    """
    published = _published_now() if publish else {}
    feedback = feedback or {}
    # Inside a caller's transaction a savepoint would add two round trips and protect nothing.
    with transaction.atomic(savepoint=False):
        predictions = Prediction.objects.bulk_create(
            [Prediction(upload=upload, feedback=feedback.get(upload.pk), **published) for upload in uploads]
        )
        for prediction in predictions:
            if publish:
                # The same statement's now, which the database returned as created_at.
                prediction.published_at = prediction.created_at
        ids = [prediction.pk for prediction in predictions]
        if publish and ids:
            transaction.on_commit(lambda: _predictions_send(prediction_ids=ids))
    return predictions


def _published_now() -> dict:
    # Counted as published up front: the publish after commit then costs no UPDATE unless it fails. Dated by the
    # database, as the sweeper that compares it with its now reads the time.
    return {"publish_attempts": 1, "published_at": Now()}


def upload_read(*, upload: Upload) -> Prediction:
    """A prediction of an upload that has none (an administrator deleted them), made once however often asked.

    Returns the upload's newest prediction: the new one, or one made meanwhile (a double click, another tab).
    """
    with transaction.atomic():
        # The upload's row lock serialises the requests: two at once would both see no prediction.
        locked = Upload.objects.select_for_update().filter(pk=upload.pk).first()
        if locked is None:
            raise Upload.DoesNotExist("The upload was deleted.")
        return locked.predictions.order_by("-created_at", "-id").first() or predictions_rerun(uploads=[locked])[0]


def prediction_retry(*, prediction: Prediction) -> tuple[Prediction, bool]:
    """Its owner's second try at a failed prediction: a new one of the same upload, made once however often asked.

    Returns the upload's newest prediction, and whether this call made it: the
    new one, or one already newer (a double click, another tab), or this one
    unchanged when it did not fail.
    """
    with transaction.atomic():
        # The upload's row lock serialises retries of one upload: two at once would both see no newer prediction.
        upload = Upload.objects.select_for_update().filter(pk=prediction.upload_id).first()
        if upload is None:
            raise Prediction.DoesNotExist("The upload was deleted.")
        newest = upload.predictions.order_by("-created_at", "-id").first()
        if newest is None or newest.pk != prediction.pk or newest.status != Prediction.Status.FAILED:
            return newest or prediction, False
        return predictions_rerun(uploads=[upload])[0], True


def predictions_rerun(*, uploads: list[Upload], publish: bool = True) -> list[Prediction]:
    """New pending predictions of existing uploads, each keeping the digit its owner last said the image shows.

    The feedback belongs to the image, not to one model's answer: history shows
    the newest prediction, which would otherwise drop it.
    """
    with transaction.atomic():
        # Held until the new predictions commit, as feedback takes it too: feedback given meanwhile waits, then
        # reaches them (prediction_feedback_set), instead of being read before it came and lost. By id, as every
        # deletion locks uploads, so that neither waits on the other for ever.
        list(Upload.objects.select_for_update().filter(pk__in=[upload.pk for upload in uploads]).order_by("pk")
             .values_list("pk", flat=True))
        history = Prediction.objects.filter(upload__in=uploads).order_by("created_at", "id")
        # Later rows overwrite earlier ones: each upload keeps its newest prediction's feedback, a cleared one included.
        feedback = dict(history.values_list("upload_id", "feedback"))
        return predictions_create(uploads=uploads, publish=publish, feedback=feedback)


def prediction_publish(*, prediction_id: int) -> bool:
    """Send the execution task; a broker failure is logged and left for the sweeper, never raised to the user."""
    return predictions_publish(prediction_ids=[prediction_id]) == 1


def predictions_publish(*, prediction_ids: list[int]) -> int:
    """Record a publish attempt and send the execution tasks; returns how many predictions were sent."""
    if not prediction_ids:
        return 0
    Prediction.objects.filter(pk__in=prediction_ids).update(
        publish_attempts=F("publish_attempts") + 1, published_at=Now()
    )
    return _predictions_send(prediction_ids=prediction_ids)


def _predictions_send(*, prediction_ids: list[int]) -> int:
    """One message per batch of ids; on a broker failure the unsent ones are marked unpublished for the sweeper."""
    from classifier.tasks import predictions_execute as predictions_execute_task

    size = settings.INFERENCE_BATCH_SIZE
    sent = 0
    for start in range(0, len(prediction_ids), size):
        chunk = prediction_ids[start : start + size]
        try:
            predictions_execute_task.apply_async(args=[chunk])
        except Exception:  # noqa: BLE001 - any broker error means "not sent yet"; the sweeper retries
            logger.warning("could not publish predictions %s; the sweeper will retry", chunk, exc_info=True)
            # The broker is down: the rest would fail the same way, each after a connection timeout.
            try:
                Prediction.objects.filter(pk__in=prediction_ids[start:]).update(published_at=None)
            except DatabaseError:
                # Runs after the rows are committed, so it must not fail the upload. Still marked published,
                # they are re-sent once PREDICTION_REPUBLISH_AFTER_SECONDS have passed instead of at once.
                logger.warning("could not mark predictions %s unpublished", prediction_ids[start:], exc_info=True)
            break
        sent += len(chunk)
    return sent


def predictions_sweep() -> int:
    """Re-publish predictions stuck pending (never sent, or lost) or running on a dead worker; returns how many.

    One whose worker was lost ``PREDICTION_MAX_ATTEMPTS`` times fails instead: it is
    the likely reason, and running it again would only lose another worker.
    Ages are counted on the database's clock, which dated the predictions: a
    sweeper whose host clock runs ahead would otherwise take live claims for
    lost ones, and one behind would leave lost ones waiting.
    """
    now = Now()
    cutoff = now - dt.timedelta(seconds=settings.PREDICTION_REPUBLISH_AFTER_SECONDS)
    lost = Q(status=Prediction.Status.RUNNING, started_at__lt=now - _running_stale_after())
    given_up = Prediction.objects.filter(lost, attempts__gte=settings.PREDICTION_MAX_ATTEMPTS).update(
        status=Prediction.Status.FAILED,
        error=f"The worker stopped while computing this prediction {settings.PREDICTION_MAX_ATTEMPTS} times "
        "(the image may be too large or damaged); it was not tried again.",
        finished_at=now,
    )
    if given_up:
        logger.warning("sweeper failed %s predictions that lost their worker too often", given_up)
    stuck = Prediction.objects.filter(
        Q(status=Prediction.Status.PENDING, created_at__lt=cutoff)
        & (Q(published_at__isnull=True) | Q(published_at__lt=cutoff))
        | lost
    ).order_by("created_at")
    ids = list(stuck.values_list("pk", flat=True)[:1000])
    if not ids:
        return 0
    sent = predictions_publish(prediction_ids=ids)
    logger.info("sweeper re-published %s of %s stuck predictions", sent, len(ids))
    return sent


def _prediction_fail(*, prediction: Prediction, error: str, checkpoint_id: int | None = None) -> Prediction:
    prediction.status = Prediction.Status.FAILED
    prediction.error = error
    prediction.checkpoint_id = checkpoint_id
    prediction.finished_at = timezone.now()
    return prediction


def _open_upload_image(name: str) -> Image.Image:
    with default_storage.open(name, "rb") as stored:
        data = stored.read()
    image = Image.open(io.BytesIO(data), formats=["PNG"])
    image.load()
    return image


def prediction_execute(*, prediction_id: int) -> Prediction | None:
    """Run the model on one pending prediction; None when it was already claimed or finished."""
    finished = predictions_execute(prediction_ids=[prediction_id])
    return finished[0] if finished else None


def predictions_execute(*, prediction_ids: list[int]) -> list[Prediction]:
    """Run the model on these predictions, in batches topped up with other waiting ones; returns those finished here.

    Safe to call twice with the same ids: each claim is atomic and a finished
    prediction is never recomputed, so the second call returns nothing.
    """
    if not prediction_ids:
        return []
    remaining, finished = set(prediction_ids), []
    while remaining:
        _model_loads_before_claiming()
        # Locked with SKIP LOCKED, so two workers never claim the same prediction; ours already running
        # (and not stale) or finished are left alone, so a redelivered message never recomputes a result.
        token = uuid.uuid4()
        try:
            batch, checkpoint_id = statements.predictions_claim(
                prediction_ids=sorted(remaining),
                limit=settings.INFERENCE_BATCH_SIZE,
                stale_after_s=_running_stale_after().total_seconds(),
                max_attempts=settings.PREDICTION_MAX_ATTEMPTS,
                token=token,
            )
        except Exception as exc:
            if _is_transient(exc):
                # The claim may have committed and its answer been lost with the connection: what it marked would
                # wait for the stale limit, then run one at a time, each claim counted. Handed back, uncounted,
                # the task's retry takes them at once.
                _claim_release(token=token)
            raise
        try:
            results = _predictions_run(predictions=batch, checkpoint_id=checkpoint_id) if batch else []
        except CheckpointDeletedError:
            # Staff deleted the model the claim named: no fault of the images, so taken again, uncounted, with the
            # checkpoint active now.
            logger.warning("checkpoint %s was deleted while predictions %s ran with it; taking them again",
                           checkpoint_id, [prediction.pk for prediction in batch])
            _predictions_release(predictions=batch, uncount=True)
            continue
        except Exception as exc:
            if isinstance(exc, ModelUnavailableError):
                _model_load_failed_at[0] = time.monotonic()
                _predictions_hand_back(predictions=batch, counted_ids=remaining)
            elif _is_transient(exc):
                # Handing the claims back, uncounted, lets the task's retry or a redelivery claim them at once.
                _predictions_release(predictions=batch, uncount=True)
            raise
        ours = [prediction for prediction in results if prediction.pk in remaining]
        if not ours:
            # The rest are running elsewhere or finished; whatever rode along is done too.
            break
        finished += ours
        remaining -= {prediction.pk for prediction in ours}
    if not finished:
        logger.info("predictions %s are already running or finished; nothing to do", prediction_ids)
    return finished


# When this process last failed to load the active model (monotonic seconds); -inf while it has not.
_model_load_failed_at = [-math.inf]


def _model_loads_before_claiming() -> None:
    """In a process that recently failed to load the model, raise ModelUnavailableError unless it loads now.

    Nothing is claimed meanwhile: the message goes back for its retry, and healthy workers take the predictions.
    After MODEL_LOAD_RETRY_AFTER_SECONDS the process claims again, so that when no worker can load the model a
    prediction still reaches its PREDICTION_MAX_ATTEMPTS and fails with a message instead of waiting for ever.
    """
    if time.monotonic() - _model_load_failed_at[0] >= settings.MODEL_LOAD_RETRY_AFTER_SECONDS:
        return
    from classifier import inference
    from training.models import Checkpoint

    checkpoint_id = Checkpoint.objects.filter(is_active=True).values_list("pk", flat=True).first()
    try:
        _model_load(checkpoint_id=checkpoint_id)
    except inference.NoActiveCheckpointError:
        pass  # the claim fails the predictions with that message, as in a healthy worker
    _model_load_failed_at[0] = -math.inf


def _model_load(*, checkpoint_id: int | None, sha256: str | None = None):
    """The checkpoint's model; ModelUnavailableError when this worker cannot load it (see inference for the rest)."""
    from classifier import inference

    try:
        return inference.model_for_checkpoint_id(checkpoint_id=checkpoint_id, sha256=sha256)
    except (inference.NoActiveCheckpointError, SoftTimeLimitExceeded):
        raise
    except Exception as exc:
        if _is_transient(exc):
            raise
        if (out_of_time := _time_limit_behind(exc)) is not None:
            # Reached while the file was read, and wrapped as a damaged checkpoint: not the model's fault either.
            raise out_of_time from None
        if _checkpoint_deleted(checkpoint_id=checkpoint_id):
            raise CheckpointDeletedError(f"checkpoint {checkpoint_id} was deleted") from exc
        # This worker's fault (a volume not mounted on its host, a damaged copy, a GPU error), not the images':
        # failing the batch would fail other people's predictions that a healthy worker can compute.
        logger.exception("could not load checkpoint %s in this worker", checkpoint_id)
        raise ModelUnavailableError(f"checkpoint {checkpoint_id} could not be loaded in this worker") from exc


def _predictions_run(*, predictions: list[Prediction], checkpoint_id: int | None) -> list[Prediction]:
    from classifier import inference

    try:
        # The claim read the active checkpoint's digest with its id: the cached model is checked without a query.
        loaded = _model_load(checkpoint_id=checkpoint_id, sha256=predictions[0].active_checkpoint_sha256)
    except inference.NoActiveCheckpointError as exc:
        return _predictions_save([_prediction_fail(prediction=p, error=str(exc)) for p in predictions])

    readable: list[Prediction] = []

    def stored_images() -> Iterator[Image.Image]:
        # Read one at a time as preprocessing asks for them: a batch of large pictures is never all in memory.
        for prediction in predictions:
            try:
                image = _open_upload_image(prediction.upload_image)
            except SoftTimeLimitExceeded:
                raise
            except FileNotFoundError:
                if not Upload.objects.filter(pk=prediction.upload_id).exists():
                    # Its owner deleted it, file and all, while the batch ran: nothing is left to answer.
                    logger.info("upload %s was deleted while its prediction was computed", prediction.upload_id)
                    continue
                logger.exception("stored image of prediction %s is missing", prediction.pk)
                _prediction_fail(
                    prediction=prediction, error="The stored image could not be read.", checkpoint_id=checkpoint_id
                )
                continue
            except Exception:  # noqa: BLE001 - a missing or damaged stored file fails this prediction only
                logger.exception("stored image of prediction %s could not be read", prediction.pk)
                _prediction_fail(
                    prediction=prediction, error="The stored image could not be read.", checkpoint_id=checkpoint_id
                )
                continue
            readable.append(prediction)
            yield image
            del image  # released before the next one is read

    # Out of time is not a bad image: the batch stays claimed, and after a lost worker's wait it is taken up
    # again, one prediction at a time.
    try:
        results = inference.predict_images(loaded=loaded, images=stored_images(), interrupts=(SoftTimeLimitExceeded,))
    except SoftTimeLimitExceeded:
        raise
    except Exception as exc:
        if _is_transient(exc):
            raise
        # Each image's own failure is its result; what fails the whole batch is the model or its device (a GPU
        # out of memory or in an error state), as for a model that cannot load: the batch goes back, whole,
        # and this process loads the model afresh before it claims again.
        logger.exception("the model failed on a batch with checkpoint %s; handing the predictions back", checkpoint_id)
        inference.model_forget(checkpoint_id=checkpoint_id)
        raise ModelUnavailableError(f"checkpoint {checkpoint_id} failed in this worker") from exc
    finished = timezone.now()
    for prediction, result in zip(readable, results, strict=True):
        if isinstance(result, inference.EmptyImageError):
            _prediction_fail(
                prediction=prediction,
                error=f"{Prediction.NO_DIGIT_ERROR} {result}.",
                checkpoint_id=checkpoint_id,
            )
        elif isinstance(result, Exception):
            logger.error("prediction %s could not be preprocessed: %r", prediction.pk, result)
            # The exception's own text is for the log: it speaks of the code, not of the picture.
            _prediction_fail(prediction=prediction, error=PREPARE_FAILED_ERROR, checkpoint_id=checkpoint_id)
        else:
            prediction.input_pixels = result.input_pixels
            prediction.status = Prediction.Status.DONE
            prediction.checkpoint_id = checkpoint_id
            prediction.digit = result.digit
            prediction.confidence = result.confidence
            prediction.probabilities = result.probabilities
            prediction.device = str(loaded.device)
            prediction.queue_ms = (prediction.started_at - prediction.created_at).total_seconds() * 1000
            prediction.compute_ms = result.compute_ms
            prediction.several_digits = result.several_digits
            prediction.error = ""
            prediction.finished_at = finished
    try:
        return _predictions_save(predictions)
    except IntegrityError as exc:
        # The results name the checkpoint, which a deletion (waiting on nothing the worker holds) took meanwhile.
        if _checkpoint_deleted(checkpoint_id=checkpoint_id):
            raise CheckpointDeletedError(f"checkpoint {checkpoint_id} was deleted") from exc
        raise


def _checkpoint_deleted(*, checkpoint_id: int | None) -> bool:
    from training.models import Checkpoint

    return checkpoint_id is not None and not Checkpoint.objects.filter(pk=checkpoint_id).exists()


def _predictions_save(predictions: list[Prediction]) -> list[Prediction]:
    """Store a batch's results in one go, announced to waiting requests when they commit; returns those stored.

    A prediction claimed again meanwhile (this worker stalled past the stale limit) keeps the newer claim's result.
    """
    stored = statements.prediction_results_update(predictions=predictions, notify_channel=completion.CHANNEL)
    unstored = [prediction.pk for prediction in predictions if prediction.pk not in stored]
    if unstored:
        # Deleted with their uploads meanwhile (their owner's choice), or claimed again: only the latter is news.
        left = set(Prediction.objects.filter(pk__in=unstored).values_list("pk", flat=True))
        unstored = [pk for pk in unstored if pk in left]
    if unstored:
        logger.warning(
            "predictions %s were claimed again while this worker computed them; their results here are dropped",
            sorted(unstored),
        )
    return [prediction for prediction in predictions if prediction.pk in stored]


def _time_limit_behind(exc: BaseException | None) -> SoftTimeLimitExceeded | None:
    """The task's time limit, when it set off ``exc`` (a library's own error wrapping it)."""
    seen: set[int] = set()  # a chain can loop (``raise exc from exc``)
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, SoftTimeLimitExceeded):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def _is_transient(exc: Exception) -> bool:
    from django.db import InterfaceError, OperationalError

    return isinstance(exc, (OperationalError, InterfaceError))


def _connection_reopen_if_lost() -> None:
    """Drop this thread's connection if an error left it unusable, so that the next statement opens a fresh one.

    Django keeps a lost connection until the task ends; a hand-back after the loss would fail on it, and leave the
    predictions running until the stale limit.
    """
    if not connection.in_atomic_block:
        try:
            connection.close_if_unusable_or_obsolete()
        except DatabaseError:
            logger.warning("could not close a lost database connection", exc_info=True)


def _claim_release(*, token: uuid.UUID) -> None:
    """Hand back, uncounted, whatever the claim made with ``token`` marked running; its answer was lost.

    Its rows are known only by that token, which this process drew for the claim and no other claim holds: the
    time the database stamped on them never reached this process.
    """
    _connection_reopen_if_lost()
    try:
        Prediction.objects.filter(status=Prediction.Status.RUNNING, claim_token=token).update(
            status=Prediction.Status.PENDING, started_at=None, attempts=Greatest(F("attempts") - 1, 0)
        )
    except Exception:  # noqa: BLE001 - with the database gone the stale-running rule takes over
        logger.warning("could not release the predictions claimed with %s", token, exc_info=True)


def _predictions_release(*, predictions: list[Prediction], uncount: bool) -> None:
    """Hand claimed predictions back to the queue, each only while it is still held by the claim that took it.

    ``uncount``: the claim does not count as an attempt (the images were not at
    fault). A claim taken over by another worker meanwhile is left alone.
    """
    by_claim: dict[int, list[int]] = {}
    for prediction in predictions:
        by_claim.setdefault(prediction.attempts, []).append(prediction.pk)
    changes = {"status": Prediction.Status.PENDING, "started_at": None}
    if uncount:
        changes["attempts"] = Greatest(F("attempts") - 1, 0)
    _connection_reopen_if_lost()
    try:
        for attempts, ids in by_claim.items():
            Prediction.objects.filter(pk__in=ids, status=Prediction.Status.RUNNING, attempts=attempts).update(**changes)
    except Exception:  # noqa: BLE001 - with the database gone the stale-running rule takes over
        logger.warning("could not release predictions %s", [p.pk for p in predictions], exc_info=True)


def _predictions_hand_back(*, predictions: list[Prediction], counted_ids: set[int]) -> None:
    """After this worker could not load the model: back to the queue, for a worker that can.

    The hand-back of a prediction the message asked for (``counted_ids``) counts
    as an attempt, so that when no worker can load the model (its file damaged
    or gone everywhere) it fails with a message after PREDICTION_MAX_ATTEMPTS
    instead of waiting for ever. Those that only topped the batch up are handed
    back uncounted: their own messages count for them.
    """
    counted = [p for p in predictions if p.pk in counted_ids]
    out_of_attempts = [p for p in counted if p.attempts >= settings.PREDICTION_MAX_ATTEMPTS]
    if out_of_attempts:
        # Users see this text; the reason (file paths, hashes) is in the workers' logs.
        error = (
            f"The model could not be loaded by the workers that took this prediction "
            f"({settings.PREDICTION_MAX_ATTEMPTS} tries); an administrator can find out why in their logs."
        )
        _predictions_save([_prediction_fail(prediction=p, error=error) for p in out_of_attempts])
    failed = {p.pk for p in out_of_attempts}
    _predictions_release(predictions=[p for p in counted if p.pk not in failed], uncount=False)
    _predictions_release(predictions=[p for p in predictions if p.pk not in counted_ids], uncount=True)


def prediction_feedback_set(*, prediction: Prediction, digit: int | None) -> Prediction:
    """Record the digit the person says the image really shows (None clears it), here and on its upload's newer ones.

    Newer predictions come from a re-run made while the page showing this one was open.

    Raises Prediction.DoesNotExist when the prediction was deleted meanwhile (its upload deleted in another tab).
    """
    if digit is not None and (not isinstance(digit, int) or not 0 <= digit <= 9):
        raise PredictionFeedbackError("Feedback must be a digit from 0 to 9.")
    with transaction.atomic():
        # The upload's row lock, which a re-run holds from reading the feedback until its new prediction commits:
        # feedback given meanwhile reaches the new prediction instead of one no page shows any longer.
        list(Upload.objects.select_for_update().filter(pk=prediction.upload_id).values_list("pk", flat=True))
        created_at = Prediction.objects.filter(pk=prediction.pk).values_list("created_at", flat=True).first()
        if created_at is None:
            raise Prediction.DoesNotExist(f"prediction {prediction.pk} no longer exists")
        # The feedback belongs to the image: given on a page a re-run has replaced, it also goes to the predictions
        # made since, which carried the old one forward; history shows only the newest.
        Prediction.objects.filter(
            Q(pk=prediction.pk)
            | (Q(upload_id=prediction.upload_id)
               & (Q(created_at__gt=created_at) | Q(created_at=created_at, pk__gt=prediction.pk)))
        ).update(feedback=digit)
    prediction.feedback = digit
    return prediction


# --- sample sets ---------------------------------------------------------------------------------------------------


class SamplesOwnerError(Exception):
    """The sample sets' owner name belongs to an account someone can log in to."""


def samples_user_get_or_create():
    """The account that owns the shipped sample sets: nobody can log in to it."""
    from django.contrib.auth import get_user_model

    user_model = get_user_model()
    user, created = user_model.objects.get_or_create(username="samples", defaults={"is_active": True})
    if created:
        user.set_unusable_password()
        user.save(update_fields=["password"])
    elif user.has_usable_password():
        # Signed up under that name before sign-up reserved it: whoever did would own, and could delete, the samples.
        raise SamplesOwnerError(
            "The account \"samples\" has a password, so it is not the site's own; rename it in the admin "
            "(Users), then load the samples again."
        )
    return user


def sample_upload_get_or_create(*, owner, path, sample_set: str, label: int | None) -> tuple[Upload, bool]:
    """Register one shipped sample image once per (sample set, sha256)."""
    import hashlib

    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    existing = Upload.objects.filter(sample_set=sample_set, sha256=digest).first()
    if existing is not None:
        return existing, False
    upload = upload_create(
        owner=owner,
        file=io.BytesIO(data),
        name=path.name,
        source=Upload.Source.SAMPLE,
        sample_set=sample_set,
        label=label,
    )
    return upload, True
