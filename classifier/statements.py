"""Hand-written SQL for the prediction hot path: on PostgreSQL each step is one statement for a whole batch.

SQLite gets the same one-statement claim, and the ORM in a transaction for the
inserts and the results (it has no arrays to bind). Django's compiler takes
longer to build these statements than the database takes to run them, and a
transaction around several ORM statements costs two more round trips. On
PostgreSQL a batch's values travel as one array per column (``unnest``), so the
text of a statement, and psycopg's and the server's work
on it, is the same for two rows or a hundred; a single row's travel as they are.
"""
from __future__ import annotations

import datetime as dt
import functools
import uuid
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from operator import attrgetter
from types import NoneType
from typing import NamedTuple

from django.db import connection, connections, transaction
from django.db.models import BooleanField, CharField, DateField, DateTimeField, F, Field, FloatField, Model, TextField

from classifier.models import IdempotencyKey, Prediction, StorageUse, Upload
from mnistsite.bound_statements import (
    among,
    bound_cursor,
    converted_row,
    converters_cached,
    model_columns,
    model_rows,
)
from mnistsite.database_now import SQLITE_NOW, Now
from training.models import Checkpoint


def _quote(name: str) -> str:
    return connection.ops.quote_name(name)


def _database_now() -> str:
    """SQL for the database's clock, read once for the whole statement.

    Every time of a prediction comes from here, so that hosts whose clocks
    disagree still agree on which claim is stale and which prediction is oldest.
    On PostgreSQL the statement's start, as Django's ``Now()`` reads it: one
    value for every row the statement writes (a batch shares its ``started_at``,
    and its predictions their ``created_at``); ``clock_timestamp()`` would move
    from row to row. And the statement's own moment inside a longer
    transaction, where ``now()`` would be the transaction's start: a claim run
    in one would be dated before predictions it takes, and look stale early.
    SQLite fixes ``'now'`` for the length of a statement too.
    """
    if connection.vendor == "postgresql":
        return "STATEMENT_TIMESTAMP()"
    return SQLITE_NOW.replace("%", "%%")


def _database_seconds_ago() -> str:
    """SQL for the database's clock (as ``_database_now``) less a parameter's number of seconds."""
    if connection.vendor == "postgresql":
        return "(STATEMENT_TIMESTAMP() - %s::double precision * INTERVAL '1 second')"
    return "STRFTIME('%%Y-%%m-%%d %%H:%%M:%%f', 'now', '-' || %s || ' seconds')"


def _column_arrays(fields: Sequence[Field], objs: Sequence[Model], *, adding: bool) -> list[list]:
    """Each field's database value for every object, column by column, as the ORM would save them."""
    # The wrapper itself, not the thread-local proxy that every attribute access would otherwise go through.
    wrapper = connections[connection.alias]
    return [_prepared_column(field, _saved_values(field, objs, adding=adding), wrapper) for field in fields]


def _saved_values(field: Field, objs: Sequence[Model], *, adding: bool) -> list:
    # Where pre_save only reads the attribute, the attribute is read; a field that does more (a file, a date set
    # on save) is asked object by object.
    if not adding or _pre_save_reads_attribute(field):
        return list(map(attrgetter(field.attname), objs))
    return [field.pre_save(obj, add=True) for obj in objs]


def _pre_save_reads_attribute(field: Field) -> bool:
    pre_save = type(field).pre_save
    return pre_save is Field.pre_save or (
        pre_save in (DateField.pre_save, DateTimeField.pre_save) and not field.auto_now and not field.auto_now_add
    )


# Django's own field classes, and the types of value whose database value each of them is on every backend: the
# value itself. A column holding only those is sent as it is, with no call per value.
_UNCHANGED: dict[type[Field], Callable[[type], bool]] = {
    CharField: lambda kind: kind is NoneType or issubclass(kind, str),
    TextField: lambda kind: kind is NoneType or issubclass(kind, str),
    FloatField: lambda kind: kind is float or kind is NoneType,
    BooleanField: lambda kind: kind is bool or kind is NoneType,
}


def _unchanged(field: Field, column: list) -> bool:
    """Whether every value of ``column`` is its own database value for ``field``."""
    kept = _UNCHANGED.get(type(field))
    return kept is not None and all(map(kept, set(map(type, column))))


