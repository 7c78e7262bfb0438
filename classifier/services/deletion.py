"""Deleting uploads (one, those selected, or every match of filters) and keeping their owners' bytes counted."""
from __future__ import annotations

import time
from collections.abc import Collection

from django.contrib.auth import get_user_model
from django.db import transaction
from django.db.models import F, Q, QuerySet, Sum
from django.db.models.functions import Greatest

from classifier import selectors
from classifier.models import UPLOAD_STORED_BYTES, Prediction, StorageUse, Upload
from classifier.services.files import upload_files_delete_on_commit
from mnistsite.database_connections import is_transient


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
        if deleted and is_transient(exc):
            raise UploadsDeleteInterruptedError(deleted=deleted) from exc
        raise
    return deleted


def uploads_lock_for_owners(*, owners) -> None:
    """Lock every upload of ``owners`` as a deletion of uploads does, then their counts, in the caller's transaction.

    For a deletion of the owners: uploads_delete_all deletes their predictions first and the uploads after, the
    reverse of ``_uploads_delete_batch``, and the two would deadlock. The uploads of all of them in one statement, by
    id, as staff's deletions lock uploads across owners: owner by owner, two deletions could each hold an upload the
    other waits for. Every upload's insert takes its owner's count's row lock: held here, none of the owners' uploads
    commits until the deletion ends (then it fails, its owner gone). Otherwise one committed after the deletion read
    the uploads would outlive it, and fail the deletion at commit.
    """
    ids = sorted(owner.pk for owner in owners)
    list(Upload.objects.filter(owner__in=ids).select_for_update().order_by("pk").values_list("pk", flat=True))
    for pk in ids:
        # Made if missing (an owner's first upload may be under way): an upload's insert then waits on this row too.
        with transaction.atomic():
            StorageUse.objects.bulk_create([StorageUse(owner_id=pk)], ignore_conflicts=True)
            # Unless the owner was deleted meanwhile (by their own deletion, waited for above): the row would fail
            # the whole deletion at commit, when the foreign key is checked.
            if not get_user_model().objects.filter(pk=pk).exists():
                transaction.set_rollback(True)
    list(StorageUse.objects.filter(owner__in=ids).select_for_update().order_by("owner_id").values_list("pk", flat=True))


def uploads_delete_all(*, owner) -> int:
    """Delete every upload of ``owner`` with its predictions, for the owner's own deletion; returns how many went.

    In the caller's transaction, after uploads_lock_for_owners; the image files go once it commits. Set-based: the
    cascade from the account would read every upload and prediction as an instance first, and the file signal queue
    a callback for each (an account of 100,000 uploads: 16 s and 200 MB more memory, against 3 s and 16 MB).
    """
    uploads = Upload.objects.filter(owner=owner)
    names = list(uploads.order_by().values_list("image", flat=True))
    Prediction.objects.filter(upload__owner=owner).delete()
    # Not .delete(): it would read every row in full for the signal that removes each row's file; removed below.
    uploads._raw_delete(uploads.db)
    StorageUse.objects.filter(owner=owner).update(bytes=0)
    upload_files_delete_on_commit(names=names)
    return len(names)


def _uploads_delete_batch(*, owner_id: int, uploads: QuerySet[Upload]) -> int:
    """Delete these uploads of one owner and give their bytes back, in one transaction; returns how many went."""
    with transaction.atomic():
        # Locked before their predictions and the owner's count, and by id, so two deletions of the same uploads
        # (every deletion comes here; an account's deletion locks them alike first, by uploads_lock_for_owners) wait
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
