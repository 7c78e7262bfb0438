"""Selectors: the queries behind the history page, read through the indexes meant for them."""
import io

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from classifier import selectors, services
from classifier.models import Prediction

pytestmark = pytest.mark.django_db


def _plan(sql: str, params=()) -> str:
    with connection.cursor() as cursor:
        cursor.execute(f"EXPLAIN {sql}", params)
        return "\n".join(row[0] for row in cursor.fetchall())


def _assert_newest_found_through_its_index(plan: str) -> None:
    # The tables have no statistics, as on a database never analysed: with the upload's id alone indexed, the
    # planner walked every prediction of the site by created_at for each upload (minutes for a long history).
    assert "prediction_upload_newest" in plan, plan
    assert "classifier_prediction_created_at" not in plan, plan


@pytest.fixture
def three_uploads(user, digit_png):
    if connection.vendor != "postgresql":
        pytest.skip("the plan asked of PostgreSQL")
    files = [(io.BytesIO(digit_png(i)), f"{i}.png") for i in range(3)]
    return services.predictions_submit(owner=user, files=files, source="file")


@pytest.mark.parametrize("filters", [{"digit": 3}, {"status": "failed"}])
def test_a_filtered_history_finds_each_uploads_newest_prediction_through_the_index_for_it(user, three_uploads, filters):
    queryset = selectors.upload_list_for_user(user=user, filters=selectors.UploadFilters(**filters))
    _assert_newest_found_through_its_index(_plan(*queryset.values_list("pk", flat=True)[:20].query.sql_with_params()))


def test_a_history_page_reads_its_rows_newest_predictions_through_the_index_for_them(three_uploads):
    with CaptureQueriesContext(connection) as queries:
        selectors.upload_list_page(ids=[prediction.upload_id for prediction in three_uploads])
    (query,) = queries.captured_queries
    _assert_newest_found_through_its_index(_plan(query["sql"]))


def test_the_predictions_of_new_uploads_leave_out_those_deleted_meanwhile_and_keep_the_names_order(user, digit_png):
    files = [(io.BytesIO(digit_png(i)), f"{i}.png") for i in range(3)]
    first, deleted, last = services.predictions_submit(owner=user, files=files, source="file")
    names = [prediction.upload.image.name for prediction in (last, deleted, first)]
    services.upload_delete(upload=deleted.upload)
    services.predictions_rerun(uploads=[first.upload], publish=False)  # a newer one, not stored with the upload

    assert [p.pk for p in selectors.predictions_of_new_uploads(names=names)] == [last.pk, first.pk]


def test_a_retry_makes_nothing_for_a_prediction_that_did_not_fail_or_was_replaced_and_answers_the_newest(
    user, digit_png
):
    upload = services.upload_create(owner=user, file=io.BytesIO(digit_png(0)), source="file")
    (pending,) = services.predictions_create(uploads=[upload], publish=False)
    assert selectors.prediction_retry_answer(prediction=pending) == pending

    Prediction.objects.filter(pk=pending.pk).update(status=Prediction.Status.FAILED, error="The worker was lost.")
    failed = Prediction.objects.get(pk=pending.pk)
    assert selectors.prediction_retry_answer(prediction=failed) is None

    (newer,) = services.predictions_rerun(uploads=[upload], publish=False)
    assert selectors.prediction_retry_answer(prediction=failed) == newer