def _prepared_column(field: Field, column: list, wrapper) -> list:
    if _unchanged(field, column):
        return column
    # Most columns of a batch hold one shared object (None, a default, the batch's timestamp): each distinct
    # object is converted once, in the order it first appears. Keyed by identity, which is safe while ``column``
    # keeps every value alive.
    keys = list(map(id, column))
    converted = {key: field.get_db_prep_save(value, wrapper) for key, value in dict(zip(keys, column)).items()}
    return list(map(converted.__getitem__, keys))


def _unnest(
    fields: Sequence[Field], *, alias: str, leading: Sequence[tuple[str, str]] = (), single: bool = False
) -> str:
    """``unnest(...) AS alias(...)`` taking one array parameter per column (``leading``: extra (name, type) columns).

    ``single``: one row, one value per column (``(VALUES (...)) AS alias(...)``), for ``_rows_params(single=True)``.
    psycopg must look into every list it sends to find the type of its elements; a single image's insert, with
    over thirty one-element lists, spent 0.14 ms on it, against 0.01 ms for the values themselves.
    """
    columns = [*leading, *((field.column, field.db_type(connection)) for field in fields)]
    names = ", ".join(_quote(name) for name, _ in columns)
    if single:
        return f"(VALUES ({', '.join(f'%b::{db_type}' for _, db_type in columns)})) AS {alias}({names})"
    arrays = ", ".join(f"%b::{db_type}[]" for _, db_type in columns)
    return f"unnest({arrays}) AS {alias}({names})"


def _rows_params(columns: list[list], *, single: bool) -> list:
    """The parameters of ``_unnest(..., single=single)`` for these columns."""
    return [column[0] for column in columns] if single else columns


def _insert_fields(model: type[Model], *, exclude: Sequence[str] = ()) -> list[Field]:
    return [field for field in model._meta.concrete_fields if not field.primary_key and field.name not in exclude]


# The prediction times the insert takes from the database's clock, not from the objects: created_at by the column's
# default, published_at (where the object says it is published) by the statement.
_DATABASE_TIMES = ["created_at", "published_at"]


def _prediction_insert_fields() -> list[Field]:
    return _insert_fields(Prediction, exclude=["upload", *_DATABASE_TIMES])


@functools.cache
def _uploads_with_predictions_insert_sql(*, keyed: bool = False, single: bool = False) -> str:
    # The text depends only on the models, so each process builds it once for each of the four kinds.
    upload_fields, prediction_fields = _insert_fields(Upload), _prediction_insert_fields()
    upload_table, prediction_table = _quote(Upload._meta.db_table), _quote(Prediction._meta.db_table)
    image = _quote(Upload._meta.get_field("image").column)
    upload_id = _quote(Prediction._meta.get_field("upload").column)
    upload_columns = ", ".join(_quote(field.column) for field in upload_fields)
    prediction_columns = ", ".join(_quote(field.column) for field in prediction_fields)
    prediction_values = ", ".join(f"w.{_quote(field.column)}" for field in prediction_fields)
    published_at, created_at = _quote("published_at"), _quote("created_at")
    by_image = _unnest(
        prediction_fields, alias="w", leading=[("upload_image", "text"), ("published", "boolean")], single=single
    )
    use_table, use_owner = _quote(StorageUse._meta.db_table), _quote(StorageUse._meta.pk.column)
    use_bytes = _quote(StorageUse._meta.get_field("bytes").column)
    # The owner's bytes grow only while they stay within the quota; the uploads are inserted only if they did. The
    # row lock taken here serialises one owner's concurrent uploads until each commits, so none overshoots.
    # Predictions find their upload by its stored file name, which is unique to it.
    return (
        f"WITH q AS (INSERT INTO {use_table} AS s ({use_owner}, {use_bytes}) "
        f"SELECT %s::{StorageUse._meta.pk.db_type(connection)}, %s::bigint WHERE %s::bigint <= %s::bigint "
        f"ON CONFLICT ({use_owner}) DO UPDATE SET {use_bytes} = s.{use_bytes} + excluded.{use_bytes} "
        f"WHERE s.{use_bytes} + excluded.{use_bytes} <= %s::bigint RETURNING 1), "
        f"u AS (INSERT INTO {upload_table} ({upload_columns}) "
        f"SELECT * FROM {_unnest(upload_fields, alias='v', single=single)} WHERE EXISTS (SELECT FROM q) "
        f"RETURNING id, {image}), "
        f"p AS (INSERT INTO {prediction_table} ({upload_id}, {prediction_columns}, {published_at}) "
        f"SELECT u.id, {prediction_values}, CASE WHEN w.published THEN {_database_now()} END "
        f"FROM u JOIN {by_image} ON w.upload_image = u.{image} "
        f"RETURNING id, {upload_id}, {created_at}) "
        f"{_idempotency_key_insert_sql(image=image, upload_id=upload_id) if keyed else ''}"
        f"SELECT u.{image}, u.id, p.id, p.{created_at} FROM u JOIN p ON p.{upload_id} = u.id"
    )


