"""The database's clock writes times that compare, as parameters, with themselves and with Python's."""
import datetime as dt

import pytest
from django.db import connection
from django.utils import timezone

from classifier.models import Prediction
from mnistsite.database_now import Now
from training.models import TrainingRun

pytestmark = pytest.mark.django_db


def _prediction(user, **fields):
    from classifier.models import Upload

    upload = Upload.objects.create(owner=user, image="uploads/x.png", format="PNG", size=1, sha256="0" * 64,
                                   width=28, height=28)
    return Prediction.objects.create(upload=upload, **fields)


def test_a_time_the_database_wrote_is_found_again_by_its_value_read_back(user):
    prediction = _prediction(user)  # created_at from the column's default
    Prediction.objects.filter(pk=prediction.pk).update(published_at=Now())
    created_at, published_at = Prediction.objects.filter(pk=prediction.pk).values_list(
        "created_at", "published_at").get()

    assert Prediction.objects.filter(pk=prediction.pk, created_at=created_at, published_at=published_at).exists()
    assert not Prediction.objects.filter(pk=prediction.pk, created_at__gt=created_at).exists()
    assert not Prediction.objects.filter(pk=prediction.pk, created_at__lt=created_at).exists()


@pytest.mark.skipif("connection.vendor != 'sqlite'", reason="the text SQLite keeps a time as")
@pytest.mark.parametrize("fraction", ["123", "000"])
def test_times_sqlites_clock_wrote_before_are_rewritten_as_python_writes_them(fraction):
    from django.apps import apps

    from mnistsite.database_now import sqlite_times_rewrite

    run = TrainingRun.objects.create(epochs=1, batch_size=64, learning_rate=0.01)
    table = connection.ops.quote_name(TrainingRun._meta.db_table)
    with connection.cursor() as cursor:
        cursor.execute(f"UPDATE {table} SET created_at = %s, finished_at = %s WHERE id = %s",
                       [f"2026-12-06 07:01:33.{fraction}", "2026-12-06 07:01:34.250000", run.pk])
    sqlite_times_rewrite(models=[apps.get_model("training", "TrainingRun")], connection=connection)

    run.refresh_from_db()
    micro = int(fraction) * 1000
    expected = timezone.make_aware(dt.datetime(2026, 12, 6, 7, 1, 33, micro), dt.timezone.utc)
    assert TrainingRun.objects.filter(pk=run.pk, created_at=expected).exists()
    assert run.finished_at == expected.replace(second=34, microsecond=250000)
