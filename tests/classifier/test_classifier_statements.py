"""Hand-written statements: reading predictions as the ORM would, and claiming them without stranding any."""
from __future__ import annotations

import datetime as dt
import io
import re
import threading
import uuid

import pytest
from django.db import connection
from django.utils import timezone

from classifier import services, statements
from classifier.models import Prediction
from tests.locks import held_open

pytestmark = pytest.mark.django_db


@pytest.fixture
def three(user, digit_png) -> list[Prediction]:
    upload = services.upload_create(owner=user, file=io.BytesIO(digit_png(1)), source="file")
    return services.predictions_create(uploads=[upload] * 3, publish=False)


def test_prediction_summaries_hold_what_the_orm_reads_of_each_row_and_of_its_upload(three):
    done, failed, pending = three
    Prediction.objects.filter(pk=done.pk).update(
        status="done", digit=4, confidence=0.75, probabilities=[0.75] + [0.25 / 9] * 9, input_pixels=bytes(784),
        several_digits=True, feedback=9, device="cpu", queue_ms=2.5, compute_ms=1.25, started_at=timezone.now(),
        finished_at=timezone.now(),
    )
    Prediction.objects.filter(pk=failed.pk).update(status="failed", error="No digit was found.", input_pixels=b"")

    summaries = statements.prediction_summaries_get(prediction_ids=[p.pk for p in three] + [10**12])

    assert set(summaries) == {done.pk, failed.pk, pending.pk}
    for prediction in Prediction.objects.select_related("upload").filter(pk__in=summaries):
        summary = summaries[prediction.pk]
        for name in statements.PredictionSummary._fields:
            expected = {
                "has_input": bool(prediction.input_pixels), "original_name": prediction.upload.original_name,
            }.get(name, getattr(prediction, name, None))
            assert (getattr(summary, name), type(getattr(summary, name))) == (expected, type(expected)), name
    assert summaries[done.pk].has_input and not summaries[failed.pk].has_input
    assert summaries[done.pk].probabilities[0] == 0.75 and summaries[done.pk].several_digits is True


def test_predictions_finished_ids_are_the_done_and_failed_ones(three):
    done, failed, running = three
    Prediction.objects.filter(pk=done.pk).update(status="done")
    Prediction.objects.filter(pk=failed.pk).update(status="failed")
    Prediction.objects.filter(pk=running.pk).update(status="running")

    assert statements.predictions_finished_ids(prediction_ids=[p.pk for p in three]) == {done.pk, failed.pk}
    assert statements.predictions_finished_ids(prediction_ids=[running.pk]) == set()


def test_asking_for_no_ids_sends_no_query(django_assert_num_queries):
    with django_assert_num_queries(0):
        assert statements.prediction_summaries_get(prediction_ids=[]) == {}
        assert statements.predictions_finished_ids(prediction_ids=[]) == set()


def _claim(prediction_ids: list[int], *, limit: int, max_attempts: int = 3) -> list[int]:
    batch, _ = statements.predictions_claim(
        prediction_ids=prediction_ids, limit=limit, stale_after_s=3600, max_attempts=max_attempts, token=uuid.uuid4()
    )
    return sorted(p.pk for p in batch)


def _lose_worker(prediction_ids: list[int], *, attempts: int) -> None:
    """As a worker that claimed them and died long ago leaves them."""
    Prediction.objects.filter(pk__in=prediction_ids).update(
        status="running", started_at=timezone.now() - dt.timedelta(days=1), attempts=attempts
    )


@pytest.mark.django_db(transaction=True)
def test_a_claim_locks_only_the_predictions_it_takes(user, digit_png):
    # Were a full claim to lock waiting predictions it does not take, the claim of their own message, running
    # meanwhile, would skip them and end; nothing would take them until the sweeper.
    if connection.vendor != "postgresql":
        pytest.skip("row locks that others skip are PostgreSQL's; SQLite runs one writer at a time")
    upload = services.upload_create(owner=user, file=io.BytesIO(digit_png(1)), source="file")
    first = [p.pk for p in services.predictions_create(uploads=[upload] * 2, publish=False)]
    second = [p.pk for p in services.predictions_create(uploads=[upload] * 2, publish=False)]
    claimed_first = []
    with held_open(lambda: claimed_first.extend(_claim(first, limit=2))):
        claimed_second = _claim(second, limit=2)

    assert (claimed_first, claimed_second) == (first, second)


