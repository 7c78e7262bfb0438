"""Feedback: the digit a person says an upload's image really shows."""
from __future__ import annotations

from django.db import transaction
from django.db.models import Q

from classifier.models import Prediction, Upload


class PredictionFeedbackError(ValueError):
    """Feedback must be a digit from 0 to 9 (the digit the image really shows, whatever the prediction's state)."""


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