def _idempotency_key_insert_sql(*, image: str, upload_id: str) -> str:
    # Stored only with the uploads, and by the same statement: either both are there or neither. Its unique
    # constraint fails the whole statement when another request stored the key first.
    table = _quote(IdempotencyKey._meta.db_table)
    fields = [IdempotencyKey._meta.get_field(name) for name in ("owner", "key", "fingerprint", "created_at")]
    columns = ", ".join(_quote(field.column) for field in fields)
    owner, key, fingerprint, created_at = (f"%s::{field.db_type(connection)}" for field in fields)
    made = _quote(IdempotencyKey._meta.get_field("prediction_ids").column)
    stored = _quote(IdempotencyKey._meta.get_field("upload_ids").column)
    # The predictions' and uploads' ids in the order of the files, whose names come in the order they were sent.
    in_order = f"ORDER BY array_position(%b::text[], u.{image})"
    return (
        f", k AS (INSERT INTO {table} ({columns}, {made}, {stored}) "
        f"SELECT {owner}, {key}, {fingerprint}, {created_at}, "
        f"to_jsonb(array_agg(p.id {in_order})), to_jsonb(array_agg(u.id {in_order})) "
        f"FROM u JOIN p ON p.{upload_id} = u.id HAVING count(*) > 0) "
    )


def storage_use_grow(*, owner_id: int, by: int, quota_bytes: int) -> bool:
    """Add ``by`` to the owner's upload bytes unless that passes ``quota_bytes``; returns whether it did.

    Through the ORM, in the caller's transaction: for the paths off the hot one.
    """
    StorageUse.objects.get_or_create(owner_id=owner_id)
    return bool(StorageUse.objects.filter(owner_id=owner_id, bytes__lte=quota_bytes - by).update(bytes=F("bytes") + by))


