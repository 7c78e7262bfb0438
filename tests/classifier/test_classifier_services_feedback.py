"""The feedback service, run in-process against the real database."""
import io

import pytest
from django.db import connection

from classifier import selectors, services
from classifier.models import Prediction, Upload

pytestmark = pytest.mark.django_db


def test_feedback_is_recorded_and_validated(user, digit_png):
    upload = services.upload_create(owner=user, file=io.BytesIO(digit_png(0)), source="file")
    (prediction,) = services.predictions_create(uploads=[upload], publish=False)
    services.prediction_feedback_set(prediction=prediction, digit=4)
    assert Prediction.objects.get(pk=prediction.pk).feedback == 4
    with pytest.raises(services.PredictionFeedbackError):
        services.prediction_feedback_set(prediction=prediction, digit=10)
    services.prediction_feedback_set(prediction=prediction, digit=None)
    assert Prediction.objects.get(pk=prediction.pk).feedback is None


def test_feedback_on_a_prediction_deleted_meanwhile_says_it_is_gone(user, digit_png):
    upload = services.upload_create(owner=user, file=io.BytesIO(digit_png(0)), source="file")
    (prediction,) = services.predictions_create(uploads=[upload], publish=False)
    services.upload_delete(upload=Upload.objects.get(pk=upload.pk))  # in another tab, after this one loaded it
    with pytest.raises(Prediction.DoesNotExist):
        services.prediction_feedback_set(prediction=prediction, digit=4)
    assert not Prediction.objects.exists()


def test_feedback_sent_from_a_page_a_re_run_replaced_is_kept_by_the_uploads_newest_prediction(user, digit_png, published):
    upload = services.upload_create(owner=user, file=io.BytesIO(digit_png(7)), source="file")
    shown = services.prediction_create(upload=upload)  # the page its owner has open
    (newest,) = services.predictions_rerun(uploads=[upload])  # staff re-run it meanwhile
    services.prediction_feedback_set(prediction=shown, digit=7)

    # History shows the newest prediction: the digit said must be there, and a later re-run must keep it.
    (listed,) = selectors.upload_list_for_user(user=user, filters=selectors.UploadFilters())
    assert listed.latest_prediction_id == newest.pk and listed.latest_feedback == 7
    assert Prediction.objects.get(pk=shown.pk).feedback == 7
    assert services.predictions_rerun(uploads=[upload])[0].feedback == 7


@pytest.mark.skipif(connection.vendor != "postgresql", reason="row locks and concurrent writers")
@pytest.mark.django_db(transaction=True)  # two connections, each committing by itself
def test_feedback_given_while_a_re_run_replaces_the_prediction_is_carried_to_the_new_one(user, digit_png, published):
    import threading

    upload = services.upload_create(owner=user, file=io.BytesIO(digit_png(7)), source="file")
    shown = services.prediction_create(upload=upload)
    feedback_read, feedback_given, made = threading.Event(), threading.Event(), []

    def pause_after_reading_feedback(execute, sql, params, many, context):
        result = execute(sql, params, many, context)
        if sql.startswith("SELECT") and '"feedback"' in sql and not feedback_read.is_set():
            feedback_read.set()
            # A re-run that rightly holds the upload until it commits makes the feedback wait instead: on after 2 s.
            feedback_given.wait(2)
        return result

    def re_run() -> None:
        try:
            with connection.execute_wrapper(pause_after_reading_feedback):
                made.extend(services.predictions_rerun(uploads=[upload]))
        finally:
            connection.close()

    other = threading.Thread(target=re_run)
    other.start()
    assert feedback_read.wait(5)
    services.prediction_feedback_set(prediction=shown, digit=7)
    feedback_given.set()
    other.join()

    (newest,) = made
    (listed,) = selectors.upload_list_for_user(user=user, filters=selectors.UploadFilters())
    assert listed.latest_prediction_id == newest.pk and listed.latest_feedback == 7


def test_feedback_takes_every_digit_from_0_to_9_and_nothing_else(user, digit_png):
    upload = services.upload_create(owner=user, file=io.BytesIO(digit_png(0)), source="file")
    (prediction,) = services.predictions_create(uploads=[upload], publish=False)
    for digit in (0, 9):
        services.prediction_feedback_set(prediction=prediction, digit=digit)
        assert Prediction.objects.get(pk=prediction.pk).feedback == digit
    for digit in (-1, 10, "7"):
        with pytest.raises(services.PredictionFeedbackError):
            services.prediction_feedback_set(prediction=prediction, digit=digit)
    assert Prediction.objects.get(pk=prediction.pk).feedback == 9


def test_feedback_reaches_its_uploads_newer_predictions_even_of_the_same_instant_and_no_other(user, digit_png):
    first, other = (services.upload_create(owner=user, file=io.BytesIO(digit_png(i)), source="file") for i in (0, 1))
    (older,) = services.predictions_create(uploads=[first], publish=False)
    (shown,) = services.predictions_rerun(uploads=[first], publish=False)
    (newer,) = services.predictions_rerun(uploads=[first], publish=False)
    # Made within the clock's resolution of the one shown: older or newer by id alone, as the history orders them.
    Prediction.objects.filter(pk__in=[older.pk, newer.pk]).update(
        created_at=Prediction.objects.get(pk=shown.pk).created_at
    )
    (others,) = services.predictions_create(uploads=[other], publish=False)

    services.prediction_feedback_set(prediction=shown, digit=3)

    feedback = dict(Prediction.objects.values_list("pk", "feedback"))
    assert feedback == {older.pk: None, shown.pk: 3, newer.pk: 3, others.pk: None}
