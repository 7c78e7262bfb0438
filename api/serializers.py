"""Request and response shapes of the API; they validate input and format output, nothing more."""
from __future__ import annotations

import datetime
import functools
import math
import re

from django.conf import settings
from django.urls import get_resolver, get_script_prefix, get_urlconf, reverse
from django.utils import timezone, translation
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers
from rest_framework.fields import iter_options
from rest_framework.utils import html

from api.query import repeated_error
from classifier.models import Prediction
from training.ml.config import TrainConfig
from training.models import Checkpoint, TrainingRun
from training.services import (
    ARCHITECTURE_CHOICES, DEVICE_CHOICES, MAX_BATCH_SIZE, MAX_EPOCHS, MAX_SEED, MAX_TRAIN_SUBSET, MIN_BATCH_SIZE,
    MIN_TRAIN_SUBSET,
)

MAX_WAIT_SECONDS = 30.0


# Stands in for a prediction id while a URL is built once per response (no host or path holds it).
_ID_MARK = "4611686018427387911"


def _absolute(request, url: str) -> str:
    return request.build_absolute_uri(url) if request is not None else url


# --- strict inputs ---------------------------------------------------------------------------------------------------

_WHOLE_NUMBER = re.compile(r"-?[0-9]+")
# As JSON writes a number: Python's float() would also take " 0.5", "1_0", "nan" and "infinity".
_NUMBER = re.compile(r"-?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][-+]?[0-9]+)?")
# The words a flag is written with in text, in any case: Python's requests writes True; a ticked HTML box, "on".
_FLAG_WORDS = frozenset({"true", "false", "on"})
# A day as ISO 8601 writes it in full; datetime.strptime would also take 2026-1-5.
_DAY = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")


def _reads_text(field: serializers.Field) -> bool:
    """Whether ``field`` reads form data or a query string, where every value is text, rather than a JSON document.

    JSON has numbers and true and false of its own, so there a string is a client's mistake (`"augment": "false"`
    is a non-empty string, which many languages would take as true); form data and query strings can only write
    digits and words.
    """
    return html.is_html_input(getattr(field.root, "initial_data", None))


class WholeNumberField(serializers.IntegerField):
    """An integer written as one: DRF's own also takes 3.0, "3.0" and " 3" as 3, hiding a client's mistake.

    In JSON it is a number, never a string ("3"); in form data and query strings, digits.
    """

    default_error_messages = {"invalid": "A whole number is required, written with digits only (3, not 3.0)."}

    def to_internal_value(self, data):
        if isinstance(data, str) and not _reads_text(self):
            raise serializers.ValidationError("A whole number is required: JSON's own (3), not a string.",
                                              code="invalid")
        if isinstance(data, bool) or not isinstance(data, (int, str)) or (
            isinstance(data, str) and not _WHOLE_NUMBER.fullmatch(data)
        ):
            self.fail("invalid")
        return super().to_internal_value(data)


class NumberField(serializers.FloatField):
    """A number: DRF's own also takes JSON's true and false, as 1 and 0, a flag sent where a number was meant.

    In JSON it is a number, never a string ("0.1"); in form data and query strings, digits.
    """

    default_error_messages = {"invalid": "A number is required, written with digits (0.5, 1e-3)."}

    def to_internal_value(self, data):
        if isinstance(data, str) and not _reads_text(self):
            raise serializers.ValidationError("A number is required: JSON's own (0.1), not a string.", code="invalid")
        if isinstance(data, bool) or (isinstance(data, str) and not _NUMBER.fullmatch(data)):
            self.fail("invalid")
        return super().to_internal_value(data)


class StrictBooleanField(serializers.BooleanField):
    """true or false: JSON's own, or a word in form data and query strings ("true", "false", "on", in any case).

    DRF's own also takes the numbers 0, 1, 0.0 and 1.0, which in JSON are a number sent where a flag was meant, the
    text "0" and "1", a number written where a word was meant (`?latest=0` could as well mean "the first"), words
    such as "y", "no" and "null", and in JSON the strings "true" and "false" as well.
    """

    default_error_messages = {"invalid": "true or false is required."}

    def to_internal_value(self, data):
        if isinstance(data, str) and not _reads_text(self):
            raise serializers.ValidationError("true or false is required: JSON's own, not a string.", code="invalid")
        if not isinstance(data, (bool, str)) or (isinstance(data, str) and data.lower() not in _FLAG_WORDS):
            self.fail("invalid", input=data)
        return super().to_internal_value(data.lower() if isinstance(data, str) else data)