def uploads_with_predictions_insert(
    *,
    uploads: Sequence[Upload],
    predictions: Sequence[Prediction],
    quota_bytes: int,
    idempotency_key: IdempotencyKey | None = None,
) -> bool:
    """Insert one owner's uploads and one prediction for each (``predictions[i]`` for ``uploads[i]``), atomically.

    Adds their sizes to the owner's StorageUse, and inserts nothing, returning
    False, when that would pass ``quota_bytes``. Sets the ids and the values the
    database or ``pre_save`` chose on the objects, as ``bulk_create`` does. The
    predictions' ``created_at``, and the ``published_at`` of those that have
    one, are the database's now, whatever the objects held. On PostgreSQL one
    statement, elsewhere an update and two bulk inserts in a transaction. An unsaved ``idempotency_key`` is inserted with them, naming
    the predictions; when its owner already holds that key, nothing is
    inserted and IntegrityError is raised.
    """
    (owner_id,) = {upload.owner_id for upload in uploads}
    needed = sum(upload.stored_bytes for upload in uploads)
    if connection.vendor != "postgresql":
        with transaction.atomic():
            if not storage_use_grow(owner_id=owner_id, by=needed, quota_bytes=quota_bytes):
                return False
            Upload.objects.bulk_create(uploads)
            for prediction in predictions:
                if prediction.published_at is not None:
                    prediction.published_at = Now()
            Prediction.objects.bulk_create(predictions)
            _published_at_created_at(predictions)
            if idempotency_key is not None:
                idempotency_key.prediction_ids = [prediction.pk for prediction in predictions]
                idempotency_key.upload_ids = [upload.pk for upload in uploads]
                idempotency_key.save(force_insert=True)
        return True
    upload_fields, prediction_fields = _insert_fields(Upload), _prediction_insert_fields()
    names = [upload.image.name for upload in uploads]
    single = len(uploads) == 1
    params = [
        owner_id, needed, needed, quota_bytes, quota_bytes,
        *_rows_params(_column_arrays(upload_fields, uploads, adding=True), single=single),
        *_rows_params([
            names,
            [prediction.published_at is not None for prediction in predictions],
            *_column_arrays(prediction_fields, predictions, adding=True),
        ], single=single),
    ]
    if idempotency_key is not None:
        params += [
            owner_id, idempotency_key.key, idempotency_key.fingerprint,
            idempotency_key._meta.get_field("created_at").get_db_prep_save(idempotency_key.created_at, connection),
            names, names,
        ]
    # A key another request holds fails the statement: inside a caller's transaction, a savepoint keeps that
    # transaction usable for finding out why.
    keyed_in_transaction = idempotency_key is not None and connection.in_atomic_block
    with transaction.atomic() if keyed_in_transaction else nullcontext(), bound_cursor() as cursor:
        cursor.execute(
            _uploads_with_predictions_insert_sql(keyed=idempotency_key is not None, single=single), params
        )
        ids = {name: (upload_pk, prediction_pk, created) for name, upload_pk, prediction_pk, created in cursor.fetchall()}
    if not ids:
        return False
    rows = [ids[name] for name in names]
    if idempotency_key is not None:
        idempotency_key.prediction_ids = [prediction_pk for _, prediction_pk, _ in rows]
        idempotency_key.upload_ids = [upload_pk for upload_pk, _, _ in rows]
    alias = connection.alias
    for upload, prediction, row in zip(uploads, predictions, rows, strict=True):
        upload.pk, prediction.pk, prediction.created_at = row
        prediction.upload = upload
        for obj in (upload, prediction):
            obj._state.adding, obj._state.db = False, alias
    _published_at_created_at(predictions)
    return True


def _published_at_created_at(predictions: Sequence[Prediction]) -> None:
    # Both were the insert's database now; the objects learn the value, in place of the expression or the host's
    # time they held.
    for prediction in predictions:
        if prediction.published_at is not None:
            prediction.published_at = prediction.created_at


# finished_at is not among them: the statement writes the database's now, whatever the worker's clock said.
_RESULT_FIELDS = [
    "status", "checkpoint", "digit", "confidence", "probabilities", "input_pixels", "device",
    "queue_ms", "compute_ms", "error", "several_digits",
]


def prediction_results_update(*, predictions: Sequence[Prediction], notify_channel: str) -> set[int]:
    """Store the result fields of finished predictions, atomically; returns the ids stored.

    Only a prediction still running under the claim that produced the result is
    written: a worker that stalled past the stale limit, while another claimed
    the prediction again, must not overwrite the newer claim's result. On
    PostgreSQL one statement, which also NOTIFYs ``notify_channel`` with the ids
    stored (delivered when, and only if, it commits). Elsewhere one parametrised
    UPDATE per row in a transaction. ``finished_at`` is the database's now, set
    on the predictions stored, as their ``started_at`` was.
    """
    fields = _result_fields()
    columns = _column_arrays(fields, predictions, adding=False)
    ids = [prediction.pk for prediction in predictions]
    claims = [prediction.attempts for prediction in predictions]
    if connection.vendor == "postgresql":
        single = len(predictions) == 1
        with bound_cursor() as cursor:
            cursor.execute(
                _results_update_notify_sql(single=single),
                [*_rows_params([ids, claims, *columns], single=single), Prediction.Status.RUNNING, notify_channel],
            )
            row = cursor.fetchone()
        stored, finished_at = (set(row[0]), row[1]) if row else (set(), None)
    else:
        stored, finished_at = _results_update_one_by_one(ids=ids, claims=claims, columns=columns, fields=fields)
    for prediction in predictions:
        if prediction.pk in stored:
            prediction.finished_at = finished_at
    return stored


