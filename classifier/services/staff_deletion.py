"""Deleting the uploads or predictions staff selected in the admin: every one with its history entry, or none."""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator, Sequence

from django.db import transaction
from django.db.models import F, QuerySet, TextField, Value
from django.db.models.functions import Cast, Coalesce, Concat, Greatest, NullIf

from classifier.models import UPLOAD_STORED_BYTES, Prediction, StorageUse, Upload
from classifier.services.files import upload_files_delete_on_commit
from mnistsite.action_log import staff_deletions_record

# The most rows one deletion in the admin takes, all in one transaction with their history entries, their rows
# locked all along: the rows of 50,000 uploads took 8 s on two cores busy with other work. (Their files are the
# workers' to remove once it commits, upload_files_delete: 5 s for 50,000, 114 s while others wrote files too.)
STAFF_DELETE_MAX = 20_000
# Rows each statement names by id: within PostgreSQL's 65,535 parameters and SQLite's 32,766.
_STATEMENT_ROWS = 5_000

# The SQL of Upload.__str__ and Prediction.__str__, for the history's name of each row.
_UPLOAD_REPR = Concat(
    Value("Upload "), Cast("pk", TextField()), Value(" ("), Coalesce(NullIf("original_name", Value("")), "source"),
    Value(")"), output_field=TextField(),
)
_PREDICTION_REPR = Concat(
    Value("Prediction "), Cast("pk", TextField()), Value(" ("), F("status"), Value(")"), output_field=TextField(),
)


class StaffDeleteTooManyError(ValueError):
    """More rows were selected than one deletion takes (STAFF_DELETE_MAX); nothing was deleted."""

    def __init__(self, *, selected: int, most: int):
        super().__init__(f"{selected} rows are selected, and at most {most} are deleted at once")
        self.selected, self.most = selected, most


def uploads_delete_by_staff(*, user, uploads: QuerySet[Upload]) -> int:
    """Delete ``uploads`` for ``user`` (staff), recording each in the admin's history; returns how many went.

    All of them or none, in one transaction: their predictions with them, their bytes back to their owners'
    StorageUse, and their image files once it commits. More than STAFF_DELETE_MAX: StaffDeleteTooManyError, and
    nothing is deleted. Rows are read by id and column, never as instances, so the cost is a few statements per
    thousands of rows.
    """
    staff_deletion_size_check(selected=uploads.count())
    with transaction.atomic():
        # Locked by id as every other deletion of uploads locks them (classifier.services.deletion), so none waits on
        # another in a cycle; under the lock no one else deletes them, and the history names exactly what goes.
        locked = list(
            Upload.objects.filter(pk__in=uploads.order_by().values("pk")).select_for_update().order_by("pk")
            .values_list("pk", "owner_id", UPLOAD_STORED_BYTES, "image")
        )
        staff_deletion_size_check(selected=len(locked))
        freed: dict[int, int] = defaultdict(int)
        for _, owner_id, stored, _ in locked:
            freed[owner_id] += stored
        for ids in _chunks([pk for pk, *_ in locked]):
            staff_deletions_record(user=user, rows=Upload.objects.filter(pk__in=ids), object_repr=_UPLOAD_REPR)
            Prediction.objects.filter(upload_id__in=ids).delete()
            # Not .delete(): for the signal that removes each row's file it would read every row in full and queue
            # a callback each; the files are removed below, all at once.
            Upload.objects.filter(pk__in=ids)._raw_delete(Upload.objects.db)
        for owner_id in sorted(freed):
            StorageUse.objects.filter(owner_id=owner_id).update(bytes=Greatest(F("bytes") - freed[owner_id], 0))
        upload_files_delete_on_commit(names=[image for *_, image in locked])
    return len(locked)


def predictions_delete_by_staff(*, user, predictions: QuerySet[Prediction]) -> int:
    """Delete ``predictions`` for ``user`` (staff), recording each in the admin's history; returns how many went.

    All of them or none, in one transaction; their uploads stay. More than STAFF_DELETE_MAX:
    StaffDeleteTooManyError, and nothing is deleted.
    """
    staff_deletion_size_check(selected=predictions.count())
    with transaction.atomic():
        # Their uploads first, by id, as every deletion of uploads locks them before deleting their predictions (in
        # batches, each batch's in no order of id): locking predictions first, the two could each hold a prediction
        # the other waits for. No key: a re-run's new prediction on them is not held up.
        list(
            Upload.objects.filter(pk__in=predictions.order_by().values("upload_id")).select_for_update(no_key=True)
            .order_by("pk").values_list("pk", flat=True)
        )
        locked = list(
            Prediction.objects.filter(pk__in=predictions.order_by().values("pk")).select_for_update().order_by("pk")
            .values_list("pk", flat=True)
        )
        staff_deletion_size_check(selected=len(locked))
        for ids in _chunks(locked):
            staff_deletions_record(user=user, rows=Prediction.objects.filter(pk__in=ids), object_repr=_PREDICTION_REPR)
            Prediction.objects.filter(pk__in=ids).delete()
    return len(locked)


def staff_deletion_size_check(*, selected: int) -> None:
    """Raise StaffDeleteTooManyError when ``selected`` rows are more than one deletion by staff takes."""
    if selected > STAFF_DELETE_MAX:
        raise StaffDeleteTooManyError(selected=selected, most=STAFF_DELETE_MAX)


def _chunks(ids: Sequence[int]) -> Iterator[Sequence[int]]:
    for start in range(0, len(ids), _STATEMENT_ROWS):
        yield ids[start : start + _STATEMENT_ROWS]