class DayField(serializers.DateField):
    """A day written YYYY-MM-DD; one that the calendar lacks (2026-02-30) is refused as such, not as a wrong format."""

    def to_internal_value(self, value):
        if not isinstance(value, str) or not _DAY.fullmatch(value):
            self.fail("invalid", format="YYYY-MM-DD")
        try:
            return datetime.date.fromisoformat(value)
        except ValueError:
            raise serializers.ValidationError(f"There is no day {value} in the calendar.", code="invalid") from None


class SentOnceSerializer(serializers.Serializer):
    """Reads a query string or form data, each of its fields at most once: sent twice, which value was meant is not
    known (DRF would take the last)."""

    def to_internal_value(self, data):
        if hasattr(data, "getlist"):
            repeated = {
                name: [repeated_error(name, len(data.getlist(name)))]
                for name in self.fields if len(data.getlist(name)) > 1
            }
            if repeated:
                raise serializers.ValidationError(repeated)
        return super().to_internal_value(data)


# --- errors ----------------------------------------------------------------------------------------------------------


class ErrorItemSerializer(serializers.Serializer):
    code = serializers.CharField(help_text="Machine-readable reason, e.g. not_image, too_large, not_found, throttled.")
    message = serializers.CharField(help_text="What went wrong, in words a person can act on.")
    field = serializers.CharField(
        allow_null=True, help_text="The request field or query parameter at fault; null when it is the request as a whole."
    )


class ErrorDetailSerializer(ErrorItemSerializer):
    index = serializers.IntegerField(
        required=False,
        help_text="Only for a rejected file: where it stood among the files sent, from 0 (`image` first, then `images`).",
    )


class ErrorSerializer(ErrorItemSerializer):
    details = ErrorDetailSerializer(
        many=True, help_text="Every problem found (one per rejected file or field); the first is repeated above."
    )
    request_id = serializers.CharField(
        allow_null=True,
        help_text="The request's `X-Request-ID` (also in the response's header): quote it when reporting a problem; "
        "every log line of the request, and of the tasks it started, names it.",
    )


class ErrorEnvelopeSerializer(serializers.Serializer):
    """The body of every error response of the API."""

    error = ErrorSerializer()


# --- predictions -----------------------------------------------------------------------------------------------------


class PredictionUploadSerializer(serializers.Serializer):
    """The multipart body of an upload; the files themselves are checked by classifier.validation."""

    image = serializers.FileField(
        required=False,
        help_text="One image (PNG, JPEG, GIF, WEBP or BMP) showing a single handwritten digit; several go in `images`.",
    )
    images = serializers.ListField(
        child=serializers.FileField(),
        required=False,
        # Stated in the schema (no `images`, no images) so that Swagger UI starts the list empty, not with a sample
        # text item that it would send.
        default=[],
        max_length=settings.UPLOAD_MAX_FILES,
        help_text=f"Several images at once, at most {settings.UPLOAD_MAX_FILES} (image and images together); "
        f"each at most {settings.UPLOAD_MAX_BYTES} bytes. All are rejected when one is.",
    )


class WaitQuerySerializer(SentOnceSerializer):
    wait = NumberField(
        required=False,
        min_value=0,
        max_value=MAX_WAIT_SECONDS,
        help_text=f"Seconds (fractions allowed, at most {MAX_WAIT_SECONDS:g}) to wait for the results before answering.",
    )


class PredictionFilterSerializer(SentOnceSerializer):
    digit = WholeNumberField(required=False, min_value=0, max_value=9, help_text="Only this predicted digit.")
    status = serializers.ChoiceField(required=False, choices=Prediction.Status.choices, help_text="Only this status.")
    created_after = DayField(required=False, help_text="Only predictions made on or after this day (YYYY-MM-DD).")
    created_before = DayField(required=False, help_text="Only predictions made on or before this day (YYYY-MM-DD).")
    latest = StrictBooleanField(
        default=False,
        help_text="true: only each upload's newest prediction (its current result), leaving out those a retry or a "
        "re-run replaced; the other filters then apply to that one. false (the default): every prediction.",
    )

    def validate(self, attrs: dict) -> dict:
        # Read strictly, as every input is: a range that selects nothing for certain is a mistake, not an empty list.
        first, last = attrs.get("created_after"), attrs.get("created_before")
        if first is not None and last is not None and first > last:
            raise serializers.ValidationError(
                {"created_after": [f"{first.isoformat()} is after created_before, {last.isoformat()}: no day is "
                                   "in such a range."]},
                code="invalid",
            )
        return attrs