def test_a_claim_takes_its_own_predictions_first_then_the_oldest_waiting_up_to_the_limit(user, digit_png):
    upload = services.upload_create(owner=user, file=io.BytesIO(digit_png(1)), source="file")
    waiting = [p.pk for p in services.predictions_create(uploads=[upload] * 3, publish=False)]
    own = [p.pk for p in services.predictions_create(uploads=[upload] * 2, publish=False)]

    assert _claim(own, limit=3) == sorted([*own, waiting[0]])
    assert _claim(own, limit=3) == waiting[1:]
    assert _claim(own, limit=3) == []


def test_a_batch_taken_up_again_after_its_worker_died_is_claimed_one_prediction_at_a_time(user, digit_png):
    # If one image kills its worker, the rest of its batch and the predictions waiting behind it must not
    # go down with it again.
    upload = services.upload_create(owner=user, file=io.BytesIO(digit_png(1)), source="file")
    waiting = [p.pk for p in services.predictions_create(uploads=[upload] * 2, publish=False)]
    own = [p.pk for p in services.predictions_create(uploads=[upload] * 3, publish=False)]
    _lose_worker(own, attempts=1)

    assert [_claim(own, limit=5) for _ in own] == [[pk] for pk in own]
    assert set(Prediction.objects.filter(pk__in=own).values_list("attempts", flat=True)) == {2}
    # With none of its own left to retry, a claim tops up with the waiting ones again.
    assert _claim(own, limit=5) == waiting
    assert set(Prediction.objects.filter(pk__in=waiting).values_list("attempts", flat=True)) == {1}


def test_a_prediction_that_lost_its_worker_too_often_is_not_claimed_again(user, digit_png):
    upload = services.upload_create(owner=user, file=io.BytesIO(digit_png(1)), source="file")
    (prediction,) = services.predictions_create(uploads=[upload], publish=False)
    _lose_worker([prediction.pk], attempts=3)

    assert _claim([prediction.pk], limit=5, max_attempts=3) == []
    assert _claim([prediction.pk], limit=5, max_attempts=4) == [prediction.pk]


def _claimed(prediction_ids: list[int], *, stale_after_s: float = 3600) -> list[Prediction]:
    batch, _ = statements.predictions_claim(
        prediction_ids=prediction_ids, limit=5, stale_after_s=stale_after_s, max_attempts=3, token=uuid.uuid4()
    )
    return batch


def _finished_as(prediction: Prediction, digit: int) -> Prediction:
    prediction.status, prediction.digit, prediction.finished_at = "done", digit, timezone.now()
    return prediction


def test_a_stalled_workers_result_does_not_overwrite_the_claim_that_took_its_prediction_over(user, digit_png):
    upload = services.upload_create(owner=user, file=io.BytesIO(digit_png(1)), source="file")
    (prediction,) = services.predictions_create(uploads=[upload], publish=False)
    (stalled,) = _claimed([prediction.pk])
    # The first worker stalled past the stale limit; the prediction was claimed again and finished.
    Prediction.objects.filter(pk=prediction.pk).update(started_at=timezone.now() - dt.timedelta(days=1))
    (taken_over,) = _claimed([prediction.pk])
    assert statements.prediction_results_update(predictions=[_finished_as(taken_over, 3)], notify_channel="x") == {
        prediction.pk}

    # The stalled worker wakes up with its own, older result.
    assert statements.prediction_results_update(predictions=[_finished_as(stalled, 8)], notify_channel="x") == set()
    prediction.refresh_from_db()
    assert (prediction.status, prediction.digit, prediction.attempts) == ("done", 3, 2)