def _results_update_one_by_one(*, ids: list[int], claims: list[int], columns: list[list], fields: list[Field]):
    table = _quote(Prediction._meta.db_table)
    assignments = ", ".join(f"{_quote(field.column)} = %s" for field in fields)
    running = Prediction.Status.RUNNING
    with transaction.atomic(), connection.cursor() as cursor:
        # SQLite runs one writer at a time: the claims still held now are the rows the guarded UPDATE changes.
        cursor.execute(
            f"SELECT id, attempts, {_database_now()} FROM {table} WHERE id IN ({_placeholders(ids)}) AND status = %s",
            [*ids, running],
        )
        rows = cursor.fetchall()
        held = {(pk, attempts) for pk, attempts, _ in rows}
        # One time for the whole batch, as PostgreSQL's one statement writes.
        now = rows[0][2] if rows else None
        cursor.executemany(
            f"UPDATE {table} SET {assignments}, finished_at = %s WHERE id = %s AND status = %s AND attempts = %s",
            [[*values, now, pk, running, attempts] for *values, pk, attempts in zip(*columns, ids, claims)],
        )
    # SQLite keeps times as UTC text.
    finished_at = dt.datetime.fromisoformat(now).replace(tzinfo=dt.UTC) if now else None
    return {pk for pk, attempts in zip(ids, claims) if (pk, attempts) in held}, finished_at


def _result_fields() -> list[Field]:
    return [Prediction._meta.get_field(name) for name in _RESULT_FIELDS]


@functools.cache
def _results_update_notify_sql(*, single: bool) -> str:
    table = _quote(Prediction._meta.db_table)
    fields = _result_fields()
    assignments = ", ".join(f"{_quote(field.column)} = v.{_quote(field.column)}" for field in fields)
    claimed = _unnest(fields, alias="v", leading=[("id", "bigint"), ("claim", "integer")], single=single)
    return (
        f"WITH done AS (UPDATE {table} SET {assignments}, finished_at = {_database_now()} FROM {claimed} "
        f"WHERE {table}.id = v.id AND {table}.status = %s AND {table}.attempts = v.claim RETURNING {table}.id) "
        f"SELECT array_agg(id), {_database_now()}, pg_notify(%s, string_agg(id::text, ',')) FROM done "
        f"HAVING count(*) > 0"
    )


def _placeholders(values: Sequence) -> str:
    return ", ".join(["%s"] * len(values))


class PredictionSummary(NamedTuple):
    """A prediction as the API represents it: its row without the model input, and its upload's original name."""

    pk: int
    status: str
    digit: int | None
    confidence: float | None
    probabilities: list | None
    # Whether the row holds a model input: the 784 bytes themselves are only served as a picture.
    has_input: bool
    several_digits: bool
    error: str
    feedback: int | None
    checkpoint_id: int | None
    device: str
    queue_ms: float | None
    compute_ms: float | None
    upload_id: int
    original_name: str
    created_at: dt.datetime
    started_at: dt.datetime | None
    finished_at: dt.datetime | None


# PredictionSummary's columns that are the prediction's own fields, by name; the others are written in the statement.
_SUMMARY_FIELDS = [name for name in PredictionSummary._fields if name not in ("pk", "has_input", "original_name")]


@functools.cache
def _prediction_summaries_select() -> str:
    prediction, upload = _quote(Prediction._meta.db_table), _quote(Upload._meta.db_table)
    pixels = _quote(Prediction._meta.get_field("input_pixels").column)
    written = {
        "pk": f"p.{_quote(Prediction._meta.pk.column)}",
        "has_input": f"COALESCE(LENGTH(p.{pixels}), 0) > 0",
        "original_name": f"u.{_quote(Upload._meta.get_field('original_name').column)}",
        **{name: f"p.{_quote(Prediction._meta.get_field(name).column)}" for name in _SUMMARY_FIELDS},
    }
    columns = ", ".join(written[name] for name in PredictionSummary._fields)
    upload_id = _quote(Prediction._meta.get_field("upload").column)
    return f"SELECT {columns} FROM {prediction} p JOIN {upload} u ON u.{_quote(Upload._meta.pk.column)} = p.{upload_id}"