class LatencySerializer(serializers.Serializer):
    queue_ms = serializers.FloatField(allow_null=True, help_text="Milliseconds between the upload and a worker starting.")
    compute_ms = serializers.FloatField(
        allow_null=True,
        help_text="Milliseconds of worker compute for this image: reading, preprocessing and the model, its batch's mean.",
    )


class PredictionSerializer(serializers.Serializer):
    id = serializers.IntegerField(read_only=True)
    url = serializers.SerializerMethodField(help_text="This prediction in the API.")
    status = serializers.ChoiceField(choices=Prediction.Status.choices, help_text="pending → running → done or failed.")
    finished = serializers.SerializerMethodField(help_text="True once the status is done or failed.")
    digit = serializers.IntegerField(allow_null=True, help_text="The recognised digit; null until done.")
    confidence = serializers.FloatField(allow_null=True, help_text="Probability of that digit, 0 to 1.")
    probabilities = serializers.ListField(
        child=serializers.FloatField(),
        allow_null=True,
        min_length=10,
        max_length=10,
        help_text="Probability of each digit 0-9, summing to 1; null until done.",
    )
    low_confidence = serializers.SerializerMethodField(
        help_text=f"True when done with a confidence below LOW_CONFIDENCE_THRESHOLD ({settings.LOW_CONFIDENCE_THRESHOLD})."
    )
    several_digits = serializers.BooleanField(
        help_text="True when the picture seemed to hold more than one digit, read as one: the one with the most ink, "
        "or, written close together, the digits as one; the digit is then likely wrong."
    )
    error = serializers.CharField(help_text="Why the prediction failed; empty otherwise.")
    feedback = serializers.IntegerField(allow_null=True, help_text="The digit the owner says the image really shows.")
    checkpoint = serializers.IntegerField(
        source="checkpoint_id", allow_null=True, help_text="Id of the checkpoint (model) that made the prediction."
    )
    device = serializers.CharField(help_text="The device the model ran on (cpu, cuda).")
    latency = serializers.SerializerMethodField()
    upload = serializers.IntegerField(source="upload_id", help_text="Id of the uploaded image.")
    original_name = serializers.CharField(source="upload.original_name", help_text="The uploaded file's name.")
    image_url = serializers.SerializerMethodField(help_text="The uploaded image (as stored, PNG).")
    input_image_url = serializers.SerializerMethodField(
        help_text="The 28x28 picture the model saw (PNG); null until done."
    )
    created_at = serializers.DateTimeField()
    started_at = serializers.DateTimeField(allow_null=True)
    finished_at = serializers.DateTimeField(allow_null=True)

    def _url_templates(self) -> dict[str, str]:
        # reverse() and the host check cost more than the rest of a prediction's fields together, and a
        # response lists up to a hundred predictions: each view's URL is built once, then filled in.
        templates = self.context.setdefault("prediction_url_templates", {})
        if len(templates) < len(_PREDICTION_VIEWS):
            templates.update(_url_templates(self.context.get("request")))
        return templates

    def _prediction_url(self, view_name: str, prediction: Prediction) -> str:
        return self._url_templates()[view_name].replace(_ID_MARK, str(prediction.pk))

    @extend_schema_field(OpenApiTypes.URI)
    def get_url(self, prediction: Prediction) -> str:
        return self._prediction_url("api:prediction-detail", prediction)

    def get_finished(self, prediction: Prediction) -> bool:
        return prediction.status in Prediction.FINISHED

    def get_low_confidence(self, prediction: Prediction) -> bool:
        return _low_confidence(prediction.status, prediction.confidence, below=settings.LOW_CONFIDENCE_THRESHOLD)

    @extend_schema_field(LatencySerializer)
    def get_latency(self, prediction: Prediction) -> dict:
        return {"queue_ms": prediction.queue_ms, "compute_ms": prediction.compute_ms}

    @extend_schema_field(OpenApiTypes.URI)
    def get_image_url(self, prediction: Prediction) -> str:
        return self._prediction_url("api:prediction-image", prediction)

    @extend_schema_field(serializers.URLField(allow_null=True))
    def get_input_image_url(self, prediction: Prediction) -> str | None:
        if not prediction.input_pixels:
            return None
        return self._prediction_url("api:prediction-input-image", prediction)

    def to_representation(self, prediction: Prediction) -> dict:
        """The declared fields, written out (``_written``): DRF's generic field loop cost ten times as much.

        A test holds this equal to the generic representation, field by field.
        """
        return _written(
            prediction, original_name=prediction.upload.original_name, has_input=bool(prediction.input_pixels),
            urls=self._url_templates(), moment=functools.partial(_moment, zone=timezone.get_current_timezone()),
            low_below=settings.LOW_CONFIDENCE_THRESHOLD,
        )