@pytest.mark.django_db(transaction=True)
def test_uploads_sent_at_once_by_one_owner_never_take_them_past_the_quota(user, digit_png, settings):
    from classifier.models import StorageUse, Upload
    from tests.classifier.fixtures import stored_size

    settings.UPLOAD_QUOTA_MB = 1
    image = digit_png(0)
    size = stored_size(image)
    # Room for three more of these, not four.
    StorageUse.objects.create(owner=user, bytes=2**20 - 3 * size - size // 2)
    start, outcomes = threading.Barrier(6), []

    def upload() -> None:
        try:
            start.wait(10)
            services.predictions_submit(owner=user, files=[(io.BytesIO(image), "0.png")], source="file")
            outcomes.append("stored")
        except services.UploadQuotaError:
            outcomes.append("refused")
        finally:
            connection.close()

    threads = [threading.Thread(target=upload) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert sorted(outcomes) == ["refused"] * 3 + ["stored"] * 3
    assert Upload.objects.count() == 3
    assert StorageUse.objects.get(owner=user).bytes == 2**20 - size // 2


def test_a_claim_judges_staleness_by_the_database_clock_less_the_limit_and_marks_its_rows_with_its_token(
    user, digit_png
):
    upload = services.upload_create(owner=user, file=io.BytesIO(digit_png(1)), source="file")
    (prediction,) = services.predictions_create(uploads=[upload], publish=False)
    Prediction.objects.filter(pk=prediction.pk).update(
        status="running", started_at=timezone.now() - dt.timedelta(seconds=100), attempts=1
    )

    assert _claimed([prediction.pk], stale_after_s=120) == []
    token = uuid.uuid4()
    (claimed,), _ = statements.predictions_claim(
        prediction_ids=[prediction.pk], limit=5, stale_after_s=90, max_attempts=3, token=token
    )
    stored = Prediction.objects.get(pk=prediction.pk)
    assert (stored.status, stored.attempts, stored.claim_token) == ("running", 2, token)
    assert abs(stored.started_at - timezone.now()) < dt.timedelta(minutes=1)
    assert claimed.started_at == stored.started_at and claimed.claim_token == token


def test_a_claim_finds_its_own_predictions_by_id_and_the_oldest_waiting_by_a_plain_index_scan(user, digit_png):
    if connection.vendor != "postgresql":
        pytest.skip("the plan asked of PostgreSQL")
    from django.test.utils import CaptureQueriesContext

    upload = services.upload_create(owner=user, file=io.BytesIO(digit_png(1)), source="file")
    own, _waiting = services.predictions_create(uploads=[upload] * 2, publish=False)
    with CaptureQueriesContext(connection) as queries:
        _claim([own.pk], limit=2)
    (claim,) = [query["sql"] for query in queries.captured_queries if query["sql"].startswith("WITH candidates")]
    with connection.cursor() as cursor:
        cursor.execute(f"EXPLAIN {claim}")
        plan = "\n".join(row[0] for row in cursor.fetchall())

    # A bitmap scan marks no dead index entries as it passes them, and every claim would read them all again.
    status_index = Prediction._meta.indexes[0].name
    sections = {section.split("\n")[0]: section for section in re.split(r"\n  (?=\S)", plan)}
    candidates, others = sections["CTE candidates"], sections["CTE others"]
    assert "Index Scan using classifier_prediction_pkey on classifier_prediction p " in candidates, plan
    assert f"Index Scan using {status_index} on classifier_prediction" in others, plan
    assert "Bitmap" not in candidates + others, plan


def _uploads(user, count: int, *, varied: bool):
    """Unsaved uploads, their files named; ``varied``: every column differs from one to the next where it can."""
    from classifier.models import Upload

    uploads = []
    for i in range(count):
        upload = Upload(
            owner=user, original_name=f"{i}.png" if varied else "same.png",
            format="PNG" if i % 2 or not varied else "GIF", size=1000 + i, stored_size=900 + i if varied else None,
            width=28, height=28 + (i if varied else 0), sha256=f"{i:064x}", source="api" if varied and i % 2 else "file",
            sample_set="mnist" if varied and i else "", label=i % 10 if varied else None, created_at=timezone.now(),
        )
        upload.image.name = f"uploads/test/{uuid.uuid4().hex}.png"
        uploads.append(upload)
    return uploads


def _predictions(uploads, *, varied: bool, checkpoint=None) -> list[Prediction]:
    """One unsaved prediction an upload: new ones as an upload makes them, or ``varied`` in every column."""
    from mnistsite.database_now import Now

    if not varied:
        return [Prediction(upload=upload, publish_attempts=1, published_at=Now()) for upload in uploads]
    return [
        Prediction(
            upload=upload, checkpoint=checkpoint if i % 2 else None, status=["pending", "running", "done"][i % 3],
            digit=None if i == 0 else i % 10, confidence=i / 10, probabilities=None if i == 0 else [i / 10] * 10,
            input_pixels=None if i == 0 else bytes([i]) * 784, device=["", "cpu"][i % 2], queue_ms=i * 1.5,
            compute_ms=None if i == 1 else 2.0, error="" if i else "no digit", several_digits=bool(i % 2),
            feedback=None if i < 2 else i, publish_attempts=i, attempts=i % 3,
            started_at=None if i == 0 else timezone.now() - dt.timedelta(seconds=i),
            finished_at=timezone.now() if i == 2 else None, claim_token=uuid.uuid4() if i else None,
            published_at=Now() if i % 2 else None,
        )
        for i, upload in enumerate(uploads)
    ]


@pytest.mark.parametrize("count, varied, keyed", [(3, False, False), (3, True, False), (1, False, False),
                                                  (1, True, True), (4, True, True), (2, False, True)])
def test_a_batch_is_stored_with_every_value_the_objects_hold_whichever_of_its_columns_vary(
    user, count, varied, keyed
):
    from classifier.models import IdempotencyKey, Upload
    from training.models import Checkpoint

    # Only its row: the predictions name it.
    checkpoint = Checkpoint.objects.create(epoch=1, architecture="mlp", path="manual/a.pt", sha256="0" * 64, size=1)
    uploads = _uploads(user, count, varied=varied)
    predictions = _predictions(uploads, varied=varied, checkpoint=checkpoint)
    published = [prediction.published_at is not None for prediction in predictions]
    saved = [{field.attname: getattr(obj, field.attname) for field in statements._insert_fields(type(obj))}
             for obj in [*uploads, *predictions]]
    key = IdempotencyKey(owner=user, key="k", fingerprint="f" * 64, prediction_ids=[], created_at=timezone.now())

    assert statements.uploads_with_predictions_insert(
        uploads=uploads, predictions=predictions, quota_bytes=2**40, idempotency_key=key if keyed else None
    )

    stored = [Upload.objects.get(pk=upload.pk) for upload in uploads] + [
        Prediction.objects.get(pk=prediction.pk) for prediction in predictions
    ]
    for obj, values, fresh in zip([*uploads, *predictions], saved, stored, strict=True):
        for name, value in values.items():
            if name in ("created_at", "published_at", "upload_id") and isinstance(obj, Prediction):
                continue
            got = getattr(fresh, name)
            assert (bytes(got) if isinstance(got, memoryview) else got) == value, name
    for prediction, fresh, was_published in zip(predictions, stored[count:], published, strict=True):
        assert fresh.upload_id == prediction.upload.pk and fresh.created_at == prediction.created_at
        assert fresh.published_at == (fresh.created_at if was_published else None) == prediction.published_at
    if keyed:
        stored_key = IdempotencyKey.objects.get(owner=user, key="k")
        assert stored_key.prediction_ids == [prediction.pk for prediction in predictions]
        assert stored_key.upload_ids == [upload.pk for upload in uploads]


def test_a_batch_past_the_quota_stores_nothing(user):
    from classifier.models import StorageUse, Upload

    uploads = _uploads(user, 2, varied=True)

    assert not statements.uploads_with_predictions_insert(
        uploads=uploads, predictions=_predictions(uploads, varied=True), quota_bytes=1000
    )
    assert not Upload.objects.filter(owner=user).exists()
    assert StorageUse.objects.filter(owner=user, bytes__gt=0).count() == 0


def test_the_values_read_for_an_insert_are_what_each_fields_pre_save_returns():
    from django.apps import apps
    from django.db import models

    for model in apps.get_models():
        obj = model()
        for field in model._meta.concrete_fields:
            if statements._pre_save_reads_attribute(field):
                assert statements._saved_values(field, [obj], adding=True) == [field.pre_save(obj, add=True)], field
    assert not statements._pre_save_reads_attribute(models.DateTimeField(auto_now_add=True))
    assert not statements._pre_save_reads_attribute(models.DateField(auto_now=True))
    assert not statements._pre_save_reads_attribute(models.FileField())