def prediction_summaries_get(*, prediction_ids: Sequence[int]) -> dict[int, PredictionSummary]:
    """The current rows of these predictions by id, as the API represents them (``PredictionSummary``).

    Only what the representation shows, each column converted as the ORM converts its field, into tuples: a
    model instance a row, built from every column (the model input's 784 bytes among them), cost twice as much.
    """
    if not prediction_ids:
        return {}
    wrapper = connections[connection.alias]
    condition, params = among(f"p.{_quote(Prediction._meta.pk.column)}", prediction_ids, sql_type="bigint")
    with bound_cursor() as cursor:
        cursor.execute(f"{_prediction_summaries_select()} WHERE {condition}", params)
        rows = cursor.fetchall()
    converters = converters_cached(wrapper, PredictionSummary, lambda: _summary_converters_find(wrapper))
    if converters:
        rows = [converted_row(row, converters, wrapper) for row in rows]
    return {row[0]: PredictionSummary._make(row) for row in rows}


def _summary_converters_find(wrapper) -> list[tuple[int, list, object]]:
    """(position, converters, expression) for each column the ORM would convert on this database, as its compiler
    does."""
    found = []
    for position, name in enumerate(PredictionSummary._fields):
        if name == "has_input":
            # SQLite writes a comparison as 0 or 1.
            if wrapper.vendor != "postgresql":
                found.append((position, [_as_bool], None))
            continue
        model = Upload if name == "original_name" else Prediction
        field = model._meta.get_field("id" if name == "pk" else name)
        column = field.get_col(model._meta.db_table)
        converters = wrapper.ops.get_db_converters(column) + column.get_db_converters(wrapper)
        if converters:
            found.append((position, converters, column))
    return found


def _as_bool(value, expression, connection) -> bool:
    return bool(value)


def predictions_finished_ids(*, prediction_ids: Sequence[int]) -> set[int]:
    """Which of these predictions are done, failed or gone (deleted with their upload): none of them will change.

    One statement that skips the ORM's compiler. A deleted one counts as finished: waiting for it would last
    until the waiter's timeout.
    """
    if not prediction_ids:
        return set()
    table = _quote(Prediction._meta.db_table)
    condition, params = among("id", prediction_ids, sql_type="bigint")
    with bound_cursor() as cursor:
        cursor.execute(
            f"SELECT id FROM {table} WHERE {condition} AND status NOT IN ({_placeholders(Prediction.FINISHED)})",
            [*params, *Prediction.FINISHED],
        )
        unfinished = {pk for (pk,) in cursor.fetchall()}
    return set(prediction_ids) - unfinished