# The views whose URLs a prediction's representation holds.
_PREDICTION_VIEWS = ("api:prediction-detail", "api:prediction-image", "api:prediction-input-image")


def _url_templates(request) -> dict[str, str]:
    # Each response checks its own host (build_absolute_uri).
    key = (get_resolver(get_urlconf()), get_script_prefix(), translation.get_language())
    return {name: _absolute(request, _reversed(name, *key)) for name in _PREDICTION_VIEWS}


@functools.lru_cache(maxsize=32)
def _reversed(name: str, resolver, script_prefix: str, language: str | None) -> str:
    # reverse() takes longer than writing a batch's fields: its answer changes only with the URL patterns (a new
    # resolver once they are reloaded), the script prefix and the language.
    return reverse(name, args=[_ID_MARK])


def predictions_represent(predictions, *, request) -> list[dict]:
    """``PredictionSerializer(predictions, many=True, context={"request": request}).data``, as plain lists and dicts.

    Each item is a Prediction or a ``classifier.statements.PredictionSummary``
    (what an upload's answer reads back). No serializer is built, the URLs and
    the time zone are read once for the list, and each distinct time is written
    once: a batch's predictions share their times (one statement stamps them
    all). A test holds the two representations equal.
    """
    common = {
        "urls": _url_templates(request), "moment": _moments(timezone.get_current_timezone()),
        "low_below": settings.LOW_CONFIDENCE_THRESHOLD,
    }
    return [
        _written(prediction, original_name=prediction.upload.original_name, has_input=bool(prediction.input_pixels),
                 **common)
        if isinstance(prediction, Prediction) else
        _written(prediction, original_name=prediction.original_name, has_input=prediction.has_input, **common)
        for prediction in predictions
    ]


def _moments(zone):
    """``_moment`` in ``zone``, each distinct time written once."""
    written: dict = {}

    def moment(value) -> str | None:
        if value is None:
            return None
        # Equal, with the same fold and tzinfo: the same wall time in the same zone, written alike.
        key = (value, value.fold, value.tzinfo)
        text = written.get(key)
        if text is None:
            text = written[key] = _moment(value, zone)
        return text

    return moment


def _written(
    prediction, *, original_name: str, has_input: bool, urls: dict[str, str], moment, low_below: float
) -> dict:
    """PredictionSerializer's fields of ``prediction``, in their declared order, as DRF would write them.

    ``moment`` writes a time; ``low_below``: LOW_CONFIDENCE_THRESHOLD.
    """
    pk = str(prediction.pk)
    status, confidence = prediction.status, prediction.confidence
    return {
        "id": prediction.pk,
        "url": urls["api:prediction-detail"].replace(_ID_MARK, pk),
        "status": str(status),
        "finished": status in Prediction.FINISHED,
        "digit": _or_none(int, prediction.digit),
        "confidence": _or_none(float, confidence),
        "probabilities": _or_none(_floats, prediction.probabilities),
        "low_confidence": _low_confidence(status, confidence, below=low_below),
        "several_digits": bool(prediction.several_digits),
        "error": str(prediction.error),
        "feedback": _or_none(int, prediction.feedback),
        "checkpoint": _or_none(int, prediction.checkpoint_id),
        "device": str(prediction.device),
        "latency": {"queue_ms": prediction.queue_ms, "compute_ms": prediction.compute_ms},
        "upload": int(prediction.upload_id),
        "original_name": str(original_name),
        "image_url": urls["api:prediction-image"].replace(_ID_MARK, pk),
        "input_image_url": urls["api:prediction-input-image"].replace(_ID_MARK, pk) if has_input else None,
        "created_at": moment(prediction.created_at),
        "started_at": moment(prediction.started_at),
        "finished_at": moment(prediction.finished_at),
    }


