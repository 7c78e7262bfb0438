"""Column arrays are what the ORM's value-by-value path gives."""
from __future__ import annotations

import datetime as dt
import random
import uuid

import pytest
from django.db import connection, models
from django.utils import timezone
from django.utils.safestring import mark_safe

from classifier import statements
from classifier.models import Prediction, Upload

pytestmark = pytest.mark.django_db


def _column_arrays_value_by_value(fields, objs, *, adding: bool) -> list[list]:
    # The plain path: every value through its field's get_db_prep_save.
    return [
        [field.get_db_prep_save(value, connection) for value in statements._saved_values(field, objs, adding=adding)]
        for field in fields
    ]


def _same_arrays(new: list[list], old: list[list]) -> None:
    assert len(new) == len(old)
    for column, expected in zip(new, old, strict=True):
        assert len(column) == len(expected)
        for value, other in zip(column, expected, strict=True):
            assert type(value) is type(other)
            if hasattr(value, "obj"):  # psycopg's wrappers (Jsonb) compare by identity
                assert value.obj == other.obj
            else:
                assert value == other


_VALUES = {
    models.CharField: ["", "a", "ü" * 40, mark_safe("<b>"), Upload.Source.API, Prediction.Status.DONE, None],
    models.TextField: ["", "line\nline", mark_safe("x"), Prediction.Status.FAILED, None],
    models.FloatField: [0.0, -1.5, 1e300, float("inf"), 3.25, None],
    models.BooleanField: [True, False, None],
}


def test_the_values_sent_as_they_are_are_their_own_database_values_for_their_fields():
    for field_class, values in _VALUES.items():
        field = field_class(null=True, max_length=255) if field_class is models.CharField else field_class(null=True)
        for value in values:
            assert statements._unchanged(field, [value]), (field_class, value)
            assert field.get_db_prep_save(value, connection) is value, (field_class, value)
    # Values these fields convert are converted.
    assert not statements._unchanged(models.FloatField(), [1])
    assert not statements._unchanged(models.BooleanField(), [1])
    assert not statements._unchanged(models.CharField(), [1])
    assert not statements._unchanged(models.IntegerField(), [1])
    assert not statements._unchanged(models.EmailField(), ["a@b.c"])


def _random_objects(rng: random.Random, count: int) -> tuple[list[Upload], list[Prediction]]:
    from mnistsite.database_now import Now

    uploads, predictions = [], []
    for i in range(count):
        upload = Upload(
            owner_id=rng.choice([1, 2]), original_name=rng.choice(["", "a.png", mark_safe("m.png"), f"{i}.png"]),
            format=rng.choice(["PNG", "JPEG"]), size=rng.randrange(10**6), stored_size=rng.choice([None, i, 2**31]),
            width=rng.randrange(5000), height=rng.choice([0, 28, i]), sha256=f"{rng.getrandbits(256):064x}",
            source=rng.choice(list(Upload.Source) + ["api"]), sample_set=rng.choice(["", "mnist"]),
            label=rng.choice([None, 0, 9]), created_at=timezone.now() - dt.timedelta(seconds=rng.random()),
        )
        upload.image.name = f"uploads/t/{uuid.uuid4().hex}.png"
        uploads.append(upload)
        predictions.append(Prediction(
            upload=upload, checkpoint_id=rng.choice([None, 3]),
            status=rng.choice(list(Prediction.Status) + ["done"]), digit=rng.choice([None, 0, 7]),
            confidence=rng.choice([None, rng.random(), 1.0]),
            probabilities=rng.choice([None, [rng.random() for _ in range(10)]]),
            input_pixels=rng.choice([None, b"", rng.randbytes(784)]), device=rng.choice(["", "cpu", "cuda:0"]),
            queue_ms=rng.choice([None, rng.random() * 100]), compute_ms=rng.choice([None, 2.5]),
            error=rng.choice(["", "No digit was found in this image: blank"]), several_digits=rng.choice([True, False]),
            feedback=rng.choice([None, 4]), publish_attempts=rng.choice([0, 1]), attempts=rng.choice([0, 1, 2]),
            published_at=rng.choice([None, Now()]), claim_token=rng.choice([None, uuid.uuid4()]),
        ))
    return uploads, predictions


def test_column_arrays_are_every_value_prepared_one_by_one_for_inserts_and_results():
    rng = random.Random(5)
    for count in (1, 2, 7, 32):
        for _ in range(10):
            uploads, predictions = _random_objects(rng, count)
            for fields, objs, adding in (
                (statements._insert_fields(Upload), uploads, True),
                (statements._prediction_insert_fields(), predictions, True),
                (statements._result_fields(), predictions, False),
            ):
                _same_arrays(
                    statements._column_arrays(fields, objs, adding=adding),
                    _column_arrays_value_by_value(fields, objs, adding=adding),
                )