def predictions_claim(
    *, prediction_ids: Sequence[int], limit: int, stale_after_s: float, max_attempts: int, token: uuid.UUID
) -> tuple[list[Prediction], int | None]:
    """Mark up to ``limit`` predictions running in one statement: ``prediction_ids`` first, then the oldest pending.

    Of ``prediction_ids``, those pending, or running for more than ``stale_after_s``
    seconds with fewer than ``max_attempts`` claims, qualify. Both the start it
    records and the staleness it judges are the database's clock, as every
    other worker and the sweeper read it: a worker whose own clock runs off
    neither takes over live claims nor has its own taken. The claimed rows carry
    ``token`` (``claim_token``), by which the caller finds them again if the
    answer is lost. When one of them was claimed
    before and not handed back (its worker died or ran out of time), the claim
    takes that one prediction alone: an image that kills its worker then fails by itself, not
    the batch it rode in. The materialised CTEs pick and lock the rows exactly
    once (SKIP LOCKED on PostgreSQL; SQLite runs one writer at a time); the
    UPDATE marks them, counts the attempt and returns them with their upload's
    image name (``upload_image``), in claim order, and the id of the checkpoint
    active now; each also carries that checkpoint's sha256
    (``active_checkpoint_sha256``), which tells a worker whether the model it
    holds for that id is still the one.

    The oldest pending are found by a plain index scan in ``created_at`` order.
    Each claim leaves the claimed rows' old versions dead in the status index;
    an index scan marks such entries dead as it passes them, so the next claim
    skips them. The single OR-ed condition this replaced was planned as a bitmap
    scan, which marks nothing: with autovacuum behind, every claim re-read every
    dead entry (5,000 after one benchmark run, 1 ms a claim; 0.08 ms now).
    Hence it is never prepared: a prepared statement's generic plan, which
    knows neither how many ids there are nor which statuses, can be that
    bitmap scan again.
    """
    prediction, upload = _quote(Prediction._meta.db_table), _quote(Upload._meta.db_table)
    checkpoint = _quote(Checkpoint._meta.db_table)
    ids = _placeholders(prediction_ids)
    # Only the prediction rows are locked; their uploads stay free for everyone else. Every row locked is
    # claimed: a row locked and left would be skipped by the claim of its own message, and nothing else would
    # take it until the sweeper. So "others" only fills what "own" left of the limit.
    lock = " FOR UPDATE OF p SKIP LOCKED" if connection.features.has_select_for_update_skip_locked else ""
    # A retry claims one row: "own" keeps the oldest candidate and "others" takes none. The candidates it locked
    # and left are this message's own, which its next claim takes.
    sql = (
        f"WITH candidates AS MATERIALIZED (SELECT p.id, p.created_at, p.attempts FROM {prediction} p "
        f"WHERE p.id IN ({ids}) AND (p.status = %s OR (p.status = %s AND p.started_at < {_database_seconds_ago()} "
        f"AND p.attempts < %s)) "
        f"ORDER BY p.created_at, p.id LIMIT %s{lock}), "
        f"own AS MATERIALIZED (SELECT id FROM candidates ORDER BY created_at, id "
        f"LIMIT (SELECT CASE WHEN max(attempts) > 0 THEN 1 ELSE %s END FROM candidates)), "
        f"others AS MATERIALIZED (SELECT p.id FROM {prediction} p "
        f"WHERE p.status = %s AND p.id NOT IN ({ids}) ORDER BY p.created_at, p.id "
        f"LIMIT (SELECT CASE WHEN max(attempts) > 0 THEN 0 ELSE %s - count(*) END FROM candidates){lock}) "
        f"UPDATE {prediction} SET status = %s, started_at = {_database_now()}, claim_token = %s, "
        f"attempts = attempts + 1 "
        f"WHERE id IN (SELECT id FROM own UNION ALL SELECT id FROM others) "
        f"RETURNING {model_columns(Prediction, alias=prediction)}, "
        f"(SELECT u.image FROM {upload} u WHERE u.id = {prediction}.upload_id), "
        f"(SELECT c.id FROM {checkpoint} c WHERE c.is_active), "
        f"(SELECT c.sha256 FROM {checkpoint} c WHERE c.is_active)"
    )
    pending, running = Prediction.Status.PENDING, Prediction.Status.RUNNING
    claimed_by = Prediction._meta.get_field("claim_token").get_db_prep_value(token, connection)
    params = [
        *prediction_ids, pending, running, stale_after_s, max_attempts, limit, limit,
        pending, *prediction_ids, limit, running, claimed_by,
    ]
    # Django's cursor, which sends the values in the text: never prepared (above).
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        batch = model_rows(
            Prediction, cursor.fetchall(), extra=("upload_image", "active_checkpoint_id", "active_checkpoint_sha256")
        )
    # RETURNING keeps no order.
    ours = set(prediction_ids)
    batch.sort(key=lambda p: (p.pk not in ours, p.created_at, p.pk))
    return batch, (batch[0].active_checkpoint_id if batch else None)


def checkpoint_unchanged(*, checkpoint_id: int, sha256: str) -> bool:
    """Whether this checkpoint's row still exists and names a file with this digest: one primary-key lookup.

    For a caller that has no digest read with the checkpoint's id (the claim reads one); hand-written, as the ORM
    takes several times longer to build the query than the database takes to answer it.
    """
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT 1 FROM {_quote(Checkpoint._meta.db_table)} WHERE id = %s AND sha256 = %s", [checkpoint_id, sha256]
        )
        return cursor.fetchone() is not None