def _low_confidence(status: str, confidence: float | None, *, below: float) -> bool:
    return bool(status == Prediction.Status.DONE and confidence is not None and confidence < below)


def _or_none(convert, value):
    return None if value is None else convert(value)


def _moment(value, zone) -> str | None:
    # DRF's ISO 8601 output: in the current time zone, with UTC written as Z.
    if value is None:
        return None
    text = value.astimezone(zone).isoformat()
    return text[:-6] + "Z" if text.endswith("+00:00") else text


def _floats(values) -> list:
    return [None if value is None else float(value) for value in values]


class PredictionBatchSerializer(serializers.Serializer):
    predictions = PredictionSerializer(many=True, help_text="One prediction per uploaded image, in upload order.")


class FeedbackSerializer(SentOnceSerializer):
    feedback = WholeNumberField(
        min_value=0, max_value=9, allow_null=True, help_text="The digit the image really shows; null clears it."
    )


# --- training --------------------------------------------------------------------------------------------------------


class _RecipeBooleanField(StrictBooleanField):
    """A boolean whose absence means the recipe's value, whatever the content type.

    DRF reads a boolean missing from form data as false, for an unticked HTML
    checkbox sends nothing; here that would quietly turn a recipe's default off.
    The browsable API shows a choice of three instead of a checkbox, which could
    only say "the recipe's" or "on".
    """

    default_empty_html = serializers.empty
    HTML_CHOICES = {"": "the recipe's", "true": "on", "false": "off"}

    def __init__(self, **kwargs) -> None:
        kwargs.setdefault("style", {"base_template": "select.html"})
        super().__init__(**kwargs)

    def iter_options(self):
        # An empty choice reaches the field as no value (it is not required), so the recipe's value is kept.
        return iter_options(self.HTML_CHOICES)


class TrainingRunCreateSerializer(SentOnceSerializer):
    architecture = serializers.ChoiceField(choices=ARCHITECTURE_CHOICES, default="cnn", help_text="Model family.")
    epochs = WholeNumberField(
        required=False, min_value=1, max_value=MAX_EPOCHS, help_text="Default: the architecture's tuned recipe."
    )
    batch_size = WholeNumberField(
        required=False, min_value=MIN_BATCH_SIZE, max_value=MAX_BATCH_SIZE, help_text="Default: the architecture's tuned recipe."
    )
    learning_rate = NumberField(
        required=False, min_value=0, max_value=10, help_text="Greater than 0, at most 10. Default: the tuned recipe."
    )
    seed = WholeNumberField(required=False, min_value=0, max_value=MAX_SEED, help_text="Default: the recipe's.")
    augment = _RecipeBooleanField(
        required=False, help_text="Random shifts/rotations. Default: the recipe's (on for the CNN, off for the MLP)."
    )
    train_subset = WholeNumberField(
        required=False,
        allow_null=True,
        min_value=MIN_TRAIN_SUBSET,
        max_value=MAX_TRAIN_SUBSET,
        help_text="Train on only this many images (quick smoke runs); null or absent means all 55,000 "
        "(the last 5,000 of MNIST's 60,000 are held out for validation, never trained on).",
    )
    device = serializers.ChoiceField(choices=DEVICE_CHOICES, default="auto", help_text="Where the worker trains.")
    activate_on_success = StrictBooleanField(
        default=False,
        help_text="Make the final checkpoint the active model when the run succeeds, unless the active one tests "
        "better (the run's `error` then says so).",
    )

    def validate_learning_rate(self, value: float) -> float:
        if not (value > 0 and math.isfinite(value)):
            raise serializers.ValidationError("Learning rate must be greater than 0 and at most 10.", code="min_value")
        return value

    def validate(self, attrs: dict) -> dict:
        recipe = TrainConfig.default_for(attrs["architecture"])
        attrs.setdefault("epochs", recipe.epochs)
        attrs.setdefault("batch_size", recipe.batch_size)
        attrs.setdefault("learning_rate", recipe.lr)
        attrs.setdefault("seed", recipe.seed)
        attrs.setdefault("augment", recipe.augment)
        attrs.setdefault("train_subset", None)
        return attrs


class TrainingRunSerializer(serializers.ModelSerializer):
    url = serializers.SerializerMethodField(help_text="This run in the API.")
    created_by = serializers.SerializerMethodField(help_text="Who started it; null once that account is deleted.")
    finished = serializers.BooleanField(source="is_finished", help_text="True once succeeded, failed or cancelled.")
    duration_seconds = serializers.FloatField(allow_null=True, help_text="Seconds since start (until finish).")
    metrics = serializers.ListField(
        child=serializers.DictField(), help_text="One object per finished epoch (loss, accuracy, timings, ...)."
    )
    confusion_matrix = serializers.ListField(
        child=serializers.ListField(child=serializers.IntegerField()),
        allow_null=True,
        help_text="confusion_matrix[true][predicted] counts on the test set, once finished.",
    )
    checkpoints = serializers.PrimaryKeyRelatedField(many=True, read_only=True, help_text="Checkpoints it saved.")

    class Meta:
        model = TrainingRun
        fields = [
            "id", "url", "status", "finished", "architecture", "epochs", "batch_size", "learning_rate", "seed",
            "augment", "train_subset", "requested_device", "device", "activate_on_success", "progress",
            "current_epoch", "current_step", "total_steps", "eta_seconds", "metrics", "validation_accuracy",
            "test_accuracy", "confusion_matrix", "duration_seconds", "error", "cancel_requested", "attempts", "checkpoints",
            "created_by", "created_at", "started_at", "finished_at",
        ]
        read_only_fields = fields
        extra_kwargs = {
            "progress": {"help_text": "Fraction done, 0 to 1."},
            "eta_seconds": {"help_text": "Estimated seconds left while running."},
            "validation_accuracy": {"help_text": "Accuracy on the 5,000 validation images (the last 5,000 MNIST "
                                    "training images, never trained on) of the latest finished epoch (the last row "
                                    "of metrics), written as each epoch ends: the final model's once the status is "
                                    "succeeded. A failed or cancelled run keeps its last finished epoch's (that "
                                    "epoch's checkpoint can still be activated); null until an epoch finishes, and "
                                    "for runs from before the validation split."},
            "test_accuracy": {"help_text": "Accuracy on the 10,000 MNIST test images of the final model, measured once "
                              "when the run succeeds; null until then. Runs from before the validation split wrote "
                              "the latest finished epoch's as each epoch ended, final only once the status is "
                              "succeeded."},
            "error": {"help_text": "Why the run failed or was restarted, why a run asked to activate its model "
                               "did not, or that a succeeded run's model learned next to nothing (below 20% test "
                               "accuracy); empty otherwise."},
        }

    @extend_schema_field(OpenApiTypes.URI)
    def get_url(self, run: TrainingRun) -> str:
        return _absolute(self.context.get("request"), reverse("api:training-run-detail", args=[run.pk]))

    # Always answered, null or not: a field with a default would be declared optional, one a client must test for.
    @extend_schema_field(serializers.CharField(allow_null=True))
    def get_created_by(self, run: TrainingRun) -> str | None:
        return None if run.created_by is None else run.created_by.get_username()


class CheckpointSerializer(serializers.ModelSerializer):
    run = serializers.PrimaryKeyRelatedField(read_only=True, allow_null=True, help_text="The run that saved it.")

    class Meta:
        model = Checkpoint
        fields = ["id", "run", "epoch", "architecture", "sha256", "size", "validation_accuracy", "test_accuracy",
                  "is_final", "is_active", "created_at"]
        read_only_fields = fields
        extra_kwargs = {
            "is_active": {"help_text": "Whether inference uses this checkpoint now (exactly one is)."},
            "validation_accuracy": {"help_text": "Accuracy on the 5,000 validation images (the last 5,000 MNIST "
                                    "training images, never trained on): what checkpoints are compared by. Null for "
                                    "checkpoints from before the validation split and those registered by hand."},
            "test_accuracy": {"help_text": "Accuracy on the 10,000 MNIST test images: measured only for a run's final "
                              "model (null for epoch checkpoints; epoch checkpoints from before the validation split "
                              "carry their epoch's)."},
        }
